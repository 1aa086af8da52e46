"""device.precision (autocast) and device.compile on CPU."""

from __future__ import annotations

import pytest
from conftest import read_json, run_dir_of
from safetensors import safe_open

TINY_LSTM = ("model=lstm", "model.embedding_dim=16", "model.hidden_size=16", "trainer=debug",
             "trainer.max_steps=10")


def test_bf16_autocast_trains_and_evaluates_on_cpu(cli):
    run = run_dir_of(cli("finetune", *TINY_LSTM, "device.precision=bf16"), cli.cwd)
    assert read_json(run / "metrics.json")["test"]["samples"] == 200
    result = cli("evaluate", f"run={run}", "device.precision=bf16")
    assert result.returncode == 0, result.stderr[-2000:]


def test_fp16_needs_cuda(cli):
    result = cli("finetune", *TINY_LSTM, "device=cpu", "device.precision=fp16")
    assert result.returncode == 2
    assert "fp16 needs a CUDA device; use bf16 on CPU" in result.stderr


@pytest.mark.slow
def test_compile_is_opt_in_and_checkpoints_have_plain_keys(cli):
    run = run_dir_of(cli("finetune", "model=fasttext", "model.ngram_buckets=2000", "model.sparse=false",
                         "trainer=debug", "trainer.max_steps=5", "device.compile=true"), cli.cwd)
    with safe_open(run / "checkpoints" / "best" / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not any("_orig_mod" in k for k in keys)
    result = cli("predict", f"run={run}", "text=hello")
    assert result.returncode == 0, result.stderr[-2000:]
