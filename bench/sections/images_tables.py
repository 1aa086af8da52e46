"""Images and tables, each with its default settings: the test metric and the wall time.

Wall time is the whole command: data loading, training, the test split."""

from __future__ import annotations

from harness import SMOKE_RUN, Context, failed, run_bigmodel, verdict

NAMES = ("cnn_fashion", "vit_fashion", "cnn_digits", "mlp_diabetes")
TITLE = "Images and tables (default settings)"
# (preset, the test metric, its target, a wall-time target in seconds or None)
RUNS = {
    "cnn_fashion": ("cnn_fashion_mnist", "accuracy", 0.93, 720.0),
    "vit_fashion": ("vit_fashion_mnist", "accuracy", 0.885, 900.0),
    "cnn_digits": ("cnn_digits", "accuracy", 0.98, 60.0),
    "mlp_diabetes": ("mlp_diabetes", "r2", 0.45, None),
}
KEPT = ("command", "test", "best_validation", "train_time_s", "total_time_s", "wall_s",
        "samples_per_s", "peak_rss_mib", "parameters", "epochs", "steps", "run_dir")


def run(ctx: Context, name: str) -> dict:
    preset, metric, target, wall_target = RUNS[name]
    m = run_bigmodel(ctx, ["finetune", f"experiment={preset}"] + (SMOKE_RUN if ctx.smoke else []),
                     name)
    if "error" in m:
        return failed(m)
    result = {"metric": metric, **{key: m[key] for key in KEPT}}
    ok = m["test"][metric] >= target and (wall_target is None or m["wall_s"] <= wall_target)
    label = f"test {metric} >= {target}" + (f" in <= {wall_target:.0f} s wall" if wall_target else "")
    return {**result, "targets": {label: verdict(ok, ctx.smoke)}}


def markdown(results: dict) -> list[str]:
    lines = ["| command | test metric | RMSE | epochs | train s | wall s | samples/s | peak MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results.values():
        if "error" in r:
            lines.append(f"| `{r['command']}` | error: {r['error']} | | | | | | |")
            continue
        rmse = f"{r['test']['rmse']:.2f}" if "rmse" in r["test"] else "-"
        lines.append(f"| `{r['command']}` | {r['metric']} {r['test'][r['metric']]:.4f} | {rmse} "
                     f"| {r['epochs']} | {r['train_time_s']:.1f} | {r['wall_s']:.1f} "
                     f"| {r['samples_per_s']:,.0f} | {r['peak_rss_mib']:,} |")
    return lines
