"""`bigmodel runs DIR`: every run under a folder, one row each, newest first.

The thousand run directories are made from one real finetune run and one real evaluate run
of it: their small files (run.json, metrics.json, metrics.jsonl, .hydra/*.yaml, the log)
are copied and adapted (command, model, data, status, metrics, start time), the large ones
(checkpoints, plots, tokenizer) hard-linked. What each one was made to say is the truth the
listing is checked against.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import read_json, run_dir_of

from bigmodel_cli.runs import find_runs, list_runs, run_row

N_RUNS = 1000
SMALL = {"run.json", "metrics.json", "metrics.jsonl", "finetune.log", "evaluate.log",
         ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"}
MODELS = ("lstm", "fasttext", "bert_tiny", "cnn")
DATA = ("news", "sst2", "ag_news")


@pytest.fixture(scope="module")
def templates(session_cli, news_lstm_run) -> tuple[Path, Path]:
    """A real finetune run and a real evaluate run of it."""
    result = session_cli("evaluate", f"run={news_lstm_run}")
    return news_lstm_run, run_dir_of(result, session_cli.cwd)


def _copy_run(template: Path, dest: Path, adapt: dict[str, callable]) -> None:
    """The template's files in `dest`: small ones copied through `adapt` (by relative
    path; returning None leaves the file out), the others hard-linked."""
    for src in template.rglob("*"):
        if src.is_dir():
            continue
        rel = src.relative_to(template).as_posix()
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel in SMALL:
            text = src.read_text(encoding="utf-8")
            text = adapt[rel](text) if rel in adapt else text
            if text is not None:
                out.write_text(text, encoding="utf-8")
        else:
            try:
                os.link(src, out)
            except OSError:
                shutil.copy(src, out)


def _choices(text: str, command: str, model: str, data: str, multirun: bool) -> str:
    lines = []
    for line in text.splitlines():
        if line == "    name: finetune":
            line = f"    name: {command}"
        elif line.startswith("      model: "):
            line = f"      model: {model}"
        elif line.startswith("      data: "):
            line = f"      data: {data}"
        elif line == "  mode: RUN" and multirun:
            line = "  mode: MULTIRUN"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_runs(root: Path, finetune: Path, evaluate: Path, n: int) -> list[dict]:
    """`n` run directories under `root`; returns what each one says (its expected row)."""
    rng = random.Random(0)
    base = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
    records = [json.loads(line) for line in (finetune / "metrics.jsonl").read_text().splitlines()]
    dead = _dead_pid()
    truth = []
    order = list(range(n))
    rng.shuffle(order)  # made in another order than they started
    for i in order:
        started = base + timedelta(minutes=7 * i)
        if i % 10 == 9:
            truth.append(_evaluate_run(root, evaluate, finetune, started, i))
        else:
            truth.append(_training_run(root, finetune, records, rng, dead, started, i))
    return truth


def _training_run(root: Path, finetune: Path, records: list[dict], rng: random.Random, dead: int,
                  started: datetime, i: int) -> dict:
    """Run `i`: a finetune or pretrain run copied from `finetune`, with its own status, start,
    figures and truncated metrics.jsonl; returns its expected row."""
    stamp = started.strftime("%Y-%m-%dT%H:%M:%S%z")
    command = "pretrain" if i % 10 == 8 else "finetune"
    model, data = MODELS[i % 4], DATA[i % 3]
    status = ("ok", "ok", "ok", "failed", "ok", "interrupted", "paused", "ok",
              "running", "unknown")[(i // 10) % 10]
    sweep = i % 5 == 2  # a job of one of ten sweeps
    day, clock = started.strftime("%Y-%m-%d"), started.strftime("%H-%M-%S")
    run_dir = (root / command / "multirun" / "2026-11-01" / f"08-00-{i // 100:02d}" / str(i)
               if sweep else root / command / day / clock)
    val, test, steps, secs = round(rng.random(), 4), round(rng.random(), 4), rng.randint(5, 900), round(rng.uniform(1, 900), 3)
    kept = rng.randint(1, len(records) - 1)  # metrics.jsonl lines written before the end

    def run_json(text, status=status, stamp=stamp):
        run = json.loads(text)
        entry = run["invocations"][0]
        entry.update(started=stamp, host=socket.gethostname())
        entry.pop("status", None), entry.pop("error", None)
        if status == "running":
            entry["pid"] = os.getpid()  # this test's own process: alive
        elif status == "unknown":
            entry["pid"] = dead
        else:
            entry.update(status=status, error="ValueError: boom" if status == "failed" else "")
        return json.dumps(run, indent=2)

    def metrics_json(text, status=status, val=val, test=test, steps=steps, secs=secs,
                     command=command):
        if status != "ok":
            return None
        metrics = json.loads(text)
        metrics["best_validation"]["accuracy"], metrics["test"]["accuracy"] = val, test
        metrics.update(steps=steps, total_time_s=secs, command=command)
        return json.dumps(metrics, indent=2)

    def jsonl(text, kept=kept):
        return "\n".join(text.splitlines()[:kept]) + "\n"

    _copy_run(finetune, run_dir, {
        "run.json": run_json, "metrics.json": metrics_json, "metrics.jsonl": jsonl,
        ".hydra/hydra.yaml": lambda t, c=command, m=model, d=data, s=sweep: _choices(t, c, m, d, s)})
    ok = status == "ok"
    return {
        "started": started.timestamp(), "command": command, "model": model, "data": data,
        "status": status, "monitor": "accuracy" if ok else None,
        "val": val if ok else None, "test": test if ok else None,
        "steps": steps if ok else records[kept - 1]["step"],
        "time_s": secs if ok else records[kept - 1]["time"],
        "run_dir": str(run_dir), "sweep": str(run_dir.parent) if sweep else None}


def _evaluate_run(root: Path, evaluate: Path, source: Path, started: datetime, i: int) -> dict:
    run_dir = root / "evaluate" / started.strftime("%Y-%m-%d") / started.strftime("%H-%M-%S")
    _copy_run(evaluate, run_dir, {})
    os.utime(run_dir / ".hydra" / "hydra.yaml", (started.timestamp(), started.timestamp()))
    metrics = read_json(evaluate / "metrics.json")
    source_choices = run_row(source)
    return {"started": started.timestamp(), "command": "evaluate",
            "model": source_choices["model"], "data": source_choices["data"], "status": "ok",
            "monitor": "accuracy", "val": None, "test": metrics["metrics"]["accuracy"],
            "steps": None, "time_s": None, "run_dir": str(run_dir), "sweep": None}


def make_corrupt_runs(root: Path, finetune: Path) -> dict[str, str]:
    """Half-written and broken runs: directory -> what the error names."""
    cases = {
        "truncated_run_json": ("run.json", lambda t: t[: len(t) // 2], "run.json"),
        "list_run_json": ("run.json", lambda t: "[1, 2]", "run.json"),
        "truncated_metrics": ("metrics.json", lambda t: t[:40], "metrics.json"),
        "binary_hydra_yaml": (".hydra/hydra.yaml", lambda t: "\udcff", "hydra.yaml"),
    }
    expected = {}
    for name, (rel, spoil, mention) in cases.items():
        run_dir = root / "broken" / name
        _copy_run(finetune, run_dir, {})
        path = run_dir / rel
        path.write_bytes(spoil(path.read_text(encoding="utf-8")).encode("utf-8", "surrogateescape"))
        expected[str(run_dir)] = mention
    empty = root / "broken" / "only_hydra_dir"
    (empty / ".hydra").mkdir(parents=True)
    expected[str(empty)] = "run.json"
    return expected


@pytest.fixture(scope="module")
def many_runs(templates, tmp_path_factory) -> tuple[Path, list[dict], dict[str, str]]:
    root = tmp_path_factory.mktemp("many") / "outputs"
    start = time.perf_counter()
    truth = make_runs(root, *templates, N_RUNS)
    broken = make_corrupt_runs(root, templates[0])
    print(f"\nmade {len(truth) + len(broken)} run directories in {time.perf_counter() - start:.1f} s")
    return root, truth, broken


FIELDS = ("command", "model", "data", "status", "monitor", "val", "test", "steps", "time_s",
          "sweep")


def test_a_thousand_runs_are_listed_newest_first(many_runs):
    root, truth, broken = many_runs
    start = time.perf_counter()
    rows = list_runs(root)
    took = time.perf_counter() - start
    print(f"\nlisted {len(rows)} runs in {took:.2f} s (in-process; this machine is shared)")
    assert len(rows) == len(truth) + len(broken)
    by_dir = {r["run_dir"]: r for r in rows}
    for want in truth:
        got = by_dir[want["run_dir"]]
        assert {k: got[k] for k in FIELDS} == {k: want[k] for k in FIELDS}, want["run_dir"]
    listed = [r["run_dir"] for r in rows if r["run_dir"] not in broken]
    assert listed == [t["run_dir"] for t in sorted(truth, key=lambda t: -t["started"])]
    assert {r["status"] for r in rows} == {"ok", "failed", "interrupted", "paused", "running",
                                           "unknown"}
    assert took < 30  # generous: the aim is under 2 s; a pathological slowdown still fails


def test_half_written_and_corrupt_runs_are_unknown(many_runs):
    root, _, broken = many_runs
    rows = {r["run_dir"]: r for r in list_runs(root / "broken")}
    assert set(rows) == set(broken)
    for run_dir, mention in broken.items():
        assert rows[run_dir]["status"] == "unknown" and mention in rows[run_dir]["error"], rows[run_dir]


def test_runs_command_filters_limit_and_json(cli, many_runs):
    root, truth, _ = many_runs
    start = time.perf_counter()
    result = cli("runs", str(root), "--json")
    took = time.perf_counter() - start
    print(f"\n`bigmodel runs DIR --json` over {len(truth)} runs: {took:.2f} s (the whole process)")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == list_runs(root)

    result = cli("runs", str(root), "--status", "failed,interrupted", "--model", "lstm", "--json")
    got = {r["run_dir"] for r in json.loads(result.stdout)}
    assert got == {t["run_dir"] for t in truth
                   if t["status"] in ("failed", "interrupted") and t["model"] == "lstm"} != set()

    result = cli("runs", str(root), "--command", "evaluate", "--data", "news", "--json")
    assert {r["run_dir"] for r in json.loads(result.stdout)} == {
        t["run_dir"] for t in truth if t["command"] == "evaluate"}

    result = cli("runs", str(root), "--limit", "5", "--command", "finetune", "--status", "ok")
    newest = sorted((t for t in truth if t["command"] == "finetune" and t["status"] == "ok"),
                    key=lambda t: -t["started"])
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 3 + 5 and lines[1].split()[:3] == [
        "started", "command", "model"]
    assert [line.split()[-1] for line in lines[3:]] == [t["run_dir"] for t in newest[:5]]

    result = cli("runs", str(root), "--status", "done")
    assert result.returncode == 2 and "choose from ok, failed" in result.stderr


def test_report_lists_a_folder_and_keeps_run_and_sweep_summaries(cli, many_runs, templates):
    root, truth, _ = many_runs
    result = cli("report", str(root / "pretrain"), "--json")  # neither a run nor a sweep
    assert result.returncode == 0, result.stderr
    assert {r["run_dir"] for r in json.loads(result.stdout)} == {
        t["run_dir"] for t in truth if t["command"] == "pretrain"}

    result = cli("report", str(templates[0]), "--json")  # one run
    row = json.loads(result.stdout)
    assert row["status"] == "ok" and row["value"] == read_json(
        templates[0] / "metrics.json")["best_validation"]["accuracy"]

    sweep = next(Path(t["sweep"]) for t in truth if t["sweep"] and t["status"] == "ok")
    result = cli("report", str(sweep), "--json")  # a sweep: one row per job, best first
    jobs = json.loads(result.stdout)
    assert sorted(j["job"] for j in jobs) == sorted(p.name for p in sweep.iterdir() if p.is_dir())
    values = [j["value"] for j in jobs if j.get("value") is not None]
    assert values == sorted(values, reverse=True) and (sweep / "summary.json").is_file()


def test_real_runs_are_listed_with_their_own_values(templates):
    finetune, evaluate = templates
    rows = {r["run_dir"]: r for r in list_runs(finetune.parents[2])}  # outputs/
    metrics = read_json(finetune / "metrics.json")
    row = rows[str(finetune)]
    assert (row["command"], row["model"], row["data"], row["status"]) == (
        "finetune", "lstm", "news", "ok")
    assert row["val"] == metrics["best_validation"][metrics["monitor"]]
    assert row["test"] == metrics["test"][metrics["monitor"]]
    assert row["steps"] == metrics["steps"]
    evaluated = rows[str(evaluate)]
    assert (evaluated["command"], evaluated["model"], evaluated["status"]) == (
        "evaluate", "lstm", "ok")
    assert evaluated["test"] == read_json(evaluate / "metrics.json")["metrics"]["accuracy"]
    assert str(finetune) in {str(p) for p in find_runs(finetune.parents[2])}
