"""The Hydra apps, one task function per command, all at module level.

Launchers (joblib, submitit) pickle the task function, so it must live at module level.
This module imports Hydra only; each command's heavy imports happen inside its run().
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from bigmodel_cli.config import conf_dir
from bigmodel_cli.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Interrupted,
    NonFiniteLoss,
    UsageError,
)

log = logging.getLogger("bigmodel")

# conf/hydra/sweeper/optuna.yaml: the study's direction follows trainer.monitor_mode.
OmegaConf.register_new_resolver(
    "bigmodel_direction", lambda mode: "maximize" if mode == "max" else "minimize", replace=True)

_claimed_dirs: dict[str, str] = {}


def unique_dir(path: str) -> str:
    """`path`, else `path-2`, `path-3`, ...: the first that does not exist yet, created at
    once. Run directories are named by the second a run starts; two runs started in the same
    second must not share one (and overwrite each other's checkpoints). The choice is
    remembered, so resolving the same path again within this command gives the same
    directory; `launch.run_hydra_command` forgets it before the next command."""
    if path not in _claimed_dirs:
        candidate, n = path, 1
        while True:
            try:
                Path(candidate).mkdir(parents=True, exist_ok=False)
                break
            except FileExistsError:
                n += 1
                candidate = f"{path}-{n}"
        _claimed_dirs[path] = candidate
    return _claimed_dirs[path]


OmegaConf.register_new_resolver("bigmodel_unique", unique_dir, replace=True)

# Set once a task function has started: an exit 1 before that came from Hydra's config
# composition, which the CLI reports as a usage error (exit 2).
job_started = False


def run_command(command: str, cfg: DictConfig) -> Any:
    """Validate the config, run `commands/<command>.py: run(cfg, run_dir)`, map errors to exits."""
    global job_started
    job_started = True
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from bigmodel_cli.config import validate
    from bigmodel_cli.engine.distributed import adopt_submitit_tasks, shutdown

    adopt_submitit_tasks()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    from bigmodel_cli.runs import record_status

    try:
        validate(cfg, command)
        module = importlib.import_module(f"bigmodel_cli.commands.{command}")
        result = module.run(cfg, run_dir)
        paused = isinstance(result, dict) and result.get("paused")
        record_status(run_dir, "paused" if paused else "ok")
        if multirun:  # sweepers (Optuna) optimise the monitored validation value
            return _monitored_value(result)
        return result
    except UsageError as exc:
        log.error("error: %s", exc)
        record_status(run_dir, "failed", " ".join(str(exc).split()))
        if multirun:  # reported in the sweep summary; the other jobs go on
            return float("nan")
        if full_error:
            raise
        raise SystemExit(EXIT_USAGE) from None
    except Interrupted as exc:
        log.error("interrupted (%s); the last checkpoint and the metrics so far are saved in %s",
                  exc, run_dir)
        record_status(run_dir, "interrupted", str(exc))
        if command in ("finetune", "pretrain"):
            log.error("resume with: bigmodel %s trainer.resume=%s", command, run_dir)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        log.error("interrupted; everything written so far is kept in %s", run_dir)
        record_status(run_dir, "interrupted", "KeyboardInterrupt")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if full_error and not multirun:
            raise
        _log_failure(command, exc, run_dir)
        record_status(run_dir, "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        if multirun:
            return float("nan")
        raise SystemExit(EXIT_FAILED) from None
    finally:
        shutdown()


def _log_failure(command: str, exc: Exception, run_dir: Path) -> None:
    """One line for the terminal; the traceback goes into the log file only."""
    log.debug("traceback", exc_info=True)
    if isinstance(exc, NonFiniteLoss):
        log.error("error: %s", exc)
        return
    log.error("error: the %s job failed: %s: %s", command, type(exc).__name__, exc)
    log.error("the full traceback is in %s (or set HYDRA_FULL_ERROR=1)", run_dir / f"{command}.log")


def _monitored_value(result: Any) -> float:
    if not isinstance(result, dict):
        return float("nan")
    best = result.get("best_validation") or {}
    value = best.get(result.get("monitor"))
    return float(value) if value is not None else float("nan")


def _hydra_app(command: str):
    @hydra.main(version_base=None, config_path=conf_dir(), config_name=command)
    def task(cfg: DictConfig) -> Any:
        return run_command(command, cfg)

    task.__name__ = task.__qualname__ = command
    task.__module__ = __name__
    return task


pretrain = _hydra_app("pretrain")
finetune = _hydra_app("finetune")
evaluate = _hydra_app("evaluate")
predict = _hydra_app("predict")
serve = _hydra_app("serve")
export = _hydra_app("export")

if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `bigmodel` command")
