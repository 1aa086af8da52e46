"""Resume: time from start to the first new training step, a fresh run vs resuming a paused one."""

from __future__ import annotations

import shutil
import subprocess
import time

from harness import MID_JOB, SMOKE_RUN, Context, run_child

NAMES = ("resume",)
TITLE = "Resume (the mid-sized fastText job)"


def seconds_until(ctx: Context, args: list[str], pattern: str) -> float:
    """Wall seconds from starting `args` until `pattern` appears in its stderr (it then runs on)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ctx.work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    found = float("nan")
    for line in proc.stderr:
        if pattern in line and found != found:
            found = time.perf_counter() - start
    proc.wait()
    return found


def run(ctx: Context, name: str) -> dict:
    run_dir = ctx.work / "outputs" / "bench-resume"
    shutil.rmtree(run_dir, ignore_errors=True)
    base = MID_JOB + (SMOKE_RUN[1:] if ctx.smoke else [])  # smoke: small data, not 5 steps
    run_child(ctx, ctx.cli + base + ["trainer.max_steps=1"])  # fill the tokenized cache first
    job = base + ["trainer.log_every_steps=1", f"hydra.run.dir={run_dir}"]
    pause = 2 if ctx.smoke else 20  # the paused run's steps; resuming waits for the next one
    fresh = seconds_until(ctx, ctx.cli + job + [f"trainer.pause_after_steps={pause}"], "step 1/")
    resumed = seconds_until(ctx, ctx.cli + ["finetune", f"trainer.resume={run_dir}",
                                            "trainer.pause_after_steps=5"], f"step {pause + 1}/")
    return {"command": "bigmodel " + " ".join(job), "fresh_start_to_first_step_s": round(fresh, 2),
            "resume_to_first_new_step_s": round(resumed, 2),
            "resume_overhead_s": round(resumed - fresh, 2)}


def markdown(results: dict) -> list[str]:
    r = results["resume"]
    return [f"- start to first training step: fresh {r['fresh_start_to_first_step_s']} s, "
            f"resuming {r['resume_to_first_new_step_s']} s (overhead {r['resume_overhead_s']} s)"]
