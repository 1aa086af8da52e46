"""Run directories: finding the run to resume, recording how a run was started and ended,
and listing every run under a folder (`bigmodel runs DIR`).

Imports nothing heavy: the CLI uses `find_resume_run` before Hydra starts, so that a
resumed run continues in its own directory, and the listing reads only small files.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import UsageError
from bigmodel_cli.jsonfiles import write_json

SHARDED_INDEX = "sharded/.metadata"  # trainer.strategy=fsdp: last/ holds sharded weights


def has_weights(path: Path) -> bool:
    """The full weights, or (trainer.strategy=fsdp's last/) their shards."""
    return (path / "model.safetensors").is_file() or (path / SHARDED_INDEX).is_file()


def is_checkpoint(path: Path) -> bool:
    return has_weights(path) and (path / "meta.json").is_file()


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
    if is_checkpoint(path):
        return path.parent.parent if path.parent.name == "checkpoints" else path
    if (path / "checkpoints").is_dir():
        return path
    raise UsageError(f"trainer.resume={value}: not a run directory or a checkpoint directory")


def resume_checkpoint(value: str, run_dir: Path) -> Path:
    """The checkpoint directory to resume from (with its training state)."""
    path = Path(value).expanduser()
    if value == "auto":
        path = run_dir
    ckpt = path if has_weights(path) else path / "checkpoints" / "last"
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
    # pid and host: until the run records how it ended, `bigmodel runs` tells a running one
    # from one whose process is gone.
    entry = {"command": " ".join([program, *map(shlex.quote, argv)]), "argv": argv,
             "cwd": os.getcwd(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "pid": os.getpid(), "host": socket.gethostname(),
             "resumed": resumed, "git_commit": commit, "git_dirty": dirty, "versions": versions()}
    path = run_dir / "run.json"
    history = json.loads(path.read_text(encoding="utf-8"))["invocations"] if path.is_file() else []
    write_json(path, {"invocations": [*history, entry]})


def record_status(run_dir: Path, status: str, error: str = "") -> None:
    """Mark how the latest invocation of a run ended (ok, failed, interrupted, paused).
    Rank 0 alone writes it, as it alone recorded the invocation: ranks ending together
    would otherwise race on the same file."""
    from bigmodel_cli.engine.distributed import world

    if world()[0] != 0:
        return
    path = run_dir / "run.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        data = {}
    invocations = data.get("invocations") or [{"command": " ".join(sys.argv)}]
    invocations[-1].update(status=status, error=error)
    write_json(path, {"invocations": invocations})


# ---------------------------------------------------------------------------------------
# Listing: every run under a folder, one row each, from the small files a run writes
# (run.json, metrics.json, .hydra/hydra.yaml, the last line of metrics.jsonl). A file that
# is missing, half-written or not what it should be makes the row's status `unknown`; it
# never stops the listing.

STATUSES = ("ok", "failed", "interrupted", "paused", "running", "unknown")


def find_runs(root: Path) -> list[Path]:
    """Every run directory under `root` (itself included): a directory with `.hydra/` or
    `run.json`. Runs hold no runs, so their subdirectories are not searched."""
    found, stack = [], [str(root)]
    while stack:
        path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        names = {e.name for e in entries}
        if ".hydra" in names or "run.json" in names:
            found.append(Path(path))
            continue
        stack.extend(e.path for e in entries
                     if not e.name.startswith(".") and e.is_dir(follow_symlinks=False))
    return found


class _Unreadable(Exception):
    """A run file that exists but cannot be read as what it should be."""


def _json_file(path: Path, kind: type = dict) -> Any:
    """The JSON in `path` (None when the file is missing)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise _Unreadable(f"{path.name}: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise _Unreadable(f"{path.name} is not valid JSON (half-written?)") from None
    if not isinstance(data, kind):
        raise _Unreadable(f"{path.name} holds a {type(data).__name__}, not a {kind.__name__}")
    return data


# Hydra writes .hydra/hydra.yaml with two-space indents: `hydra:` at the top, then `mode`,
# `job.name` and `runtime.choices`. A YAML parser takes about a millisecond per file, too
# long for a thousand runs; these three patterns take microseconds.
_MODE = re.compile(r"^  mode: (.*)$", re.M)
_JOB_NAME = re.compile(r"^  job:\n(?:    .*\n)*?    name: (.*)$", re.M)
_CHOICES = re.compile(r"^    choices:\n((?:      .*(?:\n|$))*)", re.M)


def hydra_facts(text: str) -> dict[str, Any]:
    """What a run's .hydra/hydra.yaml says: `mode` (RUN or MULTIRUN), the job `name` (the
    command) and the config `choices` (`model: lstm`, `data: news`, ...)."""
    def scalar(match: re.Match | None) -> str | None:
        return match.group(1).strip().strip("'\"") if match else None

    choices = {}
    block = _CHOICES.search(text)
    for line in block.group(1).splitlines() if block else ():
        key, _, value = line.strip().partition(": ")
        choices[key] = value.strip("'\"")
    return {"mode": scalar(_MODE.search(text)), "name": scalar(_JOB_NAME.search(text)),
            "choices": choices}


def _last_record(path: Path) -> dict:
    """The last complete line of metrics.jsonl: the progress of a run without metrics.json."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            lines = fh.read().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        return record if isinstance(record, dict) else {}
    return {}


def _process_alive(pid: Any, host: Any) -> bool | None:
    """Whether the process that started a run still runs (None: it ran on another host)."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OSError, ValueError, TypeError, OverflowError):
        return False
    return True


def _status(run: dict | None, metrics: dict | None) -> tuple[str, str]:
    """How the latest invocation ended, from run.json (and metrics.json for old runs)."""
    if run is None:  # runs from before run.json
        return ("ok", "") if metrics else ("unknown", "no run.json (starting, running or killed)")
    invocations = run.get("invocations")
    if not isinstance(invocations, list) or not invocations or not isinstance(invocations[-1], dict):
        return "unknown", "run.json has no invocations"
    last = invocations[-1]
    status, error = last.get("status"), str(last.get("error") or "")
    if status is not None:
        return (status, error) if status in STATUSES else ("unknown", f"status {status!r}")
    if "pid" not in last:
        return "unknown", "no end recorded"
    alive = _process_alive(last.get("pid"), last.get("host"))
    if alive is False:
        return "unknown", f"no end recorded and its process ({last.get('pid')}) is gone"
    return "running", "" if alive else f"on {last.get('host')}"


def _started(run: dict | None, run_dir: Path) -> float:
    """When the run started: run.json's first invocation, else when Hydra set it up."""
    try:
        started = run["invocations"][0]["started"]
        try:
            return datetime.fromisoformat(started).timestamp()
        except ValueError:  # Python 3.10 reads no `+0000`
            return datetime.strptime(started, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (TypeError, KeyError, IndexError, ValueError):
        pass
    for path in (run_dir / ".hydra" / "hydra.yaml", run_dir):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0


def _read_facts(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ".hydra" / "hydra.yaml"
    try:
        return hydra_facts(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"mode": None, "name": None, "choices": {}}
    except (OSError, UnicodeDecodeError) as exc:
        raise _Unreadable(f"{path.name}: {exc}") from None


def _config_run(run_dir: Path) -> str | None:
    """The `run:` an evaluate or predict run used (a top-level key of .hydra/config.yaml)."""
    try:
        text = (run_dir / ".hydra" / "config.yaml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        if line.startswith("run: "):
            return line[5:].strip().strip("'\"")
    return None


def _source_facts(source: str | None, memo: dict) -> tuple[dict, dict]:
    """The hydra facts and metrics.json of the run an evaluate/predict run used."""
    if not source:
        return {"choices": {}}, {}
    if source not in memo:
        path = Path(source)
        try:
            memo[source] = (_read_facts(path), _json_file(path / "metrics.json") or {})
        except _Unreadable:  # the used run's files are its own row's concern
            memo[source] = ({"choices": {}}, {})
    return memo[source]


def _metric(values: Any, name: Any) -> Any:
    value = values.get(name) if isinstance(values, dict) and isinstance(name, str) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def run_row(run_dir: Path, memo: dict | None = None) -> dict:
    """One listing row for `run_dir`; never raises (what cannot be read is left out and the
    status is `unknown`, with the reason in `error`)."""
    memo = {} if memo is None else memo
    row: dict[str, Any] = {"started": None, "command": None, "model": None, "data": None,
                           "status": "unknown", "error": "", "monitor": None, "val": None,
                           "test": None, "steps": None, "time_s": None, "run_dir": str(run_dir),
                           "sweep": None, "started_ts": _started(None, run_dir)}
    try:
        _fill_row(row, run_dir, memo)
    except _Unreadable as exc:
        row.update(status="unknown", error=str(exc))
    except Exception as exc:  # a run dir is not ours to trust; the listing goes on
        row.update(status="unknown", error=f"{type(exc).__name__}: {exc}")
    row["started"] = datetime.fromtimestamp(row["started_ts"]).strftime("%Y-%m-%d %H:%M:%S")
    return row


def _fill_row(row: dict, run_dir: Path, memo: dict) -> None:
    facts = _read_facts(run_dir)
    row["command"] = facts["name"]
    if facts["mode"] == "MULTIRUN":
        row["sweep"] = str(run_dir.parent)
    run = _json_file(run_dir / "run.json")
    row["started_ts"] = _started(run, run_dir)
    metrics = _json_file(run_dir / "metrics.json")
    row["status"], row["error"] = _status(run, metrics)
    metrics = metrics or {}
    row["command"] = row["command"] or metrics.get("command")
    own, source_metrics = facts["choices"], {}
    if "model" not in own:  # evaluate and predict: the model and data of the run they used
        source_facts, source_metrics = _source_facts(
            metrics.get("run") or _config_run(run_dir), memo)
        own = {**source_facts["choices"], **own}
    row["model"] = own.get("model") or metrics.get("model")
    row["data"] = own.get("data") or metrics.get("data")
    monitor = metrics.get("monitor") or source_metrics.get("monitor")
    row["val"] = _metric(metrics.get("best_validation"), monitor)
    row["test"] = _metric(metrics.get("test") or metrics.get("metrics"), monitor)
    if row["val"] is not None or row["test"] is not None:
        row["monitor"] = monitor
    progress = {} if metrics else _last_record(run_dir / "metrics.jsonl")
    row["steps"] = _metric(metrics, "steps") or _metric(progress, "step")
    row["time_s"] = (_metric(metrics, "total_time_s") or _metric(metrics, "train_time_s")
                     or _metric(progress, "time"))


def list_runs(root: Path, filters: dict[str, list[str]] | None = None,
              limit: int | None = None) -> list[dict]:
    """The rows of every run under `root`, newest first; `filters` keeps the rows whose
    command/model/data/status is one of the values given for it."""
    memo: dict = {}
    rows = [run_row(path, memo) for path in find_runs(root)]
    for key, wanted in (filters or {}).items():
        if wanted:
            rows = [r for r in rows if r[key] in wanted]
    rows.sort(key=lambda r: (r["started_ts"], r["run_dir"]), reverse=True)
    for r in rows:
        del r["started_ts"]
    return rows[:limit] if limit is not None else rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_runs(rows: list[dict], title: str) -> str:
    """A plain text table (rich takes seconds to lay out a thousand rows)."""
    heads = ("started", "command", "model", "data", "status", "metric", "val", "test", "steps",
             "time s", "run dir")
    right = {"val", "test", "steps", "time s"}
    cells = [[r["started"], _cell(r["command"]), _cell(r["model"]), _cell(r["data"]),
              r["status"] + (f": {r['error'][:60]}" if r["error"] else ""), _cell(r["monitor"]),
              _cell(r["val"]), _cell(r["test"]), _cell(r["steps"]), _seconds(r["time_s"]),
              r["run_dir"]] for r in rows]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(heads)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if h in right else v.ljust(w)
                         for v, w, h in zip(values, widths, heads)).rstrip()

    return "\n".join([title, line(list(heads)), line(["-" * w for w in widths]),
                      *(line(c) for c in cells)])
