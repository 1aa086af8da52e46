"""torchrun: 2 gloo processes on CPU train the same model as 1 process with the same global
batch and seed, into one run directory written by rank 0 only; so do 2 "nodes" of one
process each meeting at a c10d rendezvous, and a submitit job of 2 tasks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import read_json, torchrun
from safetensors.torch import load_file

# No dropout: the two runs then compute the same function on the same global batches.
ARGS = ("model=lstm", "model.embedding_dim=16", "model.hidden_size=16", "model.dropout=0.0",
        "trainer=debug", "trainer.max_steps=10", "trainer.batch_size=32", "trainer.eval_every_steps=5")


@pytest.fixture(scope="module")
def one_process_run(session_cli) -> Path:
    """The reference: the same training in one process."""
    result = session_cli("finetune", *ARGS, "hydra.run.dir=outputs/distributed-reference")
    assert result.returncode == 0, result.stderr[-2000:]
    return Path(session_cli.cwd, "outputs", "distributed-reference")


def _assert_one_world_of_two(run: Path, single: Path) -> None:
    """`run` was trained by 2 ranks, written by rank 0 alone, into the weights of `single`."""
    assert (run / ".hydra" / "config.yaml").is_file()
    log = (run / "finetune.log").read_text(encoding="utf-8")
    assert log.count("training:") == 1  # only rank 0 logs to the file
    metrics = read_json(run / "metrics.json")
    assert metrics["world_size"] == 2 and metrics["steps"] == 10
    for ckpt in ("last", "best"):
        a = load_file(run / "checkpoints" / ckpt / "model.safetensors")
        b = load_file(single / "checkpoints" / ckpt / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    assert read_json(single / "metrics.json")["best_step"] == metrics["best_step"]


def _only_run(root: Path) -> Path:
    runs = list(root.glob("*/*"))
    assert len(runs) == 1, runs  # every rank used rank 0's run directory
    return runs[0]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(cli_process, one_process_run):
    result = torchrun(cli_process, "finetune", *ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_one_world_of_two(_only_run(Path(cli_process.cwd, "outputs", "finetune")),
                             one_process_run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_meet_at_a_c10d_rendezvous(cli_process, one_process_run, tmp_path):
    """Two torchrun launchers, as on two machines: `--nnodes=2`, one process each, meeting
    at a c10d rendezvous on 127.0.0.1 (on a cluster: the first node's address)."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
               f"--rdzv_endpoint=127.0.0.1:{_free_port()}", "--rdzv_id=two-nodes",
               "-m", "bigmodel_cli", "finetune", *ARGS]
    # Each node writes to files, not pipes: a node blocked on a full pipe that nobody reads
    # yet would stall the other node's collectives.
    logs = [(tmp_path / f"node{i}.out", tmp_path / f"node{i}.err") for i in range(2)]
    nodes = []
    for out, err in logs:
        with out.open("w") as stdout, err.open("w") as stderr:
            nodes.append(subprocess.Popen(command, cwd=cli_process.cwd, env=cli_process.env,
                                          stdout=stdout, stderr=stderr))
    for node in nodes:
        node.wait(timeout=300)
    outputs = [(out.read_text(), err.read_text()) for out, err in logs]
    # When one node fails, the other usually fails too, with a broken connection to the
    # rendezvous store that the first one hosted: show both, the cause is in one of them.
    failed = [f"node {i} exited {node.returncode}:\n{stderr[-3000:]}"
              for i, (node, (_, stderr)) in enumerate(zip(nodes, outputs)) if node.returncode]
    assert not failed, "\n\n".join(failed)
    run = _only_run(Path(cli_process.cwd, "outputs", "finetune"))
    # The launcher whose process became global rank 0 prints the run directory.
    assert sum(str(run) in stdout for stdout, _ in outputs) == 1
    _assert_one_world_of_two(run, one_process_run)


@pytest.mark.slow
def test_a_submitit_job_of_two_tasks_is_one_world(cli_process, one_process_run):
    result = cli_process("finetune", "-m", "hydra/launcher=submitit_local",
                         "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=5", *ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = _only_run(Path(cli_process.cwd, "outputs", "finetune", "multirun"))
    _assert_one_world_of_two(sweep / "0", one_process_run)


@pytest.mark.slow
def test_sparse_models_are_refused_undertorchrun(cli_process):
    result = torchrun(cli_process, "finetune", "model=fasttext", "model.ngram_buckets=1000",
                       "trainer=debug")
    # Each rank exits 2 (a config error); torchrun itself reports a failed worker with 1.
    assert result.returncode == 1, result.stderr[-3000:]
    assert "exitcode  : 2" in result.stderr
    assert "set model.sparse=false" in result.stderr
    assert not list(Path(cli_process.cwd, "outputs", "finetune").glob("*/*/checkpoints"))
