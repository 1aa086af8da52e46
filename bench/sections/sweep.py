"""A 4-job sweep of the mid-sized fastText job: one job after another vs joblib, 2 at a time."""

from __future__ import annotations

from harness import MID_JOB, SMOKE_RUN, Context, run_child

NAMES = ("sweep",)
TITLE = "A 4-job sweep (fastText, 20k rows, 1 epoch each)"
SWEEP = ["optimizer.lr=0.002,0.005", "model.embedding_dim=50,100"]


def run(ctx: Context, name: str) -> dict:
    job = MID_JOB + (SMOKE_RUN if ctx.smoke else [])
    run_child(ctx, ctx.cli + job + ["trainer.max_steps=1"])  # fill the tokenized cache first
    results: dict = {"command": "bigmodel " + " ".join(job[:1] + ["-m"] + job[1:] + SWEEP)}
    for key, extra in (("sequential", []),
                       ("joblib_n_jobs_2", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])):
        # Hydra wants -m before the overrides, which must stay together.
        code, wall, _ = run_child(ctx, ctx.cli + job[:1] + ["-m"] + job[1:] + SWEEP + extra)
        results[key] = {"exit_code": code, "wall_s": round(wall, 1)}
    results["speedup"] = round(results["sequential"]["wall_s"] / results["joblib_n_jobs_2"]["wall_s"], 2)
    return results


def markdown(results: dict) -> list[str]:
    s = results["sweep"]
    return [f"- `{s['command']}`: one job after another {s['sequential']['wall_s']} s; joblib "
            f"launcher, n_jobs=2: {s['joblib_n_jobs_2']['wall_s']} s (speed-up {s['speedup']}x)"]
