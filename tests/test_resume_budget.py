"""Training on past a finished run: trainer.max_steps / trainer.epochs raised on resume."""

from __future__ import annotations

import json

from conftest import TINY_FASTTEXT, read_json, run_dir_of
from test_resume import weights_equal

from bigmodel_cli.engine.checkpoint import load_state

SHORT = (*TINY_FASTTEXT, "data=news", "trainer=debug", "scheduler=linear_warmup",
         "trainer.eval_every_steps=10")


def _train_records(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


def test_raising_max_steps_continues_the_finished_run_with_a_rebuilt_schedule(cli):
    run = run_dir_of(cli("finetune", *SHORT, "trainer.max_steps=20", "trainer.log_every_steps=1"),
                     cli.cwd)
    assert read_json(run / "metrics.json")["steps"] == 20
    assert _train_records(run)[-1]["lr"] == 0.0  # linear decay reached its end
    more = cli("finetune", f"trainer.resume={run}", "trainer.max_steps=40")
    assert run_dir_of(more, cli.cwd) == run  # the same run directory, continued
    assert "ignored" not in more.stderr
    assert "trainer.max_steps 20 -> 40" in more.stderr
    assert "schedule is rebuilt for 40 steps and continues at step 20" in more.stderr
    summary = read_json(run / "metrics.json")
    assert summary["steps"] == 40
    records = _train_records(run)
    assert [r["step"] for r in records][-20:] == list(range(21, 41))
    # Steps 21..40 follow the 40-step schedule: lr falls linearly from about half of the peak.
    lrs = [r["lr"] for r in records if r["step"] > 20]
    peak = max(r["lr"] for r in records)
    assert 0.4 * peak < lrs[0] < 0.6 * peak and lrs[-1] == 0.0
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert load_state(run / "checkpoints" / "last")["total_steps"] == 40

    # Going below what is done is a usage error, and the run is left as it was.
    lower = cli("finetune", f"trainer.resume={run}", "trainer.max_steps=30")
    assert lower.returncode == 2, lower.stderr
    assert "trainer.max_steps=30" in lower.stderr and "already trained 40 steps" in lower.stderr
    assert read_json(run / "metrics.json")["steps"] == 40


def test_raising_epochs_on_resume_trains_the_extra_epochs(cli):
    run = run_dir_of(cli("finetune", *SHORT, "trainer.epochs=1"), cli.cwd)
    one = read_json(run / "metrics.json")
    more = cli("finetune", f"trainer.resume={run}", "trainer.epochs=2")
    assert run_dir_of(more, cli.cwd) == run
    two = read_json(run / "metrics.json")
    assert two["epochs"] == 2 and two["steps"] == 2 * one["steps"]


def test_resume_with_the_same_budget_is_unchanged(cli):
    """A resume that changes nothing is still exact (the budget check is a no-op then)."""
    straight = run_dir_of(cli("finetune", *SHORT, "trainer.max_steps=12",
                              "hydra.run.dir=outputs/straight"), cli.cwd)
    paused = run_dir_of(cli("finetune", *SHORT, "trainer.max_steps=12",
                            "trainer.pause_after_steps=5"), cli.cwd)
    resumed = cli("finetune", f"trainer.resume={paused}", "trainer.max_steps=12")
    assert "new budget" not in resumed.stderr and "rebuilt" not in resumed.stderr
    run_dir_of(resumed, cli.cwd)
    for ckpt in ("best", "last"):
        assert weights_equal(straight / "checkpoints" / ckpt, paused / "checkpoints" / ckpt)
