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

NEWS = ["央行宣布下调存款准备金率", "男子篮球联赛今晚开战", "新款手机发布"]
SST2 = ["a wonderful and moving film", "a dull and tedious mess", "it is a movie"]
TINY_VIT = ["model=vit", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.d_ff=64"]
# family -> (finetune overrides, what its inputs are); trainer=debug is added to each
RUNS = {
    "lstm": (["model=lstm", "model.embedding_dim=16", "model.hidden_size=16", "data=news"], "news"),
    "fasttext": (["model=fasttext", "model.ngram_buckets=20000", "data=news"], "news"),
    "bert": (["model=bert_tiny", "data=news"], "news"),
    "gpt": (["model=gpt_tiny", "model.max_len=65", "data=news"], "news"),
    "hf": (["model=hf", "data=sst2", "trainer.max_steps=2"], "sst2"),
    "cnn": (["model=cnn", "model.widths=[8,16]", "data=fashion_mnist"], "images"),
    "vit": ([*TINY_VIT, "data=fashion_mnist"], "images"),
    "mlp": (["model=mlp", "data=tabular", "data.files.train={digits_csv}", "data.target=digit"],
            "digits"),
    "mlp_regression": (["model=mlp", "data=diabetes"], "diabetes"),
}
FILES = {"news": {"tokenizer.json"}, "sst2": {"tokenizer.json"}}  # beside the four every folder has
SLOW = {"hf", "gpt", "vit"}  # hf: MiniLM, about a minute; gpt, vit: the paths of bert, cnn again


def _command(command: str, args: list[str]) -> int:
    try:
        run_hydra_command(command, args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


class _Runs:
    """Each family's tiny run, trained once per session when a test first needs it."""

    def __init__(self, root: Path) -> None:
        self.root, self.done = root, {}
        self.cwd = root / "cwd"  # where exports run (hydra.run.dir is elsewhere)

    def __call__(self, family: str) -> Path:
        if family not in self.done:
            run_dir = self.root / family
            args = [a.format(digits_csv=self.root / "digits.csv") for a in RUNS[family][0]]
            if RUNS[family][1] == "digits":
                _digits_table(self.root / "digits.csv")
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(self.root)
                rc = _command("finetune", [*args, "trainer=debug", f"hydra.run.dir={run_dir}"])
            assert rc == 0, f"finetune {args} exited {rc}"
            self.done[family] = run_dir
        return self.done[family]

    def export(self, family: str, *args: str) -> Path:
        """The run, exported (once per session and set of arguments), its parity checked on
        512 validation rows (the least the default, 1024, may be lowered to)."""
        run_dir = self(family)
        key = (family, *args)
        if key not in self.done:
            self.cwd.mkdir(exist_ok=True)
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(self.cwd)  # export writes nothing into the working directory
                rc = _command("export", [f"run={run_dir}", "parity_rows=512", *args,
                                         f"hydra.run.dir={self.root / 'exports' / '_'.join(key).replace('=', '-')}"])
            assert rc == 0, f"export {family} {args} exited {rc}"
            self.done[key] = run_dir
        return run_dir


@pytest.fixture(autouse=True)
def _env(monkeypatch, cli_env) -> None:
    for key in ("BIGMODEL_DATA_DIR", "BIGMODEL_CACHE_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(key, cli_env[key])


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> _Runs:
    return _Runs(tmp_path_factory.mktemp("export_runs"))


def _digits_table(path: Path) -> None:
    """scikit-learn's bundled digits as a table: 64 pixel columns and the digit."""
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame.rename(columns={"target": "digit"})
    frame.to_csv(path, index=False)


def _inputs(what: str, runs: _Runs, shared_data: Path, folder: Path) -> Path:
    """A predict input file of a few real rows of the family's kind."""
    folder.mkdir(parents=True, exist_ok=True)
    if what in ("news", "sst2"):
        path = folder / "texts.txt"
        path.write_text("\n".join(NEWS if what == "news" else SST2) + "\n", encoding="utf-8")
    elif what == "images":
        import io

        import pyarrow.parquet as pq
        from PIL import Image

        table = pq.read_table(shared_data / "fashion_mnist" / "test.parquet").slice(0, 4)
        for i, record in enumerate(table.column("image").to_pylist()):
            Image.open(io.BytesIO(record["bytes"])).save(folder / f"img{i}.png")
        path = folder / "images.csv"
        path.write_text("path\n" + "".join(f"img{i}.png\n" for i in range(4)))
    else:
        import pandas as pd

        if what == "digits":
            frame = pd.read_csv(runs.root / "digits.csv").drop(columns=["digit"])
        else:
            from sklearn.datasets import load_diabetes

            frame = load_diabetes(as_frame=True, scaled=False).frame.drop(columns=["target"])
        path = folder / "rows.csv"
        frame.iloc[-5:].to_csv(path, index=False)
    return path


def _predict(run_dir: Path, backend: str, inputs: Path, out: Path) -> list[dict]:
    assert _command("predict", [f"run={run_dir}", f"input={inputs}", f"backend={backend}",
                                f"output={out}", f"hydra.run.dir={out.parent / backend}"]) == 0
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def assert_same_records(torch_records: list[dict], onnx_records: list[dict]) -> None:
    """Labels (and their order in top_k) equal, probabilities or values within 1e-4."""
    assert len(onnx_records) == len(torch_records) > 0
    for a, b in zip(torch_records, onnx_records):
        assert a.keys() == b.keys()
        if "prediction" in a:  # regression, in the target's units
            assert b["prediction"] == pytest.approx(a["prediction"], rel=1e-4, abs=1e-4)
            continue
        assert (b["label"], b["label_id"]) == (a["label"], a["label_id"])
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
        assert all(abs(x["prob"] - y["prob"]) < 1e-4 for x, y in zip(a["top_k"], b["top_k"]))


def _families():
    return [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in RUNS]


@pytest.mark.parametrize("family", _families())
def test_export_parity_and_onnx_records(runs, family, shared_data, tmp_path):
    run_dir = runs.export(family)
    folder = run_dir / "export" / "onnx"
    what = RUNS[family][1]
    assert {p.name for p in folder.iterdir()} == {
        "labels.json", "manifest.json", "model.onnx", "preprocessing.json", *FILES.get(what, ())}
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    parity = manifest["parity"]
    validation = json.loads((run_dir / "metrics.json").read_text())["splits"]["validation"]
    # the whole validation split up to parity_rows (1024), not the debug run's 200 rows;
    # digits and diabetes have fewer (180, 44): all of them
    assert parity["rows"] >= min(512, validation) and not parity["failed"]
    assert not list(runs.cwd.iterdir())  # no scratch graph left in the working directory
    assert parity["max_abs_diff"] < 1e-3
    if manifest["task"] == "classification":
        assert parity["label_agreement"] >= 0.999
    inputs = {"news": ["input_ids", "lengths"], "sst2": ["input_ids", "lengths"],
              "images": ["pixels"]}.get(what, ["features"])
    assert [i["name"] for i in manifest["inputs"]] == inputs
    assert manifest["inputs"][0]["dynamic_axes"]["0"] == "batch"
    if what in ("news", "sst2"):
        assert manifest["inputs"][0]["dynamic_axes"]["1"] == "sequence"
    path = _inputs(what, runs, shared_data, tmp_path / "in")
    torch_records = _predict(run_dir, "torch", path, tmp_path / "torch.jsonl")
    onnx_records = _predict(run_dir, "onnx", path, tmp_path / "onnx.jsonl")
    assert_same_records(torch_records, onnx_records)


def _serve_inputs(what: str, path: Path) -> list:
    """The predict input file as a request's `inputs`."""
    import base64

    import pandas as pd

    if what in ("news", "sst2"):
        return path.read_text(encoding="utf-8").split()
    if what == "images":
        return [base64.b64encode((path.parent / p).read_bytes()).decode()
                for p in pd.read_csv(path)["path"]]
    return pd.read_csv(path).to_dict(orient="records")


@pytest.mark.parametrize("family", _families())
def test_serve_backend_onnx_answers_what_torch_does(runs, family, shared_data, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bigmodel_cli.inference import Predictor
    from bigmodel_cli.serving.app import create_app
    from bigmodel_cli.serving.service import Limits, Service

    run_dir = runs.export(family)
    what = RUNS[family][1]
    inputs = _serve_inputs(what, _inputs(what, runs, shared_data, tmp_path))
    answers = {}
    for backend in ("torch", "onnx"):
        service = Service(Predictor.load(run_dir, "best", "cpu", 1, backend=backend), Limits(), None)
        with TestClient(create_app(service)) as client:
            assert client.get("/v1/metadata").json()["backend"] == backend
            response = client.post("/v1/predict", json={"inputs": inputs})
            assert response.status_code == 200, response.text
            answers[backend] = response.json()["records"]
    assert_same_records(answers["torch"], answers["onnx"])


def test_serve_command_takes_the_backend(runs, tmp_path, capsys):
    """serve backend=onnx-int8 on a run never quantized: exit 2 before binding, saying how."""
    pytest.importorskip("fastapi")
    run_dir = runs("fasttext")
    rc = _command("serve", [f"run={run_dir}", "backend=onnx-int8", "port=0",
                            f"hydra.run.dir={tmp_path / 's'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "backend=onnx-int8: no manifest.json" in err
    assert "bigmodel export run=" in err


@pytest.mark.slow
@pytest.mark.parametrize("family", ["lstm", "cnn"])  # a text run and an image run
def test_int8_reports_scores_sizes_speeds(runs, family, capsys):
    run_dir = runs.export(family, "quantize=int8")
    printed = capsys.readouterr().out
    folder = run_dir / "export" / "onnx-int8"
    manifest = json.loads((folder / "manifest.json").read_text())
    q = manifest["int8"]
    assert manifest["quantize"] == "int8" and q["metric"] == "accuracy"
    assert q["split_rows"] == 10_000  # the whole test split of THUCNews / Fashion-MNIST
    assert 0.1 < q["fp32_score"] <= 1 and abs(q["int8_score"] - q["fp32_score"]) < 0.05
    assert manifest["model_bytes"] == q["int8_bytes"] < q["fp32_bytes"]
    assert (folder / "model.onnx").stat().st_size == q["int8_bytes"]
    for tag in ("fp32", "int8"):
        assert q[f"{tag}_items_per_s"]["batch_1"] > 0 and q[f"{tag}_items_per_s"]["batch_full"] > 0
    assert f"int8: test accuracy fp32 {q['fp32_score']:.4f} -> int8 {q['int8_score']:.4f}" in printed
    assert "parity: " in printed


def test_missing_or_corrupt_folder_is_exit_2(runs, tmp_path, capsys):
    run_dir = runs.export("fasttext")
    texts = tmp_path / "t.txt"
    texts.write_text("新款手机发布\n", encoding="utf-8")
    args = [f"run={run_dir}", f"input={texts}", f"hydra.run.dir={tmp_path / 'p'}"]
    folder = run_dir / "export" / "onnx"
    copy = tmp_path / "saved"
    shutil.copytree(folder, copy)
    try:
        cases = [("missing", lambda: shutil.rmtree(folder), "no manifest.json"),
                 ("truncated", lambda: (folder / "model.onnx").write_bytes(
                     (copy / "model.onnx").read_bytes()[:1000]), "does not match its manifest"),
                 ("bad manifest", lambda: (folder / "manifest.json").write_text("{"),
                  "unreadable manifest.json")]
        for what, damage, message in cases:
            damage()
            assert _command("predict", [*args, "backend=onnx"]) == 2, what
            err = capsys.readouterr().err
            assert message in err and "bigmodel export run=" in err, (what, err)
            assert "Traceback" not in err
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(copy, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(copy, folder)


def test_export_of_a_nonexistent_run_is_exit_2(tmp_path, capsys):
    assert _command("export", ["run=/nonexistent/run", f"hydra.run.dir={tmp_path}"]) == 2
    assert "/nonexistent/run" in capsys.readouterr().err


def test_generation_runs_are_not_exportable(tmp_path, capsys):
    """A GPT language-model run: export and backend=onnx exit 2 saying why (a generation
    loop, not one graph) and what to use (predict / serve with the KV cache); nothing written."""
    run_dir = tmp_path / "gpt_lm"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert _command("pretrain", [
            "model=gpt_tiny", "data=tinyshakespeare", "data.max_length=32", "model.max_len=33",
            "trainer.max_steps=3", "trainer.batch_size=8", "trainer.eval_every_steps=3",
            "trainer.max_train_samples=100", "trainer.max_eval_samples=20",
            f"hydra.run.dir={run_dir}"]) == 0
    capsys.readouterr()
    assert _command("export", [f"run={run_dir}", f"hydra.run.dir={tmp_path / 'e'}"]) == 2
    err = capsys.readouterr().err
    assert "a clm run cannot be exported to ONNX" in err and "generation loop" in err
    assert "bigmodel predict run=" in err and "KV cache" in err
    assert not (run_dir / "export").exists()
    assert _command("predict", [f"run={run_dir}", "prompt=ROMEO:", "backend=onnx",
                                f"hydra.run.dir={tmp_path / 'p'}"]) == 2
    assert "backend=onnx: a clm run cannot be exported" in capsys.readouterr().err


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


@pytest.mark.parametrize("family", ["lstm", "bert"])
def test_folder_runs_without_bigmodel_or_torch(runs, family, tmp_path):
    run_dir = runs.export(family)
    folder = run_dir / "export" / "onnx"
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


def test_kv_cache_logits_equal_the_full_context():
    """Cached steps give the logits of a full forward pass: a prefill, a chunk of several new
    positions (the cache plus a causal mask), then single positions (no mask at all)."""
    import torch

    from bigmodel_cli.models.text_transformer import TextTransformer
    from bigmodel_cli.tasks.language_model import LanguageModel

    torch.manual_seed(0)
    model = LanguageModel(TextTransformer(60, n_layers=2, d_model=32, n_heads=4, d_ff=64,
                                          max_len=16, dropout=0.0, causal=True), False).eval()
    ids = torch.randint(5, 60, (1, 12))
    with torch.inference_mode():
        full = model(ids, torch.tensor([12]))[0]
        caches, steps = [{}, {}], []
        for start, end in [(0, 5), (5, 8), (8, 9), (9, 10), (10, 11), (11, 12)]:
            chunk = ids[:, start:end]
            steps.append(model(chunk, torch.tensor([end - start]), caches=caches,
                               offset=start)[0])
    torch.testing.assert_close(torch.cat(steps), full, atol=1e-5, rtol=1e-5)


def test_fasttext_exports_its_bag_mean_without_a_loop(runs):
    """ONNX has no EmbeddingBag: the exported graph is a gather and a masked mean (equal to
    the bag, an all-padding text included), not a Loop over the texts."""
    import onnx
    import torch

    from bigmodel_cli.models.fasttext import FastTextEncoder

    torch.manual_seed(0)
    encoder = FastTextEncoder(50, padding_idx=0, embedding_dim=8, ngram_buckets=30)
    ids = torch.randint(1, 50, (3, 7))
    ids[1, 4:] = 0
    ids[2] = 0
    ngrams = encoder.ngram_ids(ids, torch.tensor([7, 4, 0]))
    torch.testing.assert_close(encoder._bag_mean(ngrams), encoder.embedding(ngrams))
    graph = onnx.load(str(runs.export("fasttext") / "export" / "onnx" / "model.onnx")).graph
    assert "Loop" not in {node.op_type for node in graph.node}
