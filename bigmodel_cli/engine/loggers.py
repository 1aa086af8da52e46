"""Experiment tracking: the one interface the engine logs through, and its trackers.

    log_metrics(record)        one record per logged step or evaluation: {"split", "step", ...}
    log_hparams(params)        the flattened config ({"optimizer.lr": 0.001, ...})
    log_summary(metrics, step) the final metrics ({"test/accuracy": ..., "train_time_s": ...})
    log_artifacts(run_dir)     metrics.json, the config, plots/
    close(status)              ok | paused | failed | interrupted

`build` returns a `Loggers` (a list that fans out): metrics.jsonl always, then one logger per
entry of the `logger` config group (csv, tensorboard, mlflow, wandb; several with a list:
`logger=[tensorboard,mlflow]`). Only rank 0 logs. Tracker packages are imported when a
logger is built, never at import time (this module is imported by a Hydra callback and must
stay free of torch). A tracker's run id is kept in the run directory (tracking.json), so a
resumed run continues its tracker run; each sweep job is its own run, grouped by the sweep.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import fcntl
import importlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from bigmodel_cli.errors import Interrupted, UsageError
from bigmodel_cli.jsonfiles import clean_json, write_json

log = logging.getLogger("bigmodel")

TRACKING_FILE = "tracking.json"  # tracker run ids: in a run directory, and in a sweep directory
INSTALL = "pip install 'bigmodel[track]'"
ARTIFACTS = ("metrics.json", ".hydra/config.yaml", "plots")


class Logger:
    """What every logger accepts; a tracker overrides what it records."""

    def log_metrics(self, record: dict) -> None:
        pass

    def log_hparams(self, params: dict) -> None:
        pass

    def log_summary(self, metrics: dict, step: int) -> None:
        pass

    def log_artifacts(self, run_dir: Path) -> None:
        pass

    def close(self, status: str) -> None:
        pass


class MetricsJsonl(Logger):
    """`metrics.jsonl`: one JSON object per logged step and per evaluation, appended and
    flushed, each with the seconds since the logger started as "time"."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.start = time.time()

    def log_metrics(self, record: dict) -> None:
        record = {"time": round(time.time() - self.start, 3), **clean_json(record)}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


_open: set = set()  # Loggers not closed yet


@atexit.register
def _close_left_open() -> None:
    """A job that failed outside `closed_on_error` still ends its tracker runs (as failed)."""
    for loggers in list(_open):
        loggers.close("failed")


class Loggers(Logger):
    """A list of loggers that each call goes to, in order; closed once."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers
        self.closed = False
        _open.add(self)

    def log_metrics(self, record: dict) -> None:
        for logger in self.loggers:
            logger.log_metrics(record)

    def log_hparams(self, params: dict) -> None:
        for logger in self.loggers:
            logger.log_hparams(params)

    def log_summary(self, metrics: dict, step: int) -> None:
        for logger in self.loggers:
            logger.log_summary(metrics, step)

    def log_artifacts(self, run_dir: Path) -> None:
        for logger in self.loggers:
            logger.log_artifacts(Path(run_dir))

    def close(self, status: str) -> None:
        if self.closed:
            return
        self.closed = True
        _open.discard(self)
        for logger in self.loggers:
            try:
                logger.close(status)
            except Exception as exc:  # one tracker failing to close must not hide the others
                log.warning("closing %s failed: %s", type(logger).__name__, exc)

    @contextlib.contextmanager
    def closed_on_error(self):
        """Close with the outcome when the block raises (interrupted or failed), then re-raise."""
        try:
            yield self
        except (Interrupted, KeyboardInterrupt):
            self.close("interrupted")
            raise
        except BaseException:
            self.close("failed")
            raise


# -- what every tracker needs to know about the run ----------------------------------------------
@dataclass
class RunInfo:
    run_dir: Path
    name: str                      # the run directory, relative to the working directory
    sweep_dir: Path | None = None  # the multirun directory this run is a job of
    saved: dict = field(default_factory=dict)  # tracking.json of the run being resumed

    @property
    def sweep_name(self) -> str | None:
        return _relative(self.sweep_dir) if self.sweep_dir is not None else None

    def save(self, tracker: str, ids: dict) -> None:
        path = self.run_dir / TRACKING_FILE
        write_json(path, {**_read_json(path), tracker: ids})


def run_info(run_dir: Path, resumed_from: Path | None = None) -> RunInfo:
    """This run's name and sweep (from Hydra), and the tracker ids of the run it resumes."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    sweep_dir = Path(hydra_cfg.sweep.dir).absolute() if hydra_cfg.mode == RunMode.MULTIRUN else None
    saved = _read_json(Path(resumed_from) / TRACKING_FILE) if resumed_from is not None else {}
    return RunInfo(Path(run_dir), _relative(Path(run_dir)), sweep_dir, saved)


def build(cfg: Any, run_dir: Path, enabled: bool = True,
          resumed_from: Path | None = None) -> Loggers:
    """metrics.jsonl plus one logger per `logger.<name>` entry; nothing on ranks above 0.
    The flattened config is logged as hyperparameters at once."""
    if not enabled:
        return Loggers([])
    from omegaconf import OmegaConf

    run = run_info(run_dir, resumed_from)
    loggers: list[Logger] = [MetricsJsonl(run_dir)]
    for name, settings in cfg.logger.items():
        if name not in TRACKERS:
            raise UsageError(f"logger.{name}: unknown logger; choose from "
                             f"{', '.join(sorted(TRACKERS))} (e.g. logger=[tensorboard,mlflow])")
        loggers.append(TRACKERS[name](settings, run))
    out = Loggers(loggers)
    out.log_hparams(flatten(OmegaConf.to_container(cfg, resolve=True)))
    return out


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


SUMMARY_SCALARS = ("steps", "epochs", "best_step", "skipped_steps", "train_time_s",
                   "samples_per_s", "tokens_per_s", "total_time_s", "parameters")


def final_metrics(summary: dict) -> dict:
    """The numbers of a training summary (metrics.json), flat: best_validation/<metric>,
    test/<metric>, and the run's totals (steps, times, throughput, parameters)."""
    out = {}
    for section in ("best_validation", "test"):
        for key, value in (summary.get(section) or {}).items():
            if _is_number(value):
                out[f"{section}/{key}"] = value
    out.update({k: summary[k] for k in SUMMARY_SCALARS if _is_number(summary.get(k))})
    return out


def scalars(record: dict) -> dict:
    """A record's numbers as `<split>/<key>` (train/loss, validation/accuracy, ...)."""
    return {f"{record['split']}/{key}": value for key, value in record.items()
            if key not in ("split", "step") and _is_number(value)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _relative(path: Path) -> str:
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _require(module: str, logger_name: str, package: str) -> Any:
    """Import a tracker package, or a usage error (exit 2) that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"logger={logger_name} needs the `{package}` package, which is not "
                         f"installed: {INSTALL} (or pip install {package})") from None


@contextlib.contextmanager
def _locked(path: Path | None):
    """An exclusive lock on `path` (a lock file), so that parallel sweep jobs create one
    MLflow database, experiment and parent run, not one each."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _artifact_files(run_dir: Path) -> list[tuple[Path, str | None]]:
    """(file, folder in the tracker's artefacts) for metrics.json, the config, plots/*."""
    out: list[tuple[Path, str | None]] = []
    for name in ARTIFACTS:
        path = run_dir / name
        if path.is_dir():
            out += [(p, name) for p in sorted(path.iterdir()) if p.is_file()]
        elif path.is_file():
            out.append((path, None))
    return out


# -- csv ---------------------------------------------------------------------------------------
class CsvLogger(Logger):
    """metrics.csv: one row per record, one column per key seen so far (the file is rewritten
    with the wider header when a record brings a new key)."""

    def __init__(self, settings: Any, run: RunInfo) -> None:
        self.path = run.run_dir / settings.file
        self.rows: list[dict] = []
        self.columns: list[str] = []
        if self.path.is_file():  # a resumed run: keep its rows
            with open(self.path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                self.columns = list(reader.fieldnames or [])
                self.rows = list(reader)

    def log_metrics(self, record: dict) -> None:
        record = clean_json(record)
        new = [k for k in record if k not in self.columns]
        self.rows.append(record)
        if new or not self.path.is_file():
            self.columns += new
            with open(self.path, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, self.columns)
                writer.writeheader()
                writer.writerows(self.rows)
        else:
            with open(self.path, "a", newline="", encoding="utf-8") as fh:
                csv.DictWriter(fh, self.columns).writerow(record)


# -- tensorboard -------------------------------------------------------------------------------
class TensorBoardLogger(Logger):
    """Event files in <run_dir>/<dir>: every scalar as <split>/<key> at its step; at the end
    the hyperparameters with the final metrics (TensorBoard's HParams tab)."""

    def __init__(self, settings: Any, run: RunInfo) -> None:
        _require("tensorboard", "tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.run_dir / settings.dir))
        self.params: dict = {}
        self.logged: set[str] = set()

    def log_metrics(self, record: dict) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])
            self.logged.add(tag)

    def log_hparams(self, params: dict) -> None:
        # HParams takes numbers, strings and booleans; null and lists are shown as text.
        self.params = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                       for k, v in params.items()}

    def log_summary(self, metrics: dict, step: int) -> None:
        from torch.utils.tensorboard.summary import hparams

        writer = self.writer._get_file_writer()
        for summary in hparams(self.params, metrics):
            writer.add_summary(summary)
        for tag, value in metrics.items():  # the metrics the HParams tab shows are scalars
            if tag not in self.logged:
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


# -- mlflow ------------------------------------------------------------------------------------
MLFLOW_STATUS = {"ok": "FINISHED", "failed": "FAILED", "interrupted": "KILLED",
                 "paused": "SCHEDULED"}  # paused: the rest is to run with trainer.resume


def mlflow_uri(uri: str) -> str:
    """A relative SQLite path is taken from the working directory now, and made absolute so
    that every job of a sweep (and a resume started elsewhere) writes the same database."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        path = Path(uri[len(prefix):]).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    return uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


class MLflowLogger(Logger):
    """One MLflow run per run directory (a sweep job: a child of the sweep's parent run):
    the flattened config as params, every scalar with its step, the final metrics,
    metrics.json, the config and plots as artefacts."""

    def __init__(self, settings: Any, run: RunInfo) -> None:
        _require("mlflow", "mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        saved = run.saved.get("mlflow")
        self.resumed = saved is not None
        # A resumed run goes on in the store it started in, wherever it is resumed from.
        self.uri = saved["tracking_uri"] if saved else mlflow_uri(settings.tracking_uri)
        db = _sqlite_path(self.uri)
        self.logged: set[str] = set()
        with _locked(run.sweep_dir / ".tracking.lock" if run.sweep_dir else None), \
                _locked(db.with_name(db.name + ".lock") if db else None):
            # Opening the store creates and migrates a new database: one process at a time.
            self.client = MlflowClient(tracking_uri=self.uri)
            self.client.search_experiments(max_results=1)
            if self.resumed:
                self.run_id = saved["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
                log.info("mlflow: continuing run %s (%s)", self.run_id, self.uri)
            else:
                experiment = self._experiment(settings.experiment, settings.artifact_location, db)
                tags = {"bigmodel.run_dir": str(run.run_dir)}
                if run.sweep_dir is not None:
                    tags["mlflow.parentRunId"] = self._sweep_parent(experiment, run)
                self.run_id = self.client.create_run(experiment, run_name=run.name,
                                                     tags=tags).info.run_id
                log.info("mlflow: run %s in experiment %r (%s)", self.run_id,
                         settings.experiment, self.uri)
        run.save("mlflow", {"run_id": self.run_id, "tracking_uri": self.uri})

    def _experiment(self, name: str, artifact_location: str | None, db: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        if artifact_location is None and db is not None:  # artefacts next to the database
            artifact_location = str(db.parent / "mlartifacts")
        if artifact_location is not None:
            artifact_location = Path(artifact_location).absolute().as_uri()
        return self.client.create_experiment(name, artifact_location=artifact_location)

    def _sweep_parent(self, experiment: str, run: RunInfo) -> str:
        """The sweep's parent run: made by its first job, found by the others (under the lock)."""
        path = run.sweep_dir / TRACKING_FILE
        saved = _read_json(path)
        if saved.get("mlflow", {}).get("tracking_uri") == self.uri:
            return saved["mlflow"]["run_id"]
        parent = self.client.create_run(experiment, run_name=run.sweep_name,
                                        tags={"bigmodel.sweep_dir": str(run.sweep_dir)})
        write_json(path, {**saved, "mlflow": {"run_id": parent.info.run_id,
                                              "tracking_uri": self.uri}})
        return parent.info.run_id

    def _log(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow takes up to 1000 per batch
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])
        self.logged |= set(values)

    def log_metrics(self, record: dict) -> None:
        self._log(scalars(record), record["step"])

    def log_hparams(self, params: dict) -> None:
        if self.resumed:  # logged when the run started; MLflow does not allow changing them
            return
        from mlflow.entities import Param

        items = [Param(key, str(value)[:6000]) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes up to 100 params per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_summary(self, metrics: dict, step: int) -> None:
        self._log({k: v for k, v in metrics.items() if k not in self.logged}, step)

    def log_artifacts(self, run_dir: Path) -> None:
        for path, folder in _artifact_files(run_dir):
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, MLFLOW_STATUS[status])


# -- wandb -------------------------------------------------------------------------------------
class WandbLogger(Logger):
    """A W&B run (offline by default: <run_dir>/wandb/, `wandb sync` uploads it), named after
    the run directory, grouped by its sweep."""

    def __init__(self, settings: Any, run: RunInfo) -> None:
        wandb = _require("wandb", "wandb", "wandb")
        saved = run.saved.get("wandb")
        self.run = wandb.init(
            project=settings.project, entity=settings.entity, mode=settings.mode,
            dir=str(run.run_dir), name=run.name, group=run.sweep_name,
            id=saved["id"] if saved else None, resume="allow" if saved else None,
            reinit="create_new",  # in-process sweeps and tests: one run per job
            settings=wandb.Settings(console="off"))  # leave stdout/stderr to the CLI
        run.save("wandb", {"id": self.run.id, "project": settings.project})

    def log_metrics(self, record: dict) -> None:
        self.run.log(scalars(record), step=record["step"])

    def log_hparams(self, params: dict) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_summary(self, metrics: dict, step: int) -> None:
        self.run.summary.update(metrics)

    def log_artifacts(self, run_dir: Path) -> None:
        for path, _folder in _artifact_files(run_dir):
            self.run.save(str(path), base_path=str(run_dir), policy="now")

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status in ("ok", "paused") else 1)


TRACKERS = {"csv": CsvLogger, "tensorboard": TensorBoardLogger, "mlflow": MLflowLogger,
            "wandb": WandbLogger}


class SweepTrackers(Callback):
    """When a multirun ends, end the sweep's MLflow parent run (its jobs ended their own)."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        saved = _read_json(Path(str(config.hydra.sweep.dir)).absolute() / TRACKING_FILE)
        if "mlflow" not in saved:
            return
        from mlflow.tracking import MlflowClient

        from bigmodel_cli import sweeps

        client = MlflowClient(tracking_uri=saved["mlflow"]["tracking_uri"])
        client.set_terminated(saved["mlflow"]["run_id"],
                              "FAILED" if sweeps.sweep_failed else "FINISHED")

