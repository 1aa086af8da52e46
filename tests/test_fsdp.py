"""trainer.strategy=fsdp: 2 gloo ranks train what 1 process trains, sharded last/ checkpoints
resume exactly and reshard (2 -> 1, 1 -> 2 ranks), best/ is one full file that evaluate
reads on one process, a kill -9 during a sharded save leaves the previous last/ loadable,
and families that cannot be sharded are refused."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ProcessCLI, evaluate_matches, read_json, run_dir_of, torchrun
from safetensors.torch import load_file

from bigmodel_cli.engine.checkpoint import (
    build_model,
    load_state,
    load_weights,
    read_meta,
    resolve_checkpoint,
)

# No dropout (bert_tiny): 2 ranks and 1 process then compute the same function on the same
# global batches of 32; a validation and both checkpoints every 3 steps.
ARGS = ("model=bert_tiny", "trainer=debug", "trainer.max_steps=6", "trainer.eval_every_steps=3",
        "trainer.strategy=fsdp", "device.threads=1")
# A rank's loss is the mean over its half of the batch, and FSDP averages the two halves'
# gradients: the same sums as one process, in another order (observed: <= 5e-7).
ATOL, RTOL = 1e-5, 1e-4


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The full weights of a checkpoint, from model.safetensors or (FSDP last/) its shards."""
    model, _ = build_model(read_meta(checkpoint), checkpoint.parent.parent)
    load_weights(model, checkpoint)
    return model.state_dict()


def assert_close(a: Path, b: Path, exact: bool = False) -> None:
    for ckpt in ("best", "last"):
        x, y = weights(a / "checkpoints" / ckpt), weights(b / "checkpoints" / ckpt)
        assert x.keys() == y.keys()
        for key in x:
            if exact:
                assert torch.equal(x[key], y[key]), (ckpt, key)
            else:
                torch.testing.assert_close(x[key], y[key], atol=ATOL, rtol=RTOL)


@pytest.fixture(scope="module")
def work(tmp_path_factory, cli_env) -> ProcessCLI:
    return ProcessCLI(tmp_path_factory.mktemp("fsdp"), cli_env)


def _trained(work: ProcessCLI, name: str, *extra: str) -> Path:
    result = torchrun(work, "finetune", *ARGS, *extra, f"hydra.run.dir=outputs/{name}")
    assert result.returncode == 0, result.stderr[-3000:]
    return work.cwd / "outputs" / name


@pytest.fixture(scope="module")
def straight(work) -> Path:
    """6 steps on 2 ranks."""
    return _trained(work, "straight")


@pytest.fixture(scope="module")
def paused(work) -> Path:
    """3 steps on 2 ranks, paused: a sharded last/ to resume (tests resume copies of it)."""
    return _trained(work, "paused", "trainer.pause_after_steps=3")


def _copy(run: Path, name: str) -> Path:
    return Path(shutil.copytree(run, run.with_name(name)))


@pytest.mark.slow
def test_two_ranks_match_one_process(straight, cli):
    last, best = straight / "checkpoints" / "last", straight / "checkpoints" / "best"
    assert sorted(p.name for p in last.iterdir()) == ["meta.json", "sharded", "state.pt"]
    assert sorted(p.name for p in (last / "sharded").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own shard
    assert read_meta(last)["world_size"] == 2
    assert "optimizers" in load_state(last)  # the plain part; the tensors are in sharded/
    assert sorted(p.name for p in best.iterdir()) == ["meta.json", "model.safetensors"]
    log = (straight / "finetune.log").read_text(encoding="utf-8")
    assert "FSDP over 2 rank(s): 2 transformer blocks and 2 embedding tables" in log
    one = run_dir_of(cli("finetune", *ARGS, "trainer.strategy=auto", "hydra.run.dir=outputs/one"),
                     cli.cwd)
    assert not list(one.glob("checkpoints/*/sharded"))
    assert_close(straight, one)
    a, b = read_json(straight / "metrics.json"), read_json(one / "metrics.json")
    assert a["world_size"] == 2 and a["steps"] == b["steps"] == 6
    assert a["best_step"] == b["best_step"]
    assert a["test"]["loss"] == pytest.approx(b["test"]["loss"], abs=1e-5)


@pytest.mark.slow
def test_best_checkpoint_evaluates_on_one_process(straight, cli):
    assert set(load_file(straight / "checkpoints" / "best" / "model.safetensors")) == set(
        weights(straight / "checkpoints" / "last"))  # full, unsharded names
    evaluate_matches(cli, straight, ("loss", "accuracy", "f1_macro"))


@pytest.mark.slow
def test_resume_on_two_ranks_is_bitwise_exact(straight, paused, work):
    run = _copy(paused, "resumed2")
    result = torchrun(work, "finetune", f"trainer.resume={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed at step 3" in (run / "finetune.log").read_text(encoding="utf-8")
    assert_close(straight, run, exact=True)
    a, b = read_json(straight / "metrics.json"), read_json(run / "metrics.json")
    for key in ("test", "best_validation", "last_validation", "steps", "best_step"):
        assert a[key] == b[key], key


@pytest.mark.slow
def test_two_rank_checkpoint_resumes_in_one_process(straight, paused, cli):
    run = _copy(paused, "resumed1")
    resumed = cli("finetune", f"trainer.resume={run}")
    assert run_dir_of(resumed, cli.cwd) == run
    assert "FSDP over 1 rank(s)" in resumed.stderr  # DCP resharded 2 ranks' shards to one
    assert read_meta(run / "checkpoints" / "last")["world_size"] == 1
    assert_close(straight, run)


@pytest.mark.slow
def test_one_process_checkpoint_resumes_on_two_ranks(straight, work, cli):
    paused = cli("finetune", *ARGS, "trainer.pause_after_steps=3", "hydra.run.dir=outputs/p1")
    run = run_dir_of(paused, cli.cwd)
    assert read_meta(run / "checkpoints" / "last")["world_size"] == 1
    result = torchrun(ProcessCLI(cli.cwd, work.env), "finetune", f"trainer.resume={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_meta(run / "checkpoints" / "last")["world_size"] == 2
    assert_close(straight, run)


@pytest.mark.slow
def test_kill_9_during_a_sharded_save_keeps_the_previous_last(work):
    """A checkpoint every step; both ranks are killed once a save has written shards into its
    temporary directory: the last/ before it still loads, with its own state."""
    launcher = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    run = work.cwd / "outputs" / "killed"
    folder = run / "checkpoints"
    proc = subprocess.Popen(
        [launcher, "--standalone", "--nproc_per_node=2", "-m", "bigmodel_cli", "finetune",
         "model=bert", "trainer=debug", "trainer.strategy=fsdp", "device.threads=1",
         "trainer.max_steps=50", "trainer.eval_every_steps=1", "trainer.max_eval_samples=32",
         f"hydra.run.dir={run}"],
        cwd=work.cwd, env=work.env, stdout=subprocess.DEVNULL, stderr=open(work.cwd / "killed.err", "w"))
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not (
                (folder / "last").is_dir() and list(folder.glob(".last.tmp-*/sharded/*"))):
            time.sleep(0.002)
    finally:
        for pid in (*_children(proc.pid), proc.pid):  # torchrun starts each rank in its own session
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (work.cwd / "killed.err").read_text()[-3000:]
    assert list(folder.glob(".last.tmp-*/sharded/*")), "no save was in progress"
    last = resolve_checkpoint(run, "last")
    meta = read_meta(last)
    assert load_state(last)["step"] == meta["step"] >= 1
    assert weights(last)  # every shard of it is there and loads into one process


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_models_without_blocks_or_with_sparse_tables_are_refused(cli):
    from bigmodel_cli.engine.fsdp import check_shardable
    from bigmodel_cli.errors import UsageError
    from bigmodel_cli.models.lstm import LSTMEncoder
    from bigmodel_cli.models.text_transformer import TextTransformer

    with pytest.raises(UsageError, match="LSTMEncoder has no transformer blocks to shard"):
        check_shardable(LSTMEncoder(vocab_size=50, padding_idx=0, embedding_dim=8, hidden_size=8))
    check_shardable(TextTransformer(vocab_size=50, n_layers=1, d_model=8, n_heads=2, d_ff=8))
    result = cli("finetune", "model=fasttext", "model.ngram_buckets=1000", "trainer=debug",
                 "trainer.strategy=fsdp")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "sparse gradients, which FSDP cannot shard" in result.stderr
    assert not list(Path(cli.cwd, "outputs").glob("finetune/*/*/checkpoints"))


def test_lora_runs_are_refused(cli):
    result = cli("finetune", "model=bert_tiny", "model.lora.enabled=true", "trainer=debug",
                 "trainer.strategy=fsdp")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "trainer.strategy=fsdp with model.lora.enabled=true is not supported" in result.stderr
    assert not list(Path(cli.cwd, "outputs").glob("finetune/*/*/checkpoints"))


def test_optimizer_state_after_a_validation_forward():
    """After a forward with no backward (a validation), the root unit still holds gathered
    parameters: the strategy reshards before reading states (one process, a 1-rank world)."""
    from bigmodel_cli.engine.strategy import Strategy
    from bigmodel_cli.models.text_transformer import TextTransformer
    from bigmodel_cli.tasks.classification import Classifier

    strategy = Strategy.from_environment("fsdp")
    model = Classifier(TextTransformer(vocab_size=50, n_layers=1, d_model=8, n_heads=2, d_ff=8), 3)
    model = strategy.wrap(model, torch.device("cpu"), compile=False)
    optimizer = torch.optim.AdamW(model.parameters())
    batch = {"input_ids": torch.randint(1, 50, (4, 6)), "lengths": torch.full((4,), 6)}
    model(batch).sum().backward()
    optimizer.step()
    with torch.inference_mode():
        model(batch)
    states = strategy.optimizer_states(model, [optimizer])
    assert set(states["state"]) == {name for name, _ in model.named_parameters()}
