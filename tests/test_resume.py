"""Resume, pause, interruption, kill -9 and non-finite losses."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_FASTTEXT, read_json, run_dir_of
from safetensors.torch import load_file

from bigmodel_cli.engine.checkpoint import load_state, load_weights, read_meta, resolve_checkpoint

# Small LSTM with dropout, so that restoring the RNG state matters for exactness.
TINY_LSTM = ("model=lstm", "model.embedding_dim=16", "model.hidden_size=16", "trainer=debug",
             "trainer.max_steps=20", "trainer.eval_every_steps=5")


def weights_equal(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_pause_and_resume_is_bitwise_exact(cli):
    straight = run_dir_of(cli("finetune", *TINY_LSTM, "hydra.run.dir=outputs/straight"), cli.cwd)
    # Stop after 7 steps (mid-epoch: 13 batches per epoch), then resume the latest run.
    paused = cli("finetune", *TINY_LSTM, "trainer.pause_after_steps=7")
    run = run_dir_of(paused, cli.cwd)
    assert "paused after step 7" in paused.stderr and "trainer.resume=" in paused.stderr
    assert not (run / "metrics.json").exists()
    resumed = cli("finetune", "trainer.resume=auto")
    assert run_dir_of(resumed, cli.cwd) == run  # the same run directory, continued
    assert "resumed at step 7 (epoch 1, 7 batches into it)" in resumed.stderr
    for ckpt in ("best", "last"):
        assert weights_equal(straight / "checkpoints" / ckpt, run / "checkpoints" / ckpt), ckpt
    a, b = read_json(straight / "metrics.json"), read_json(run / "metrics.json")
    for key in ("test", "best_validation", "last_validation", "steps", "best_step"):
        assert a[key] == b[key], key
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "validation"] == [5, 10, 13, 15, 20]
    invocations = read_json(run / "run.json")["invocations"]
    assert [i["resumed"] for i in invocations] == [False, True]
    assert invocations[0]["command"].startswith("bigmodel finetune model=lstm")
    assert invocations[0]["versions"]["torch"] == torch.__version__


def test_resume_errors(cli, tmp_path):
    result = cli("finetune", "trainer.resume=auto")
    assert result.returncode == 2 and "no unfinished run" in result.stderr
    result = cli("finetune", f"trainer.resume={tmp_path}")
    assert result.returncode == 2 and "not a run directory" in result.stderr


def _start(cli_process, *args) -> subprocess.Popen:
    """A training process to send signals to (or kill)."""
    return subprocess.Popen([sys.executable, "-m", "bigmodel_cli", "finetune", *args],
                            cwd=cli_process.cwd, env=cli_process.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint_and_exits_143(cli_process, cli):
    args = (*TINY_FASTTEXT, "trainer=debug", "trainer.max_train_samples=20000", "trainer.epochs=2",
            "trainer.log_every_steps=1", "hydra.run.dir=outputs/preempted")
    proc = _start(cli_process, *args)
    run = Path(cli.cwd, "outputs", "preempted")
    deadline = time.time() + 120
    while time.time() < deadline and "step 30/" not in _read(run / "finetune.log"):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert f"resume with: bigmodel finetune trainer.resume={run}" in err
    state = load_state(run / "checkpoints" / "last")
    assert state["step"] >= 30 and 0 < state["batches_done"] < 625
    # What the run trains is its own (optimizer.lr is ignored); its budget may change. The
    # budget is counted from where it stopped: the signal lands some steps after step 30
    # (65 on a fast machine), and a budget below what is done is refused.
    budget = state["step"] + 30
    result = cli("finetune", f"trainer.resume={run}", "optimizer.lr=0.5", f"trainer.max_steps={budget}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ignored (different now): optimizer.lr" in result.stderr
    assert f"trainer.max_steps None -> {budget}" in result.stderr
    assert read_json(run / "metrics.json")["steps"] == budget


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


@pytest.mark.slow
def test_kill_9_never_leaves_a_corrupt_last_checkpoint(cli_process):
    rng = random.Random(0)
    for attempt in range(3):
        run = Path(cli_process.cwd, "outputs", f"killed{attempt}")
        # A checkpoint every step: most of the time is spent writing checkpoints.
        proc = _start(cli_process, "model=fasttext", "model.ngram_buckets=100000", "trainer=debug",
                      "trainer.epochs=50", "trainer.eval_every_steps=1", f"hydra.run.dir={run}")
        deadline = time.time() + 120
        while time.time() < deadline and not (run / "checkpoints" / "last").is_dir():
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 2.0))
        proc.kill()
        proc.wait(timeout=60)
        last = resolve_checkpoint(run, "last")
        meta = read_meta(last)
        from bigmodel_cli.engine.checkpoint import build_model
        model, _ = build_model(meta)
        load_weights(model, last)
        assert load_state(last)["step"] == meta["step"] >= 1


def test_nonfinite_loss_stops_with_exit_1_and_keeps_the_last_good_checkpoint(cli):
    result = cli("finetune", *TINY_FASTTEXT, "trainer=debug", "trainer.eval_every_steps=1",
                 "optimizer=sgd", "optimizer.lr=1e30", "trainer.grad_clip=null",
                 "hydra.run.dir=outputs/nan")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "the training loss is nan at step" in result.stderr
    assert "Traceback" not in result.stderr
    run = Path(cli.cwd, "outputs", "nan")
    assert read_meta(resolve_checkpoint(run, "last"))["step"] >= 1
    skipped = cli("finetune", *TINY_FASTTEXT, "trainer=debug", "optimizer=sgd",
                  "optimizer.lr=1e30", "trainer.grad_clip=null", "trainer.skip_nonfinite=true")
    metrics = read_json(run_dir_of(skipped, cli.cwd) / "metrics.json")
    assert metrics["skipped_steps"] > 0
