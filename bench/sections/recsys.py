"""Recommendation on MovieLens-100k with each model's defaults, beside the baselines that
metrics.json carries for the same splits.

  bigmodel finetune model=mf data=movielens task=rating         test RMSE <= 0.915 (the
      user+item-bias baseline is ~0.944-0.955 on such a split)
  bigmodel finetune model=sasrec data=movielens task=next_item  test HR@10 and NDCG@10 (full
      ranking) >= 2.5x the most-popular baseline's
  each within 5 minutes of wall time (the whole command).
"""

from __future__ import annotations

from harness import SMOKE_RUN, Context, failed, run_bigmodel, verdict

NAMES = ("recsys",)
TITLE = "Recommendation on MovieLens-100k (default settings)"
WALL_S = 300.0
RMSE = 0.915
RATIO = 2.5
RUNS = {"mf": ["model=mf", "data=movielens", "task=rating"],
        "sasrec": ["model=sasrec", "data=movielens", "task=next_item"]}
KEEP = ("command", "wall_s", "train_time_s", "peak_rss_mib", "parameters", "run_dir")


def _mf(m: dict, smoke: bool) -> tuple[dict, dict]:
    base = m["baselines"]["test"]
    result = {key: m[key] for key in KEEP}
    result.update(test_rmse=m["test"]["rmse"], test_mae=m["test"]["mae"],
                  validation_rmse=m["best_validation"]["rmse"],
                  global_mean_rmse=base["global_mean"]["rmse"],
                  global_mean_mae=base["global_mean"]["mae"],
                  bias_rmse=base["user_item_bias"]["rmse"], bias_mae=base["user_item_bias"]["mae"])
    ok = result["test_rmse"] <= RMSE and result["wall_s"] <= WALL_S
    return result, {f"mf: test RMSE <= {RMSE} with wall <= {WALL_S:.0f} s": verdict(ok, smoke)}


def _sasrec(m: dict, smoke: bool) -> tuple[dict, dict]:
    pop = m["baselines"]["test"]["most_popular"]
    result = {key: m[key] for key in KEEP}
    for k in ("hr@10", "ndcg@10", "mrr"):
        result[f"test_{k}"], result[f"popular_{k}"] = m["test"][k], pop[k]
        result[f"ratio_{k}"] = m["test"][k] / max(pop[k], 1e-12)
    ok = min(result["ratio_hr@10"], result["ratio_ndcg@10"]) >= RATIO and result["wall_s"] <= WALL_S
    label = f"sasrec: test HR@10 and NDCG@10 >= {RATIO}x most-popular with wall <= {WALL_S:.0f} s"
    return result, {label: verdict(ok, smoke)}


def run(ctx: Context, name: str) -> dict:
    out, targets = {}, {}
    for model, summarise in (("mf", _mf), ("sasrec", _sasrec)):
        m = run_bigmodel(ctx, ["finetune", *RUNS[model]] + (SMOKE_RUN if ctx.smoke else []),
                         f"{name}_{model}")
        if "error" in m:
            return failed(m, f"{model}: the run completes")
        out[model], more = summarise(m, ctx.smoke)
        targets.update(more)
    return {**out, "targets": targets}


def markdown(results: dict) -> list[str]:
    r = results.get("recsys", {})
    if "error" in r:
        return [f"`{r['command']}`: error: {r['error']}"]
    mf, sas = r["mf"], r["sasrec"]
    return [
        "| command | test RMSE | test MAE | global mean RMSE / MAE | user+item bias RMSE / MAE "
        "| wall s | train s |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| `{mf['command']}` | {mf['test_rmse']:.4f} | {mf['test_mae']:.4f} | "
        f"{mf['global_mean_rmse']:.4f} / {mf['global_mean_mae']:.4f} | "
        f"{mf['bias_rmse']:.4f} / {mf['bias_mae']:.4f} | {mf['wall_s']:.1f} | "
        f"{mf['train_time_s']:.1f} |",
        "",
        "| command | test HR@10 | NDCG@10 | MRR | most-popular HR@10 / NDCG@10 / MRR | ratio HR / NDCG "
        "| wall s | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| `{sas['command']}` | {sas['test_hr@10']:.4f} | {sas['test_ndcg@10']:.4f} | "
        f"{sas['test_mrr']:.4f} | {sas['popular_hr@10']:.4f} / {sas['popular_ndcg@10']:.4f} / "
        f"{sas['popular_mrr']:.4f} | {sas['ratio_hr@10']:.2f}x / {sas['ratio_ndcg@10']:.2f}x | "
        f"{sas['wall_s']:.1f} | {sas['train_time_s']:.1f} |",
    ]
