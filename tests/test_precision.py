"""device.precision (autocast) and device.compile on CPU, checked from inside the run: the
commands run in this process, and a global forward hook sees what the model computed."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from conftest import read_json, run_dir_of
from safetensors import safe_open

TINY_LSTM = ("model=lstm", "model.embedding_dim=16", "model.hidden_size=16", "trainer=debug",
             "trainer.max_steps=10")


@contextmanager
def linear_output_dtypes():
    """The dtypes of every nn.Linear output computed while the block runs (the heads, and
    the projections inside the encoders): under autocast they are the autocast dtype."""
    seen: set[torch.dtype] = set()

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def test_bf16_autocast_trains_and_evaluates_on_cpu(cli):
    with linear_output_dtypes() as trained:
        run = run_dir_of(cli("finetune", *TINY_LSTM, "device.precision=bf16"), cli.cwd)
    assert trained == {torch.bfloat16}
    assert read_json(run / "metrics.json")["test"]["samples"] == 200
    with linear_output_dtypes() as evaluated:
        result = cli("evaluate", f"run={run}", "device.precision=bf16")
    assert result.returncode == 0, result.stderr[-2000:]
    assert evaluated == {torch.bfloat16}
    # The same evaluation without autocast computes in float32: the hook tells them apart.
    with linear_output_dtypes() as plain:
        assert cli("evaluate", f"run={run}").returncode == 0
    assert plain == {torch.float32}


def test_fp16_needs_cuda(cli):
    result = cli("finetune", *TINY_LSTM, "device=cpu", "device.precision=fp16")
    assert result.returncode == 2
    assert "fp16 needs a CUDA device; use bf16 on CPU" in result.stderr


@pytest.mark.slow
def test_compile_is_opt_in_and_checkpoints_have_plain_keys(cli):
    from torch._dynamo.utils import counters

    args = ("model=fasttext", "model.ngram_buckets=2000", "model.sparse=false", "trainer=debug",
            "trainer.max_steps=5")
    torch._dynamo.reset()
    counters.clear()
    run_dir_of(cli("finetune", *args), cli.cwd)
    assert not counters["frames"]["ok"]  # off by default: nothing compiled
    run = run_dir_of(cli("finetune", *args, "device.compile=true"), cli.cwd)
    assert counters["frames"]["ok"] >= 1 and counters["stats"]["unique_graphs"] >= 1
    with safe_open(run / "checkpoints" / "best" / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not any("_orig_mod" in k for k in keys)
    result = cli("predict", f"run={run}", "text=hello")
    assert result.returncode == 0, result.stderr[-2000:]
    torch._dynamo.reset()
