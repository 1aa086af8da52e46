"""What every benchmark section uses: the `bigmodel` command, running it as a child process in
the work folder, reading its run directory, and the PASS/MISS verdict of a target."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Context:
    """What a section is given: the command to run, where to run it, and the mode."""

    cli: list[str]   # the `bigmodel` command (the installed script, not a shim in front of it)
    work: Path       # the commands run here, so their outputs/ land under <report dir>/work
    smoke: bool      # trivial sizes: checks the section's code, its figures mean nothing


def bigmodel_command() -> list[str]:
    """The installed `bigmodel` script itself (not a version-manager shim in front of it)."""
    script = Path(sys.executable).with_name("bigmodel")
    found = str(script) if script.is_file() else shutil.which("bigmodel")
    return [found] if found else [sys.executable, "-m", "bigmodel_cli"]


def run_child(ctx: Context, args: list[str], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
    """Run `args` in the work folder; returns (exit code, wall seconds, peak RSS in MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ctx.work, stdout=stdout, stderr=stderr)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not a max over children
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 2**20


def run_bigmodel(ctx: Context, args: list[str], name: str) -> dict:
    """Run `bigmodel ARGS`; returns its metrics.json (+ command, wall_s, peak_rss_mib, run_dir),
    or {"command", "error"} when it failed (the end of its log is printed)."""
    stdout_file, log_file = ctx.work / f"{name}.stdout", ctx.work / f"{name}.log"
    command = "bigmodel " + " ".join(args)
    print(f"  running: {command}  (log: {log_file})", flush=True)
    with open(stdout_file, "w") as out, open(log_file, "w") as err:
        code, wall, rss = run_child(ctx, ctx.cli + args, out, err)
    lines = stdout_file.read_text().splitlines()
    if code != 0 or not lines:
        tail = log_file.read_text(errors="replace").splitlines()[-10:]
        print("\n".join("    | " + line for line in tail))
        return {"command": command, "error": f"exit code {code}; see {log_file}"}
    run_dir = ctx.work / lines[-1].strip()  # the last stdout line: the run directory
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {**metrics, "command": command, "run_dir": str(run_dir), "wall_s": round(wall, 1),
            "peak_rss_mib": round(rss)}


def failed(result: dict, what: str = "the run completes") -> dict:
    """The result of a section whose run did not complete: its error and one missed target."""
    return {**result, "targets": {what: "MISS"}}


def verdict(ok: bool, smoke: bool) -> str:
    return "n/a (smoke)" if smoke else "PASS" if ok else "MISS"


# Added to every training command in smoke mode: a few steps on a few hundred rows. They come
# after the preset, so they win over its sizes.
SMOKE_RUN = ["trainer.max_steps=5", "trainer.max_train_samples=200",
             "trainer.max_eval_samples=100", "trainer.batch_size=16"]
# A mid-sized fastText job (20k rows, 1 epoch) for the sweep, resume and DDP sections.
MID_JOB = ["finetune", "experiment=fasttext_news_20k", "trainer.progress=log", "device.threads=1"]
