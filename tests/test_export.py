"""bigmodel export: ONNX folders from tiny real runs, parity, the onnx backend's records,
int8, broken folders, and the folder scored without bigmodel or torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from bigmodel_cli.cli import run_hydra_command  # noqa: E402

RUNS = {
    "lstm": ["model=lstm", "model.embedding_dim=16", "model.hidden_size=16", "data=news"],
    "fasttext": ["model=fasttext", "model.ngram_buckets=20000", "data=news"],
}


def _command(command: str, args: list[str]) -> int:
    try:
        run_hydra_command(command, args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export_runs")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    out = {}
    try:
        for name, args in RUNS.items():
            run_dir = root / name
            assert _command("finetune", [*args, "trainer=debug", f"hydra.run.dir={run_dir}"]) == 0
            out[name] = run_dir
    finally:
        mp.undo()
    return out


def _predict(run_dir: Path, backend: str, texts: Path, out: Path) -> list[dict]:
    assert _command("predict", [f"run={run_dir}", f"input={texts}", f"backend={backend}",
                                f"output={out}", f"hydra.run.dir={out.parent / backend}"]) == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("family", sorted(RUNS))
def test_export_parity_and_onnx_records(runs, family, tmp_path):
    run_dir = runs[family]
    assert _command("export", [f"run={run_dir}", f"hydra.run.dir={tmp_path / 'export'}"]) == 0
    folder = run_dir / "export" / "onnx"
    assert sorted(p.name for p in folder.iterdir()) == [
        "labels.json", "manifest.json", "model.onnx", "preprocessing.json", "tokenizer.json"]
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["parity"]["rows"] >= 512
    assert manifest["parity"]["label_agreement"] >= 0.999
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "lengths"]
    texts = tmp_path / "texts.txt"
    texts.write_text("央行宣布下调存款准备金率\n男子篮球联赛今晚开战\n新款手机发布\n", encoding="utf-8")
    torch_records = _predict(run_dir, "torch", texts, tmp_path / "torch.jsonl")
    onnx_records = _predict(run_dir, "onnx", texts, tmp_path / "onnx.jsonl")
    assert [r["label"] for r in onnx_records] == [r["label"] for r in torch_records]
    for a, b in zip(torch_records, onnx_records):
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
        assert all(abs(x["prob"] - y["prob"]) < 1e-4 for x, y in zip(a["top_k"], b["top_k"]))


@pytest.mark.slow
def test_int8_reports_scores_sizes_speeds(runs, tmp_path):
    run_dir = runs["lstm"]
    assert _command("export", [f"run={run_dir}", "quantize=int8",
                               f"hydra.run.dir={tmp_path / 'export'}"]) == 0
    manifest = json.loads((run_dir / "export" / "onnx-int8" / "manifest.json").read_text())
    q = manifest["int8"]
    assert q["metric"] == "accuracy" and 0 <= q["int8_score"] <= 1
    assert q["int8_bytes"] < q["fp32_bytes"]
    assert q["int8_items_per_s"]["batch_1"] > 0


def test_missing_or_corrupt_folder_is_exit_2(runs, tmp_path):
    run_dir = runs["fasttext"]
    texts = tmp_path / "t.txt"
    texts.write_text("新款手机发布\n", encoding="utf-8")
    args = [f"run={run_dir}", f"input={texts}", f"hydra.run.dir={tmp_path / 'p'}"]
    assert _command("predict", [*args, "backend=onnx-int8"]) == 2  # never exported
    assert _command("export", [f"run={run_dir}", f"hydra.run.dir={tmp_path / 'e'}"]) == 0
    copy = tmp_path / "saved"
    shutil.copytree(run_dir / "export" / "onnx", copy)
    model = run_dir / "export" / "onnx" / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    try:
        assert _command("predict", [*args, "backend=onnx"]) == 2
    finally:
        shutil.rmtree(run_dir / "export" / "onnx")
        shutil.copytree(copy, run_dir / "export" / "onnx")


def test_generation_runs_are_not_exportable(tmp_path):
    assert _command("export", ["run=/nonexistent/run", f"hydra.run.dir={tmp_path}"]) == 2


SCRIPT = r'''
import json, sys
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
folder = sys.argv[1]
tok = Tokenizer.from_file(f"{folder}/tokenizer.json")
pre = json.load(open(f"{folder}/preprocessing.json"))
labels = json.load(open(f"{folder}/labels.json"))
texts = [line for line in sys.stdin.read().splitlines() if line]
ids = [tok.encode(t, add_special_tokens=pre["add_special_tokens"]).ids[:pre["max_length"]] for t in texts]
width = max(len(i) for i in ids)
input_ids = np.full((len(ids), width), pre["pad_id"], dtype=np.int64)
for r, row in enumerate(ids):
    input_ids[r, :len(row)] = row
lengths = np.array([len(i) for i in ids], dtype=np.int64)
session = ort.InferenceSession(f"{folder}/model.onnx")
logits = session.run(["logits"], {"input_ids": input_ids, "lengths": lengths})[0]
assert "torch" not in sys.modules and "bigmodel_cli" not in sys.modules
print(json.dumps([labels[i] for i in logits.argmax(-1)], ensure_ascii=False))
'''


def test_folder_runs_without_bigmodel_or_torch(runs, tmp_path):
    run_dir = runs["lstm"]
    folder = run_dir / "export" / "onnx"
    if not folder.is_dir():
        assert _command("export", [f"run={run_dir}", f"hydra.run.dir={tmp_path / 'e'}"]) == 0
    texts = "央行宣布下调存款准备金率\n男子篮球联赛今晚开战\n"
    (tmp_path / "t.txt").write_text(texts, encoding="utf-8")
    plain = subprocess.run([sys.executable, "-I", "-c", SCRIPT, str(folder)], input=texts,
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    records = _predict(run_dir, "torch", tmp_path / "t.txt", tmp_path / "torch.jsonl")
    assert json.loads(plain.stdout) == [r["label"] for r in records]


class _Ids:
    """Decodes ids as their numbers: what a tokenizer returns does not matter here."""

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


@pytest.mark.parametrize("new_tokens", [6, 40])  # within the window, and sliding past max_len
def test_kv_cache_greedy_tokens_equal_uncached(new_tokens):
    import torch

    from bigmodel_cli.models.text_transformer import TextTransformer
    from bigmodel_cli.tasks.generation import generate
    from bigmodel_cli.tasks.language_model import LanguageModel

    torch.manual_seed(0)
    model = LanguageModel(TextTransformer(60, n_layers=2, d_model=32, n_heads=4, d_ff=64,
                                          max_len=16, dropout=0.0, causal=True), False).eval()
    prompt = [7, 12, 30, 41, 9]
    out = {}
    with torch.inference_mode():
        for cached in (True, False):
            out[cached] = generate(model, _Ids(), prompt, max_new_tokens=new_tokens, temperature=0,
                                   top_k=0, generator=None, device="cpu", use_cache=cached)
    assert len(out[True].split()) == new_tokens
    assert out[True] == out[False]
