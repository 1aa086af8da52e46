"""The benchmark runner (bench/run.py): the report stamps each section with the commit and date
it was measured at, an --only run merges into the report and marks the others as not re-run,
and --smoke runs write apart from the report. No benchmark is run at its real size here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]


def bench_report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entry(commit: str, date: str, value: float) -> dict:
    return {"measured": {"commit": commit, "date": date, "load_average": [0.1, 0.1, 0.1]},
            "result": {"value": value, "targets": {"value >= 1": "PASS" if value >= 1 else "MISS"}}}


# A section module as bench/sections/ has them: names, a title, and its part of the report.
SECTION = SimpleNamespace(NAMES=("a", "b", "c"), TITLE="Numbers",
                          markdown=lambda results: [f"- {n}: {r['value']}" for n, r in results.items()])


def test_an_only_run_keeps_and_marks_the_sections_it_did_not_re_run():
    report = bench_report()
    old = report.merge({}, {"a": entry("1111111", "2026-11-30T10:00:00Z", 2.0),
                            "b": entry("1111111", "2026-11-30T10:05:00Z", 0.5)},
                       {"commit": "1111111", "date": "2026-11-30T10:00:00Z", "sections": ["a", "b"]},
                       ["a", "b", "c"], smoke=False)
    latest = {"command": "bench/run.py --only b", "commit": "2222222-dirty",
              "date": "2026-12-01T09:00:00Z", "sections": ["b"], "machine": "x86_64",
              "load_average": [0.1, 0.1, 0.1], "python": "3.11"}
    merged = report.merge(old["sections"], {"b": entry("2222222-dirty", "2026-12-01T09:00:00Z", 3.0)},
                          latest, ["a", "b", "c"], smoke=False)
    assert list(merged["sections"]) == ["a", "b"]
    assert merged["sections"]["a"] == old["sections"]["a"]  # result and stamp kept as they were
    assert merged["sections"]["b"]["result"]["value"] == 3.0
    text = report.markdown(merged, [SECTION])
    assert ("_a: measured at 1111111 on 2026-11-30 10:00 UTC, not re-run by the latest run "
            "(2222222-dirty, 2026-12-01)._") in text
    assert "_b: measured at 2222222-dirty on 2026-12-01 09:00 UTC._" in text
    assert "- PASS: b: value >= 1 (measured at 2222222-dirty on 2026-12-01 09:00 UTC)" in text
    assert "- PASS: a: value >= 1 (measured at 1111111 on 2026-11-30 10:00 UTC)" in text
    assert "SMOKE" not in text


def test_smoke_reports_never_merge_and_old_reports_get_an_unknown_commit(tmp_path):
    report = bench_report()
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"quick": False, "date": "2026-11-30 12:00:00", "targets": {},
                                "gpt": {"command": "bigmodel pretrain ...", "steps": 1200}}))
    assert report.load(path, smoke=True) == {}
    assert report.load(path, smoke=False) == {"gpt": {
        "measured": {"commit": "unknown", "date": "2026-11-30 12:00:00 (local time)",
                     "load_average": None},
        "result": {"command": "bigmodel pretrain ...", "steps": 1200}}}


def test_commit_is_the_short_head_plus_dirty():
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert bench_report().commit(ROOT) == head + ("-dirty" if dirty else "")
    assert bench_report().commit(Path("/")) == "unknown"


def test_smoke_run_of_a_section_writes_its_own_labelled_report(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--only",
                           "startup", "--out", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not (tmp_path / "report.json").exists()  # the real report is not touched
    saved = json.loads((tmp_path / "smoke" / "report.json").read_text())
    assert saved["smoke"] is True and list(saved["sections"]) == ["startup"]
    startup = saved["sections"]["startup"]
    assert startup["measured"]["commit"] == bench_report().commit(ROOT)
    codes = {c["command"]: c["exit_codes"] for c in startup["result"]["commands"].values()}
    assert codes == {"bigmodel --help": [0], "bigmodel finetune --cfg job": [0],
                     "bigmodel finetune optimizer.lr=abc": [2]}
    assert set(startup["result"]["targets"].values()) == {"n/a (smoke)"}
    text = (tmp_path / "smoke" / "report.md").read_text()
    assert text.startswith("# bigmodel benchmarks: SMOKE RUN")
