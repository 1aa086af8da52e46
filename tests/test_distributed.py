"""torchrun: 2 gloo processes on CPU train the same model as 1 process with the same global
batch and seed, into one run directory written by rank 0 only."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import read_json
from safetensors.torch import load_file

# No dropout: the two runs then compute the same function on the same global batches.
ARGS = ("model=lstm", "model.embedding_dim=16", "model.hidden_size=16", "model.dropout=0.0",
        "trainer=debug", "trainer.max_steps=10", "trainer.batch_size=32", "trainer.eval_every_steps=5")


def _torchrun(cli_process, *args: str) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    return subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "bigmodel_cli",
                           *args], cwd=cli_process.cwd, env=cli_process.env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(cli_process, cli):
    result = _torchrun(cli_process, "finetune", *ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list(Path(cli.cwd, "outputs", "finetune").glob("*/*"))
    assert len(runs) == 1  # every rank used rank 0's run directory
    ddp = runs[0]
    assert (ddp / ".hydra" / "config.yaml").is_file()
    log = (ddp / "finetune.log").read_text(encoding="utf-8")
    assert log.count("training:") == 1  # only rank 0 logs to the file
    metrics = read_json(ddp / "metrics.json")
    assert metrics["world_size"] == 2 and metrics["steps"] == 10
    one = cli("finetune", *ARGS, "hydra.run.dir=outputs/one")
    assert one.returncode == 0, one.stderr[-2000:]
    single = Path(cli.cwd, "outputs", "one")
    for ckpt in ("last", "best"):
        a = load_file(ddp / "checkpoints" / ckpt / "model.safetensors")
        b = load_file(single / "checkpoints" / ckpt / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    assert read_json(single / "metrics.json")["best_step"] == metrics["best_step"]


@pytest.mark.slow
def test_sparse_models_are_refused_under_torchrun(cli_process):
    result = _torchrun(cli_process, "finetune", "model=fasttext", "model.ngram_buckets=1000",
                       "trainer=debug")
    # Each rank exits 2 (a config error); torchrun itself reports a failed worker with 1.
    assert result.returncode == 1, result.stderr[-3000:]
    assert "exitcode  : 2" in result.stderr
    assert "set model.sparse=false" in result.stderr
    assert not list(Path(cli_process.cwd, "outputs", "finetune").glob("*/*/checkpoints"))
