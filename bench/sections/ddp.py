"""DDP on this CPU: samples/s of 2 gloo processes (torchrun) vs 1 process on the same job."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness import MID_JOB, SMOKE_RUN, Context, run_child

NAMES = ("ddp",)
TITLE = "DDP on this CPU (torchrun, gloo)"


def run(ctx: Context, name: str) -> dict:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    # Both processes share the cores (no device.threads=1); torchrun refuses sparse gradients.
    job = [a for a in MID_JOB if a != "device.threads=1"] + ["model.sparse=false"]
    job += SMOKE_RUN if ctx.smoke else []
    results: dict = {"command": "bigmodel " + " ".join(job)}
    for key, prefix in (("1_process", ctx.cli), ("2_processes_gloo",
                        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "bigmodel_cli"])):
        out = ctx.work / f"ddp-{key}.stdout"
        with open(out, "w") as fh:
            code, wall, _ = run_child(ctx, prefix + job, stdout=fh)
        result = {"exit_code": code, "wall_s": round(wall, 1)}
        if code == 0:
            metrics = json.loads((ctx.work / out.read_text().split()[-1] / "metrics.json").read_text())
            result.update(samples_per_s=metrics["samples_per_s"], train_time_s=metrics["train_time_s"],
                          test_accuracy=metrics["test"]["accuracy"])
        results[key] = result
    one, two = results["1_process"], results["2_processes_gloo"]
    if "samples_per_s" in one and "samples_per_s" in two:
        results["speedup"] = round(two["samples_per_s"] / one["samples_per_s"], 2)
    return results


def markdown(results: dict) -> list[str]:
    d = results["ddp"]
    one, two = d["1_process"], d["2_processes_gloo"]
    return [f"- `{d['command']}`: 1 process {one.get('samples_per_s', '-')} samples/s; 2 processes "
            f"{two.get('samples_per_s', '-')} samples/s (speed-up {d.get('speedup', '-')}x)"]
