#!/usr/bin/env python3
"""Recommendation benchmark (section `recsys`): MovieLens-100k with each model's defaults.

    python3 bench/recsys_bench.py                 both runs (a few minutes each on 2 cores)
    python3 bench/recsys_bench.py --quick         trainer=debug runs: checks this script only

  bigmodel finetune model=mf data=movielens task=rating         test RMSE <= 0.915 (the
      user+item-bias baseline, beside it, is ~0.944 on such a split)
  bigmodel finetune model=sasrec data=movielens task=next_item  test HR@10 and NDCG@10 (full
      ranking) >= 2.5x the most-popular baseline's
  each within 5 minutes of wall time (the whole command).

Prints the figures with their baselines and returns them as a dict (run_recsys) for a
report; it reports, it does not test: the exit status is 0 whether or not targets are met.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WALL_TARGET_S = 300.0
RUNS = {
    "mf_rating": (["model=mf", "data=movielens", "task=rating"], "rmse"),
    "sasrec_next_item": (["model=sasrec", "data=movielens", "task=next_item"], "ndcg@10"),
}


def _finetune(args: list[str], work: Path) -> tuple[dict, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "bigmodel_cli", "finetune", *args,
                             "trainer.progress=off"], cwd=work, env=env, capture_output=True,
                            text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"bigmodel finetune {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    run = Path(result.stdout.strip().splitlines()[-1])
    run = run if run.is_absolute() else work / run
    return json.loads((run / "metrics.json").read_text(encoding="utf-8")), wall


def run_recsys(quick: bool = False, work: Path | None = None) -> dict:
    work = work or Path(tempfile.mkdtemp(prefix="recsys_bench_"))
    extra = ["trainer=debug"] if quick else []
    figures = {}
    args, _ = RUNS["mf_rating"]
    m, wall = _finetune(args + extra, work)
    bias = m["baselines"]["test"]["user_item_bias"]["rmse"]
    figures["mf_rating"] = {
        "command": "bigmodel finetune " + " ".join(args), "test_rmse": m["test"]["rmse"],
        "test_mae": m["test"]["mae"], "baseline_global_mean_rmse":
            m["baselines"]["test"]["global_mean"]["rmse"], "baseline_bias_rmse": bias,
        "target_rmse": 0.915, "met": m["test"]["rmse"] <= 0.915 and wall <= WALL_TARGET_S,
        "wall_s": round(wall, 1), "train_time_s": m["train_time_s"]}
    args, _ = RUNS["sasrec_next_item"]
    m, wall = _finetune(args + extra, work)
    pop = m["baselines"]["test"]["most_popular"]
    ratios = {k: m["test"][k] / max(pop[k], 1e-12) for k in ("hr@10", "ndcg@10")}
    figures["sasrec_next_item"] = {
        "command": "bigmodel finetune " + " ".join(args),
        **{f"test_{k}": m["test"][k] for k in ("hr@10", "ndcg@10", "mrr")},
        **{f"most_popular_{k}": pop[k] for k in ("hr@10", "ndcg@10", "mrr")},
        **{f"ratio_{k}": round(v, 2) for k, v in ratios.items()},
        "target_ratio": 2.5, "met": min(ratios.values()) >= 2.5 and wall <= WALL_TARGET_S,
        "wall_s": round(wall, 1), "train_time_s": m["train_time_s"]}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="trainer=debug runs")
    figures = run_recsys(parser.parse_args().quick)
    for name, f in figures.items():
        print(f"\n{name}: {f['command']}  (wall {f['wall_s']} s, target <= {WALL_TARGET_S:.0f})")
        for key, value in f.items():
            if key not in ("command", "wall_s"):
                print(f"  {key:28s} {value:.4f}" if isinstance(value, float)
                      else f"  {key:28s} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
