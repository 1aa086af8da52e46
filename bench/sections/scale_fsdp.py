"""Per-rank memory of one transformer under DDP and FSDP, 2 gloo ranks (torchrun) on this CPU.

Each run's metrics.json has `memory_per_rank`: the bytes of parameters and optimizer state
each rank holds, summed over the tensors themselves (FSDP: their local shards), and each
rank's peak RSS. DDP replicates both on every rank; FSDP keeps 1/N of them.

Peak RSS is measured twice: as glibc's malloc behaves by default, and with a fixed mmap
threshold. By default, once a large block is freed glibc raises its mmap threshold, so the
blocks FSDP gathers and frees at every layer are then taken from the heap and stay in the
process after they are freed: RSS grows towards DDP's although the tensors alive do not."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness import Context, run_child, verdict

NAMES = ("scale_fsdp",)
TITLE = "FSDP vs DDP: memory per rank (torchrun, 2 gloo ranks)"
TARGET = 0.60  # FSDP's parameter + optimizer bytes per rank, as a fraction of DDP's

# A BERT-style encoder of 8 blocks of width 512 (about 26M parameters with THUCNews'
# vocabulary): a few steps are enough, the state it holds does not change with more.
JOB = ["finetune", "model=bert", "model.n_layers=8", "model.d_model=512", "model.n_heads=8",
       "model.d_ff=2048", "trainer=debug", "trainer.max_steps=4", "trainer.batch_size=16",
       "trainer.eval_every_steps=4", "trainer.max_eval_samples=64", "device.threads=1"]
FIXED_MMAP = ["env", "MALLOC_MMAP_THRESHOLD_=131072"]  # blocks >= 128 KiB: mmap, unmapped on free
RUNS = {"ddp": [], "fsdp": [], "ddp_fixed_mmap": FIXED_MMAP, "fsdp_fixed_mmap": FIXED_MMAP}
SMOKE = ["finetune", "model=bert_tiny", "trainer=debug", "trainer.max_steps=2",
         "trainer.eval_every_steps=2", "trainer.max_eval_samples=32", "device.threads=1"]


def run(ctx: Context, name: str) -> dict:
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone",
                "--nproc_per_node=2", "-m", "bigmodel_cli"]
    job = SMOKE if ctx.smoke else JOB
    results: dict = {"command": "torchrun --standalone --nproc_per_node=2 -m bigmodel_cli "
                                + " ".join(job) + " trainer.strategy=ddp|fsdp"}
    for key, prefix in RUNS.items():
        out = ctx.work / f"scale-fsdp-{key}.stdout"
        strategy = key.split("_")[0]
        with open(out, "w") as fh, open(out.with_suffix(".log"), "w") as err:
            code, wall, _ = run_child(ctx, prefix + torchrun + job + [f"trainer.strategy={strategy}"],
                                      stdout=fh, stderr=err)
        result: dict = {"exit_code": code, "wall_s": round(wall, 1)}
        if code == 0:
            metrics = json.loads((ctx.work / out.read_text().split()[-1] / "metrics.json").read_text())
            ranks = metrics["memory_per_rank"]
            result.update(parameters=metrics["parameters"], ranks=ranks,
                          state_mib_per_rank=max(_mib(r) for r in ranks),
                          peak_rss_mib_per_rank=max(r["peak_rss_mib"] for r in ranks),
                          test_accuracy=metrics["test"]["accuracy"])
        results[key] = result
    ddp, fsdp = results["ddp"], results["fsdp"]
    if "state_mib_per_rank" in ddp and "state_mib_per_rank" in fsdp:
        ratio = fsdp["state_mib_per_rank"] / ddp["state_mib_per_rank"]
        results["state_ratio"] = round(ratio, 3)
        for suffix in ("", "_fixed_mmap"):
            a, b = results[f"ddp{suffix}"], results[f"fsdp{suffix}"]
            if "peak_rss_mib_per_rank" in a and "peak_rss_mib_per_rank" in b:
                results[f"rss_ratio{suffix}"] = round(
                    b["peak_rss_mib_per_rank"] / a["peak_rss_mib_per_rank"], 3)
        results["targets"] = {
            f"FSDP parameter + optimizer memory per rank <= {TARGET:.0%} of DDP's":
                verdict(ratio <= TARGET, ctx.smoke)}
    return results


def _mib(rank: dict) -> float:
    return round((rank["parameter_bytes"] + rank["optimizer_bytes"]) / 2**20, 1)


def markdown(results: dict) -> list[str]:
    r = results["scale_fsdp"]
    lines = [f"- `{r['command']}` (`_fixed_mmap`: run under `{' '.join(FIXED_MMAP)}`)"]
    for key in RUNS:
        s = r[key]
        if "ranks" not in s:
            lines.append(f"- {key}: failed (exit code {s['exit_code']})")
            continue
        per_rank = ", ".join(f"rank {x['rank']}: parameters {x['parameter_bytes'] / 2**20:.1f} "
                             f"+ optimizer {x['optimizer_bytes'] / 2**20:.1f} MiB, peak RSS "
                             f"{x['peak_rss_mib']} MiB" for x in s["ranks"])
        lines.append(f"- {key} ({s['parameters']:,} parameters, {s['wall_s']} s): {per_rank}")
    if "state_ratio" in r:
        lines.append(f"- FSDP / DDP per rank: parameter + optimizer state {r['state_ratio']:.0%}; "
                     f"peak RSS {r.get('rss_ratio', float('nan')):.0%} (glibc defaults), "
                     f"{r.get('rss_ratio_fixed_mmap', float('nan')):.0%} (fixed mmap threshold)")
    return lines
