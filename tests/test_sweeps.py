"""Launchers and sweepers from the `sweep` extra: joblib (parallel local jobs),
submitit_local, and Optuna with its direction taken from trainer.monitor_mode. The launchers
start processes, so their sweeps run from a process too (`cli_process`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import TINY_FASTTEXT, read_json

SMALL = (*TINY_FASTTEXT, "trainer=debug", "trainer.epochs=1", "device.threads=1")


def _sweep_dir(cwd: Path) -> Path:
    (sweep,) = Path(cwd, "outputs", "finetune", "multirun").glob("*/*")
    return sweep


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes(cli_process):
    cli = cli_process
    result = cli("finetune", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SMALL,
                 "optimizer.lr=0.01,0.02")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout
    rows = read_json(_sweep_dir(cli.cwd) / "summary.json")
    assert sorted(r["job"] for r in rows) == ["0", "1"] and {r["status"] for r in rows} == {"ok"}


@pytest.mark.slow
def test_submitit_local_launcher(cli_process):
    cli = cli_process
    result = cli("finetune", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                 *SMALL, "optimizer.lr=0.01,0.02")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_json(_sweep_dir(cli.cwd) / "summary.json")
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 2


@pytest.mark.slow
def test_optuna_sweeper_maximises_the_monitored_metric_with_persistent_storage(cli):
    result = cli("finetune", "-m", "hydra/sweeper=optuna_monitor", "hydra.sweeper.n_trials=3",
                 "hydra.sweeper.storage=sqlite:///study.db", "hydra.sweeper.study_name=lr",
                 "optimizer.lr=tag(log, interval(1e-3, 1e-1))", *SMALL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Directions: ['maximize']" in result.stdout
    sweep = _sweep_dir(cli.cwd)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    rows = read_json(sweep / "summary.json")
    assert len(rows) == 3
    assert best["best_value"] == max(r["value"] for r in rows) == rows[0]["value"]
    assert (cli.cwd / "study.db").stat().st_size > 0
