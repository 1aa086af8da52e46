"""Sweep summaries: one row per job of a multirun, as summary.csv / summary.json in the sweep
directory and a table sorted by the monitored metric, best first.

`SweepSummary` is a Hydra callback (configured in conf/common.yaml) that runs when a
multirun ends; `bigmodel report DIR` rebuilds the same table at any time. Imports nothing
heavy.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

# Set when a multirun ended with a failed job: the CLI then exits 1.
sweep_failed = False

COLUMNS = ("job", "overrides", "status", "error", "monitor", "value", "test_accuracy",
           "test_f1_macro", "val_accuracy", "steps", "train_time_s", "run_dir")


def _read_json(path: Path) -> dict | None:
    """A JSON object from `path`; None when it is missing, half-written or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    try:
        return [str(o) for o in OmegaConf.load(path)]
    except Exception:  # half-written: the row still shows status and metrics
        return []


def job_row(job: Path) -> dict:
    """What one run directory says about itself: status, error, metrics."""
    run = _read_json(job / "run.json") or {}
    invocations = run.get("invocations")
    last = invocations[-1] if isinstance(invocations, list) and invocations else {}
    last = last if isinstance(last, dict) else {}
    metrics = _read_json(job / "metrics.json")
    status = last.get("status") or ("ok" if metrics else "unfinished")
    row: dict[str, Any] = {"job": job.name, "overrides": " ".join(_overrides(job)),
                           "status": status, "error": last.get("error", ""), "run_dir": str(job)}
    if metrics:
        monitor = metrics.get("monitor", "")
        best = metrics.get("best_validation") or {}
        test = metrics.get("test") or {}
        row.update(monitor=monitor, monitor_mode=metrics.get("monitor_mode", "max"),
                   value=best.get(monitor), test_accuracy=test.get("accuracy"),
                   test_f1_macro=test.get("f1_macro"), val_accuracy=best.get("accuracy"),
                   steps=metrics.get("steps"), train_time_s=metrics.get("train_time_s"),
                   final_metrics={"best_validation": best, "test": test or None})
    return row


def _sort_key(row: dict) -> tuple:
    value = row.get("value")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (1, 0.0, row["job"])
    sign = -1.0 if row.get("monitor_mode", "max") == "max" else 1.0
    return (0, sign * value, _job_number(row["job"]))


def _job_number(name: str) -> int:
    return int(name) if name.isdigit() else 0


def collect(sweep_dir: Path) -> list[dict]:
    jobs = [p for p in Path(sweep_dir).iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    return sorted((job_row(j) for j in jobs), key=_sort_key)


def write_summary(sweep_dir: Path, rows: list[dict]) -> None:
    with open(sweep_dir / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (sweep_dir / "summary.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _varying_overrides(rows: list[dict]) -> set[str]:
    """The overrides that differ between jobs (the swept ones); shared ones are noise."""
    sets = [set(r["overrides"].split()) for r in rows]
    if len(sets) < 2:
        return set().union(*sets) if sets else set()
    return set().union(*sets) - set.intersection(*sets)


def console_for(stderr: bool = False):
    """A rich console; wide when the output is not a terminal, so tables do not wrap in logs."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 200)


def print_table(rows: list[dict], title: str, console=None) -> None:
    from rich.table import Table

    console = console or console_for()
    monitor = next((r["monitor"] for r in rows if r.get("monitor")), "monitor")
    table = Table(title=title)
    for name in ("job", "overrides", "status", monitor, "test acc", "test F1", "steps", "train s"):
        table.add_column(name, justify="right" if name not in ("overrides", "status") else "left")
    varying = _varying_overrides(rows)
    for r in rows:
        status = r["status"] + (f": {r['error']}" if r.get("error") else "")
        shown = " ".join(o for o in r["overrides"].split() if o in varying) or r["overrides"]
        table.add_row(r["job"], shown, status, _fmt(r.get("value")),
                      _fmt(r.get("test_accuracy")), _fmt(r.get("test_f1_macro")),
                      _fmt(r.get("steps")), _fmt(r.get("train_time_s")))
    console.print(table)


def summarize(sweep_dir: Path, console=None) -> list[dict]:
    rows = collect(sweep_dir)
    write_summary(sweep_dir, rows)
    failed = sum(r["status"] != "ok" for r in rows)
    print_table(rows, f"sweep {sweep_dir}: {len(rows)} jobs, {failed} not ok (best first)",
                console)
    return rows


class SweepSummary(Callback):
    """Writes summary.csv/json and prints the table when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        global sweep_failed
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = summarize(sweep_dir, console_for(stderr=True))
        sweep_failed = any(r["status"] != "ok" for r in rows)
        print(sweep_dir / "summary.csv", flush=True)  # stdout: where the summary is
