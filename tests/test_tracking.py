"""Experiment tracking (the `logger` group): what each tracker stored, read back with the
tracker's own reader (MLflow's client on the SQLite store, TensorBoard's event reader),
equals metrics.jsonl; sweeps give one child run per job under one parent; a resumed run
continues its tracker run; a missing tracker package is a usage error (exit 2).

Runs happen in-process (the Hydra app called from the test, in tmp_path); subprocesses only
where a process boundary is under test (imports, parallel joblib workers, torchrun)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_FASTTEXT, read_json
from omegaconf import OmegaConf

from bigmodel_cli.cli import run_hydra_command

SMALL = (*TINY_FASTTEXT, "data=news", "trainer=debug", "trainer.epochs=1", "device.threads=1")


@pytest.fixture
def work(tmp_path, cli_env, monkeypatch) -> Path:
    """tmp_path as the working directory, with the test environment (data, cache, offline)."""
    for key in ("BIGMODEL_DATA_DIR", "BIGMODEL_CACHE_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(key, cli_env[key])
    for key in ("MLFLOW_TRACKING_URI", "WANDB_MODE", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def bigmodel(command: str, *args: str) -> int:
    """`bigmodel COMMAND ARGS` in this process; its exit code."""
    import bigmodel_cli.main

    # Set by the previous in-process job; a config error of this one must still read as exit 2.
    bigmodel_cli.main.job_started = False
    try:
        run_hydra_command(command, list(args))
    except SystemExit as exc:
        return exc.code or 0
    return 0


def runs_under(path: Path) -> list[Path]:
    return sorted(p.parent for p in path.rglob(".hydra") if p.is_dir())


def jsonl_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as {"<split>/<key>": [(step, value), ...]}: what every tracker must hold."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key not in ("split", "step", "time") and isinstance(value, (int, float)):
                out.setdefault(f"{record['split']}/{key}", []).append((record["step"], value))
    return out


def flat_config(run_dir: Path) -> dict:
    def walk(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=True)
    return dict(walk(cfg))


def mlflow_client(cwd: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{cwd / 'outputs' / 'mlflow.db'}")


def mlflow_runs(client) -> list:
    experiment = client.get_experiment_by_name("bigmodel")
    return sorted(client.search_runs([experiment.experiment_id]), key=lambda r: r.info.run_name)


def assert_mlflow_run_matches(client, run, run_dir: Path) -> None:
    """Every metrics.jsonl scalar at its step, exactly; the final metrics; the config."""
    expected = jsonl_scalars(run_dir)
    assert expected["train/loss"] and expected["validation/accuracy"]
    for key, points in expected.items():
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted((m.step, m.value) for m in history) == sorted(points), key
    summary = read_json(run_dir / "metrics.json")
    assert run.data.metrics["best_validation/accuracy"] == summary["best_validation"]["accuracy"]
    assert run.data.metrics["train_time_s"] == summary["train_time_s"]
    config = flat_config(run_dir)
    assert len(run.data.params) == len(config)
    assert run.data.params["optimizer.lr"] == str(config["optimizer.lr"])
    assert run.data.params["model._target_"] == config["model._target_"]


def test_one_run_in_mlflow_tensorboard_and_csv_equals_metrics_jsonl(work):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    assert bigmodel("finetune", *SMALL, "logger=[csv,tensorboard,mlflow]") == 0
    (run_dir,) = runs_under(work / "outputs" / "finetune")
    expected = jsonl_scalars(run_dir)

    client = mlflow_client(work)
    (run,) = mlflow_runs(client)
    assert run.info.run_name == str(run_dir.relative_to(work)) and run.info.status == "FINISHED"
    assert read_json(run_dir / "tracking.json")["mlflow"]["run_id"] == run.info.run_id
    assert_mlflow_run_matches(client, run, run_dir)
    assert run.data.metrics["test/accuracy"] == read_json(run_dir / "metrics.json")["test"]["accuracy"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "config.yaml", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == \
        ["plots/training_curves.png"]

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    for key, points in expected.items():  # float32 in the event file
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in points], key
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), key
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    lr = start.session_start_info.hparams["optimizer.lr"].number_value
    assert lr == pytest.approx(flat_config(run_dir)["optimizer.lr"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    shown = {m.name.tag for m in experiment.experiment.metric_infos}
    assert {"test/accuracy", "best_validation/accuracy", "train_time_s"} <= shown

    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(records)
    for row, record in zip(rows, records):
        for key, value in record.items():
            if key != "time":
                assert (float(row[key]) if isinstance(value, (int, float)) else row[key]) == value


def test_logger_none_adds_no_files(work):
    assert bigmodel("finetune", *SMALL) == 0
    (run_dir,) = runs_under(work / "outputs" / "finetune")
    assert not (run_dir / "tracking.json").exists() and not (work / "outputs" / "mlflow.db").exists()
    assert (run_dir / "metrics.jsonl").is_file()


def test_a_sweep_is_one_parent_run_with_a_child_run_per_job(work):
    pytest.importorskip("mlflow")
    assert bigmodel("finetune", "-m", *SMALL, "logger=mlflow", "optimizer.lr=0.01,0.02") == 0
    (sweep,) = (work / "outputs" / "finetune" / "multirun").glob("*/*")
    jobs = runs_under(sweep)
    client = mlflow_client(work)
    runs = mlflow_runs(client)
    assert len(runs) == 3 and len(jobs) == 2
    parent = runs[0]
    assert parent.info.run_name == str(sweep.relative_to(work)) and parent.info.status == "FINISHED"
    children = runs[1:]
    assert [c.info.run_name for c in children] == [str(j.relative_to(work)) for j in jobs]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert [c.data.params["optimizer.lr"] for c in children] == ["0.01", "0.02"]
    for child, job in zip(children, jobs):
        assert child.info.status == "FINISHED"
        assert_mlflow_run_matches(client, child, job)
    assert read_json(sweep / "tracking.json")["mlflow"]["run_id"] == parent.info.run_id


def test_a_resumed_run_continues_its_mlflow_and_wandb_runs(work):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    args = (*SMALL, "trainer.epochs=2", "logger=[mlflow,wandb]")
    assert bigmodel("finetune", *args, "trainer.pause_after_steps=10") == 0
    (run_dir,) = runs_under(work / "outputs" / "finetune")
    client = mlflow_client(work)
    (paused,) = mlflow_runs(client)
    assert paused.info.status == "SCHEDULED"  # to be continued with trainer.resume
    steps_before = [m.step for m in client.get_metric_history(paused.info.run_id, "train/loss")]
    assert max(steps_before) == 10
    ids = read_json(run_dir / "tracking.json")

    assert bigmodel("finetune", f"trainer.resume={run_dir}") == 0
    (run,) = mlflow_runs(client)  # the same run, continued
    assert run.info.run_id == paused.info.run_id and run.info.status == "FINISHED"
    assert read_json(run_dir / "tracking.json") == ids
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps[:len(steps_before)] == steps_before and max(steps) > 10
    assert steps == sorted(set(steps))  # no step logged twice
    assert_mlflow_run_matches(client, run, run_dir)
    # W&B (offline): both invocations wrote to the run with the saved id.
    offline = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.endswith(f"-{ids['wandb']['id']}") for p in offline)
    assert all((run_dir / "wandb" / p / f"run-{ids['wandb']['id']}.wandb").stat().st_size
               for p in offline)


def test_wandb_mode_comes_from_the_environment(work, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert bigmodel("finetune", *SMALL, "logger=wandb") == 0
    (run_dir,) = runs_under(work / "outputs" / "finetune")
    assert not list(run_dir.glob("wandb/offline-run-*"))  # disabled: nothing written
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").logger.wandb.mode == "disabled"


@pytest.mark.parametrize("module", ["mlflow", "tensorboard", "wandb"])
def test_a_missing_tracker_package_exits_2_with_the_install_command(work, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: import fails
    assert bigmodel("finetune", *SMALL, f"logger={module}") == 2
    (run_dir,) = runs_under(work / "outputs" / "finetune")
    error = read_json(run_dir / "run.json")["invocations"][-1]["error"]
    assert f"logger={module} needs the `{module}` package" in error
    assert "pip install 'bigmodel[track]'" in error


def test_an_unknown_logger_is_a_usage_error(work):
    assert bigmodel("finetune", *SMALL, "logger=nope") == 2
    assert bigmodel("finetune", *SMALL, "+logger.nope={}") == 2


def test_the_cli_and_the_logger_module_import_no_tracker_and_no_torch():
    code = ("import sys, bigmodel_cli.cli, bigmodel_cli.main, bigmodel_cli.engine.loggers; "
            "print([m for m in ('torch', 'mlflow', 'tensorboard', 'wandb') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_parallel_joblib_jobs_get_one_parent_and_a_child_each(cli):
    pytest.importorskip("mlflow")
    result = cli("finetune", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SMALL,
                 "logger=mlflow", "optimizer.lr=0.01,0.02,0.03")
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow_client(cli.cwd)
    runs = mlflow_runs(client)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert len({c.info.run_name for c in children}) == 3
    for child in children:
        assert_mlflow_run_matches(client, child, cli.cwd / child.info.run_name)


@pytest.mark.slow
def test_under_torchrun_only_rank_0_logs(cli):
    pytest.importorskip("mlflow")
    # torchrun of this interpreter (the one with the track extra installed)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bigmodel_cli",
                             "finetune", "model=lstm", "model.embedding_dim=16",
                             "model.hidden_size=16", "trainer=debug", "trainer.max_steps=10",
                             "logger=[csv,mlflow]"], cwd=cli.cwd, env=cli.env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = runs_under(Path(cli.cwd, "outputs", "finetune"))
    client = mlflow_client(cli.cwd)
    (run,) = mlflow_runs(client)  # one run, not one per rank
    assert_mlflow_run_matches(client, run, run_dir)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    with open(run_dir / "metrics.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(lines)
    assert not any(math.isnan(v) for v in run.data.metrics.values())
