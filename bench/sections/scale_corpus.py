"""A corpus 20x larger: peak memory and throughput of GPT pretraining from token shards.

The THUCNews train headlines (180k) are written as plain text files, once (1x) and 20
times over (20x, 20 files read through a glob), in a temporary folder that is deleted
afterwards. For each size, a first run tokenizes the corpus into the shards (its cache is
fresh) and trains; then runs that find the shards cached train the same fixed number of
steps. Tokenization time is the first run's wall time less that of a cached run. The cached
runs of the two sizes alternate, and each size reports its best, since the machine is shared.
"""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import tempfile
from pathlib import Path

from harness import Context, failed, run_bigmodel, verdict

NAMES = ("scale_corpus",)
TITLE = "Pretraining corpora beyond memory (token shards, 1x vs 20x THUCNews headlines)"


def _headlines(split: str, limit: int | None) -> list[str]:
    data = Path(os.environ.get("BIGMODEL_DATA_DIR", "../shared/data")) / "thucnews"
    with gzip.open(data / f"{split}.csv.gz", "rt", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    return texts[:limit]


def _corpus(folder: Path, headlines: list[str], copies: int) -> None:
    folder.mkdir(parents=True)
    text = "\n".join(headlines) + "\n"
    for i in range(copies):
        (folder / f"part-{i:02d}.txt").write_text(text, encoding="utf-8")


def _args(tmp: Path, scale: int, steps: int) -> list[str]:
    return ["pretrain", "model=gpt", "data=text", f"data.files.train={tmp}/x{scale}/*.txt",
            f"data.files.validation={tmp}/validation.txt", "data.max_length=128",
            "model.max_len=129", "data.tokenizer.sample_texts=200000",
            f"trainer.max_steps={steps}", "trainer.batch_size=32", "trainer.max_eval_samples=500",
            "trainer.progress=log", f"cache_dir={tmp}/cache-x{scale}"]


def run(ctx: Context, name: str) -> dict:
    limit, steps, repeats = (2000, 3, 1) if ctx.smoke else (None, 20, 2)
    scales = (1, 20)
    tmp = Path(tempfile.mkdtemp(prefix="bigmodel-scale-corpus-"))
    saved = os.environ.get("HF_DATASETS_CACHE")
    os.environ["HF_DATASETS_CACHE"] = str(tmp / "hf")  # datasets' Arrow copies go here too
    try:
        train = _headlines("train", limit)
        (tmp / "validation.txt").write_text("\n".join(_headlines("validation", 1000)) + "\n",
                                            encoding="utf-8")
        for scale in scales:
            _corpus(tmp / f"x{scale}", train, scale)
        first = {s: run_bigmodel(ctx, _args(tmp, s, steps), f"scale_corpus_x{s}_first")
                 for s in scales}
        cached: dict[int, list[dict]] = {s: [] for s in scales}
        for i in range(repeats):
            for s in scales:
                cached[s].append(run_bigmodel(ctx, _args(tmp, s, steps),
                                              f"scale_corpus_x{s}_cached{i}"))
        shard_bytes = {s: sum(p.stat().st_size for p in (tmp / f"cache-x{s}").rglob("*.bin"))
                       for s in scales}
    finally:
        if saved is None:
            os.environ.pop("HF_DATASETS_CACHE")
        else:
            os.environ["HF_DATASETS_CACHE"] = saved
        shutil.rmtree(tmp, ignore_errors=True)
    for m in [*first.values(), *(m for runs in cached.values() for m in runs)]:
        if "error" in m:
            return failed(m)
    return _figures(ctx, first, cached, shard_bytes, len(train), steps)


def _figures(ctx, first: dict, cached: dict, shard_bytes: dict, headlines: int,
             steps: int) -> dict:
    sizes = {}
    for s, runs in cached.items():
        best = max(runs, key=lambda m: m["tokens_per_s"])
        sizes[f"x{s}"] = {
            "train_texts": headlines * s, "train_blocks": first[s]["splits"]["train"],
            "shard_mib": round(shard_bytes[s] / 2**20, 1),
            "first_run_wall_s": first[s]["wall_s"],
            "tokenize_s": round(first[s]["wall_s"] - min(m["wall_s"] for m in runs), 1),
            "first_run_peak_rss_mib": first[s]["peak_rss_mib"],
            "peak_rss_mib": min(m["peak_rss_mib"] for m in runs),
            "tokens_per_s": best["tokens_per_s"], "steps": best["steps"],
        }
    one, twenty = sizes["x1"], sizes["x20"]
    rss = twenty["peak_rss_mib"] / one["peak_rss_mib"]
    first_rss = twenty["first_run_peak_rss_mib"] / one["first_run_peak_rss_mib"]
    speed = twenty["tokens_per_s"] / one["tokens_per_s"]
    return {
        "command": cached[20][0]["command"], "steps": steps, "sizes": sizes,
        "rss_ratio": round(rss, 3), "first_run_rss_ratio": round(first_rss, 3),
        "tokens_per_s_ratio": round(speed, 3),
        "targets": {
            "peak RSS at 20x within 15% of 1x (training from the shards)":
                verdict(rss <= 1.15, ctx.smoke),
            "peak RSS at 20x within 15% of 1x (first run, tokenizing too)":
                verdict(first_rss <= 1.15, ctx.smoke),
            "tokens/s at 20x within 10% of 1x": verdict(abs(speed - 1) <= 0.10, ctx.smoke),
        },
    }


def markdown(results: dict) -> list[str]:
    r = results["scale_corpus"]
    if "error" in r:
        return [f"- `{r['command']}`: error: {r['error']}"]
    lines = [f"- `{r['command']}` ({r['steps']} steps at each size):", "",
             "| corpus | train texts | blocks | shards | tokenize | peak RSS (first run) "
             "| peak RSS (cached) | tokens/s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for size, s in r["sizes"].items():
        lines.append(f"| {size} | {s['train_texts']:,} | {s['train_blocks']:,} | "
                     f"{s['shard_mib']} MiB | {s['tokenize_s']} s | "
                     f"{s['first_run_peak_rss_mib']} MiB | {s['peak_rss_mib']} MiB | "
                     f"{s['tokens_per_s']:,.0f} |")
    lines += ["", f"- 20x / 1x: peak RSS {r['rss_ratio']} (first run {r['first_run_rss_ratio']}), "
              f"tokens/s {r['tokens_per_s_ratio']}"]
    return lines
