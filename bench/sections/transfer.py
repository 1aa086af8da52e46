"""The transfer gain: 1%-label finetuning from scratch vs from an MLM-pretrained BERT.

MLM pretraining on the unlabeled headlines for a fixed number of steps (experiment=
transfer_pretrain), then a 1% labeled subset (1,800 headlines, stratified, seeded) finetuned
from scratch and from the pretrained weights (experiment=transfer_finetune_1pct): the same
model size and steps, SEEDS seeds each.

Section bert_news: the same pretrained BERT finetuned on all 180k labeled headlines
(experiment=bert_news). It reuses the pretraining of section transfer when both run, or
BENCH_PRETRAIN_RUN (a transfer_pretrain run directory).
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from harness import SMOKE_RUN, Context, failed, run_bigmodel, verdict

from sections.lm import lm_figures

NAMES = ("transfer", "bert_news")
TITLE = "Pretraining and transfer (BERT, THUCNews headlines)"
PRETRAIN = ["pretrain", "experiment=transfer_pretrain"]
FINETUNE = ["finetune", "experiment=transfer_finetune_1pct"]
SEEDS = (1, 2, 3)
GAIN = 0.05   # pretrained beats scratch by at least 5 points on every seed
PRETRAIN_BUDGET_S = 20 * 60   # the pretraining command, wall time
FULL = ["finetune", "experiment=bert_news"]
FULL_TARGET, FULL_BUDGET_S = 0.915, 30 * 60   # test accuracy, finetuning wall time
_pretrained: dict = {}   # the pretrain run, shared by the two sections of one invocation


def pretrain(ctx: Context) -> dict:
    """The transfer_pretrain run: run once per invocation, or read from BENCH_PRETRAIN_RUN (its
    wall time is then the run's own total_time_s, without process start-up)."""
    if not _pretrained:
        reuse = os.environ.get("BENCH_PRETRAIN_RUN")
        if reuse and not ctx.smoke:
            run_dir = Path(reuse).resolve()
            m = json.loads((run_dir / "metrics.json").read_text())
            _pretrained.update(m, command=f"(reused) {m.get('command')}", run_dir=str(run_dir),
                               wall_s=m.get("total_time_s"))
        else:
            _pretrained.update(run_bigmodel(ctx, PRETRAIN + (SMOKE_RUN if ctx.smoke else []),
                                            "pretrain_bert"))
    return _pretrained


def run(ctx: Context, name: str) -> dict:
    return transfer(ctx) if name == "transfer" else bert_news(ctx)


def bert_news(ctx: Context) -> dict:
    pre = pretrain(ctx)
    if "error" in pre:
        return failed({"pretrain": pre}, "the pretrain run completes")
    smoke = SMOKE_RUN if ctx.smoke else []
    m = run_bigmodel(ctx, FULL + smoke + [f"model.init_from={pre['run_dir']}"], "bert_news")
    if "error" in m:
        return failed({"pretrain": lm_figures(pre), "finetune": m})
    keep = ("command", "test", "best_validation", "train_time_s", "wall_s", "samples_per_s",
            "epochs", "steps")
    ok = m["test"]["accuracy"] >= FULL_TARGET and m["wall_s"] <= FULL_BUDGET_S
    return {"pretrain": lm_figures(pre), "finetune": {k: m.get(k) for k in keep},
            "targets": {f"test accuracy >= {FULL_TARGET:.1%} in <= {FULL_BUDGET_S // 60} min "
                        "of finetuning": verdict(ok, ctx.smoke)}}


def transfer(ctx: Context) -> dict:
    smoke = SMOKE_RUN if ctx.smoke else []
    pre = pretrain(ctx)
    if "error" in pre:
        return failed({"pretrain": pre}, "the pretrain run completes")
    result: dict = {"pretrain": lm_figures(pre), "scratch": {}, "pretrained": {}, "commands": {},
                    "train_time_s": {}}
    for seed in SEEDS:
        for kind, extra in (("scratch", []), ("pretrained", [f"model.init_from={pre['run_dir']}"])):
            m = run_bigmodel(ctx, FINETUNE + smoke + [f"seed={seed}", *extra], f"{kind}_{seed}")
            result[kind][seed] = m["test"]["accuracy"] if "error" not in m else None
            result["commands"][kind] = " ".join(["bigmodel", *FINETUNE, *smoke, "seed=S", *extra])
            result["train_time_s"][f"{kind}_{seed}"] = m.get("train_time_s")
    for kind in ("scratch", "pretrained"):
        values = [v for v in result[kind].values() if v is not None]
        result[f"{kind}_mean"] = round(statistics.mean(values), 4) if values else None
        result[f"{kind}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else None
    gains = [result["pretrained"][s] - result["scratch"][s] for s in SEEDS
             if result["pretrained"][s] is not None and result["scratch"][s] is not None]
    result["gains"] = [round(g, 4) for g in gains]
    ok = len(gains) == len(SEEDS) and min(gains) >= GAIN
    fits = pre["wall_s"] <= PRETRAIN_BUDGET_S
    return {**result, "targets": {f"pretrained beats scratch by >= {GAIN:.0%} on every seed "
                                  "(1% of THUCNews labels)": verdict(ok, ctx.smoke),
                                  f"pretraining <= {PRETRAIN_BUDGET_S // 60} min wall":
                                  verdict(fits, ctx.smoke)}}


def markdown(results: dict) -> list[str]:
    lines = transfer_markdown(results["transfer"]) if "transfer" in results else []
    if "bert_news" in results:
        lines.append(bert_news_markdown(results["bert_news"]))
    return lines


def bert_news_markdown(b: dict) -> str:
    # a failed section holds the failed run: the finetune, or the pretraining before it
    run = b.get("finetune") or b["pretrain"]
    if "error" in run:
        return f"- all 180k labels: `{run['command']}`: error: {run['error']}"
    return (f"- all 180k labels: `{run['command']}`: test accuracy {run['test']['accuracy']}, "
            f"{run['epochs']} epochs in {run['train_time_s']} s ({run['wall_s']} s wall)")


def transfer_markdown(t: dict) -> list[str]:
    p = t["pretrain"]
    if "error" in p:
        return [f"- MLM pretraining: `{p['command']}`: error: {p['error']}"]
    lines = [f"- MLM pretraining: `{p['command']}`: {p.get('steps')} steps in "
             f"{p.get('train_time_s')} s ({p.get('wall_s')} s wall), {p.get('tokens_per_s')} "
             f"tokens/s; validation perplexity {p.get('validation_perplexity')}, test {p.get('test_perplexity')}"]
    for kind in ("scratch", "pretrained"):
        lines.append(f"- {kind}: test accuracy {t[kind + '_mean']} ± {t[kind + '_std']} "
                     f"(seeds: {t[kind]}); `{t['commands'][kind]}`")
    lines.append(f"- gain per seed: {t['gains']}")
    return lines
