"""all-MiniLM-L6-v2 (model=hf) finetuned on 20,000 SST-2 sentences (experiment=hf_sst2)."""

from __future__ import annotations

from harness import SMOKE_RUN, Context, failed, run_bigmodel, verdict

NAMES = ("hf",)
TITLE = "all-MiniLM-L6-v2 (model=hf) on SST-2"
TARGET = 0.85
WALL_TARGET_S = 900


def run(ctx: Context, name: str) -> dict:
    m = run_bigmodel(ctx, ["finetune", "experiment=hf_sst2"] + (SMOKE_RUN if ctx.smoke else []),
                     "hf_sst2")
    if "error" in m:
        return failed(m)
    acc = m["best_validation"]["accuracy"]
    return {"command": m["command"], "validation_accuracy": acc,
            "train_time_s": m["train_time_s"], "wall_s": m["wall_s"],
            "samples_per_s": m["samples_per_s"], "parameters": m["parameters"],
            "targets": {f"MiniLM on SST-2: validation accuracy >= {TARGET} in <= {WALL_TARGET_S} s":
                        verdict(acc >= TARGET and m["wall_s"] <= WALL_TARGET_S, ctx.smoke)}}


def markdown(results: dict) -> list[str]:
    h = results["hf"]
    if "error" in h:
        return [f"- `{h['command']}`: error: {h['error']}"]
    return [f"- `{h['command']}`: validation accuracy {h['validation_accuracy']}, "
            f"train {h['train_time_s']} s, wall {h['wall_s']} s"]
