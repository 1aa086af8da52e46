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
from omegaconf import DictConfig

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

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    try:
        validate(cfg, command)
        module = importlib.import_module(f"bigmodel_cli.commands.{command}")
        return module.run(cfg, run_dir)
    except UsageError as exc:
        log.error("error: %s", exc)
        if multirun or full_error:
            raise
        raise SystemExit(EXIT_USAGE) from None
    except Interrupted as exc:
        log.error("interrupted (%s); the last checkpoint and the metrics so far are saved in %s",
                  exc, run_dir)
        if command == "finetune":
            log.error("resume with: bigmodel finetune trainer.resume=%s", run_dir)
        if multirun:
            raise
        raise SystemExit(exc.exit_code) from None
    except NonFiniteLoss as exc:
        log.error("error: %s", exc)
        if multirun or full_error:
            raise
        raise SystemExit(EXIT_FAILED) from None
    except KeyboardInterrupt:
        log.error("interrupted; everything written so far is kept in %s", run_dir)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if multirun or full_error:
            raise
        log.debug("traceback", exc_info=True)  # into the log file only
        log.error("error: the %s job failed: %s: %s", command, type(exc).__name__, exc)
        log.error("the full traceback is in %s (or set HYDRA_FULL_ERROR=1)",
                  run_dir / f"{command}.log")
        raise SystemExit(EXIT_FAILED) from None


def _hydra_app(command: str):
    @hydra.main(version_base=None, config_path=conf_dir(), config_name=command)
    def task(cfg: DictConfig) -> Any:
        return run_command(command, cfg)

    task.__name__ = task.__qualname__ = command
    task.__module__ = __name__
    return task


finetune = _hydra_app("finetune")
evaluate = _hydra_app("evaluate")
predict = _hydra_app("predict")

if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `bigmodel` command")
