"""Run directories: finding the run to resume, and recording how a run was started.

Imports nothing heavy: the CLI uses `find_resume_run` before Hydra starts, so that a
resumed run continues in its own directory.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bigmodel_cli.errors import UsageError
from bigmodel_cli.jsonfiles import write_json

CHECKPOINT_FILES = ("model.safetensors", "meta.json")


def _unfinished(run: Path) -> bool:
    return (run / "checkpoints" / "last" / "state.pt").is_file() and not (run / "metrics.json").is_file()


def find_resume_run(value: str, outputs: Path = Path("outputs") / "finetune") -> Path:
    """The run directory that `trainer.resume=value` continues.

    `auto`: the most recent unfinished run (a `last` checkpoint with training state, no
    final metrics.json) under outputs/<command>/. A run dir or a checkpoint dir: its run."""
    if value == "auto":
        runs = sorted((p for p in outputs.glob("*/*") if p.is_dir()), reverse=True)
        for run in runs:
            if _unfinished(run):
                return run
        raise UsageError(f"trainer.resume=auto: no unfinished run under {outputs}/ (one with "
                         "checkpoints/last/state.pt and no metrics.json); name one: "
                         f"trainer.resume={outputs}/<date>/<time>")
    path = Path(value).expanduser()
    if all((path / f).is_file() for f in CHECKPOINT_FILES):
        return path.parent.parent if path.parent.name == "checkpoints" else path
    if (path / "checkpoints").is_dir():
        return path
    raise UsageError(f"trainer.resume={value}: not a run directory or a checkpoint directory")


def resume_checkpoint(value: str, run_dir: Path) -> Path:
    """The checkpoint directory to resume from (with its training state)."""
    path = Path(value).expanduser()
    if value == "auto":
        path = run_dir
    ckpt = path if (path / "model.safetensors").is_file() else path / "checkpoints" / "last"
    if not (ckpt / "state.pt").is_file():
        raise UsageError(f"trainer.resume={value}: {ckpt} has no training state (state.pt); "
                         "only a run's checkpoints/last can be resumed")
    return ckpt


def _git_commit() -> tuple[str | None, bool | None]:
    """The project's git commit and whether the work tree differs, when it is a checkout."""
    here = Path(__file__).resolve().parent.parent
    if not (here / ".git").exists():
        return None, None
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip() != ""
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def record_invocation(run_dir: Path, resumed: bool = False) -> None:
    """Append how this run was started to run.json: the command line, working directory,
    git commit of the project, versions. A resumed run adds an entry."""
    from bigmodel_cli.engine.runtime import versions

    commit, dirty = _git_commit()
    argv = sys.argv[1:]
    program = sys.argv[0] if sys.argv and sys.argv[0].startswith("bigmodel") else "bigmodel"
    entry = {"command": " ".join([program, *map(shlex.quote, argv)]), "argv": argv,
             "cwd": os.getcwd(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "resumed": resumed, "git_commit": commit, "git_dirty": dirty, "versions": versions()}
    path = run_dir / "run.json"
    history = json.loads(path.read_text(encoding="utf-8"))["invocations"] if path.is_file() else []
    write_json(path, {"invocations": [*history, entry]})


def record_status(run_dir: Path, status: str, error: str = "") -> None:
    """Mark how the latest invocation of a run ended (ok, failed, interrupted, paused)."""
    path = run_dir / "run.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        data = {}
    invocations = data.get("invocations") or [{"command": " ".join(sys.argv)}]
    invocations[-1].update(status=status, error=error)
    write_json(path, {"invocations": invocations})
