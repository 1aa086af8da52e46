"""The benchmark report: every section's result with the commit and UTC date it was measured at.

A run of some sections (`--only`) merges into the report that is there: the other sections
keep their results and stamps and are marked as not re-run. outputs/bench/report.json:

    {"format": 2, "smoke": false,
     "latest_run": {"commit", "date", "sections", "machine", "load_average", "python", ...},
     "sections": {NAME: {"measured": {"commit", "date", "load_average", "duration_s"},
                         "result": {... "targets": {target: PASS|MISS}}}}}
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

FORMAT = 2


def commit(root: Path) -> str:
    """`git rev-parse --short HEAD`, plus "-dirty" when the work tree has changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        return head + ("-dirty" if git("status", "--porcelain") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def load(path: Path, smoke: bool) -> dict:
    """The sections of the report at `path` that a new run may merge into (none for smoke runs).

    A report written before stamps existed (no "format") is taken with commit "unknown"."""
    if smoke or not path.is_file():
        return {}
    old = json.loads(path.read_text())
    if old.get("format") == FORMAT:
        return {} if old["smoke"] else old["sections"]
    if old.get("quick"):
        return {}
    measured = {"commit": "unknown", "date": f"{old.get('date')} (local time)",
                "load_average": old.get("load_average")}
    skip = {"quick", "date", "machine", "load_average", "python", "bigmodel", "data_dir", "targets"}
    return {name: {"measured": measured, "result": result}
            for name, result in old.items() if name not in skip and isinstance(result, dict)}


def merge(old_sections: dict, new_sections: dict, latest_run: dict, known: list[str],
          smoke: bool) -> dict:
    """The report: the new sections, and the old ones this run did not re-run (in `known` order)."""
    sections = {**old_sections, **new_sections}
    return {"format": FORMAT, "smoke": smoke, "latest_run": latest_run,
            "sections": {name: sections[name] for name in known if name in sections}}


def when(measured: dict) -> str:
    date = measured["date"]
    if date.endswith("Z"):  # 2026-12-01T21:40:12Z -> 2026-12-01 21:40 UTC
        date = date[:16].replace("T", " ") + " UTC"
    return f"measured at {measured['commit']} on {date}"


def stamp_line(name: str, entry: dict, latest: dict) -> str:
    text = f"{name}: {when(entry['measured'])}"
    if name not in latest["sections"]:
        text += f", not re-run by the latest run ({latest['commit']}, {latest['date'][:10]})"
    load = entry["measured"].get("load_average")
    if load and load[0] >= 1.0:
        text += f"; load average {load[0]} at its start (timings may be inflated)"
    return f"_{text}._"


def markdown(report: dict, modules) -> str:
    """The report as Markdown: a part per section module, each line of figures with its stamp."""
    latest, sections = report["latest_run"], report["sections"]
    title = "# bigmodel benchmarks"
    if report["smoke"]:
        title += (": SMOKE RUN (every section at a trivial size, to check the benchmark code; "
                  "these figures are not benchmark results)")
    lines = [title, "", f"Latest run: `{latest['command']}` at {latest['commit']} on "
             f"{latest['date'][:16].replace('T', ' ')} UTC · {latest['machine']} · load average "
             f"{latest['load_average']} at start · Python {latest['python']}", ""]
    for module in modules:
        present = [name for name in module.NAMES if name in sections]
        if not present:
            continue
        lines += [f"## {module.TITLE}", ""]
        lines += [stamp_line(name, sections[name], latest) for name in present] + [""]
        lines += module.markdown({name: sections[name]["result"] for name in present}) + [""]
    lines += ["## Targets", ""]
    for name, entry in sections.items():
        for target, status in entry["result"].get("targets", {}).items():
            lines.append(f"- {status}: {name}: {target} ({when(entry['measured'])})")
    return "\n".join(lines) + "\n"
