"""Benchmark section `serve`: `bigmodel serve` under closed-loop load, against its limits.

For each THUCNews run (LSTM and fastText, default configs), a real server process on a
free loopback port gets 1, 8, 32 and 64 concurrent clients (asyncio + httpx), each sending
one headline per request and the next as soon as the answer comes, for a fixed time and at
most a fixed number of requests. Reported: requests/s, p50/p95/p99 latency, mean batch
size (from the server's /metrics), errors. Beside it, on the same machine:
  (a) the same server with max_batch_size=1 (no batching);
  (b) the raw batched predict call in-process at batch 64, tokenization included (the limit);
  (c) `bigmodel predict input=FILE` on N headlines: texts/s (process start included) and
      peak RSS.

    python bench/serve_bench.py                                  # the full section
    python bench/serve_bench.py --seconds 2 --debug              # a quick check that it works
    python bench/serve_bench.py --lstm-run DIR --fasttext-run DIR  # reuse trained runs
Runs are also taken from $BENCH_LSTM_RUN / $BENCH_FASTTEXT_RUN; missing ones are trained
once (model=lstm data=news takes ~9 min on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "bench"


def headlines(limit: int) -> list[str]:
    import csv

    data = Path(os.environ.get("BIGMODEL_DATA_DIR", REPO.parent / "shared" / "data"))
    with gzip.open(data / "thucnews" / "test.csv.gz", "rt", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    return [texts[i % len(texts)] for i in range(limit)]


def bigmodel(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bigmodel_cli", *args], cwd=OUT,
                          capture_output=True, text=True, **kwargs)


def ensure_run(model: str, given: str | None, debug: bool) -> Path:
    if given:
        return Path(given).resolve()
    extra = ["model.ngram_buckets=20000"] if model == "fasttext" and debug else []
    result = bigmodel("finetune", f"model={model}", "data=news",
                      *(["trainer=debug"] if debug else []), *extra)
    if result.returncode != 0:
        raise SystemExit(f"training {model} failed:\n{result.stderr[-2000:]}")
    return (OUT / result.stdout.strip().splitlines()[-1]).resolve()


class Server:
    """`bigmodel serve` on port 0 (a free loopback port), stopped with SIGTERM."""

    def __init__(self, run: Path, *overrides: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", "serve",
                                      f"run={run}", "port=0", "device=cpu", *overrides],
                                     cwd=OUT, stderr=subprocess.PIPE, text=True)
        lines = []
        for line in self.proc.stderr:
            lines.append(line)
            if " on http://" in line:
                self.url = line.split(" on ", 1)[1].split()[0]
                break
        else:
            raise SystemExit(f"the server did not start:\n{''.join(lines)}")
        # the access log keeps coming: drain it so the pipe never fills
        import threading

        threading.Thread(target=lambda: self.proc.stderr.read(), daemon=True).start()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def batch_stats(metrics: str) -> tuple[float, float]:
    values = {}
    for line in metrics.splitlines():
        for name in ("bigmodel_batch_size_count", "bigmodel_batch_size_sum"):
            if line.startswith(name):
                values[name] = float(line.split()[-1])
    return values.get("bigmodel_batch_size_count", 0.0), values.get("bigmodel_batch_size_sum", 0.0)


async def closed_loop(url: str, texts: list[str], clients: int, seconds: float,
                      max_requests: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        before = batch_stats((await client.get("/metrics")).text)

        async def one_client(c: int) -> None:
            nonlocal errors, sent
            i = c
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                started = time.perf_counter()
                try:
                    r = await client.post("/v1/predict", json={"inputs": [texts[i % len(texts)]]})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok
                i += clients

        started = time.perf_counter()
        await asyncio.gather(*[one_client(c) for c in range(clients)])
        elapsed = time.perf_counter() - started
        after = batch_stats((await client.get("/metrics")).text)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    batches = after[0] - before[0]
    return {"clients": clients, "requests": len(latencies), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(q[49] * 1000, 1), "p95_ms": round(q[94] * 1000, 1),
            "p99_ms": round(q[98] * 1000, 1),
            "mean_batch": round((after[1] - before[1]) / batches, 2) if batches else None,
            "errors": errors}


def load_levels(run: Path, texts: list[str], levels: list[int], seconds: float,
                max_requests: int, *overrides: str) -> list[dict]:
    server = Server(run, *overrides)
    try:
        rows = [asyncio.run(closed_loop(server.url, texts, n, seconds, max_requests))
                for n in levels]
    finally:
        code = server.stop()
    for row in rows:
        row["exit_code"] = code
    return rows


def raw_batched(run: Path, texts: list[str], seconds: float, batch: int = 64) -> dict:
    """The predict call in-process, tokenization included: the ceiling for a server."""
    from bigmodel_cli.inference import PredictOptions, Predictor

    predictor = Predictor.load(run, "best", "cpu", None)
    options = PredictOptions()
    done, i = 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        chunk = [({"index": j}, texts[(i + j) % len(texts)]) for j in range(batch)]
        predictor.predict(chunk, options)
        done += batch
        i += batch
    elapsed = time.perf_counter() - started
    return {"batch": batch, "texts": done, "texts_per_s": round(done / elapsed, 1)}


def predict_file(run: Path, texts: list[str]) -> dict:
    path = OUT / "serve_bench_headlines.txt"
    path.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
    started = time.perf_counter()
    result = bigmodel("predict", f"run={run}", f"input={path}",
                      f"output={OUT / 'serve_bench_predictions.jsonl'}", "device=cpu")
    elapsed = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far
    if result.returncode != 0:
        raise SystemExit(f"predict failed:\n{result.stderr[-2000:]}")
    return {"lines": len(texts), "seconds": round(elapsed, 1),
            "texts_per_s": round(len(texts) / elapsed, 1), "peak_rss_mb": round(peak_kb / 1024, 1)}


def run(report: dict, argv: list[str] | None = None) -> dict:
    """Fill report["serve"] with this section's figures (and print them)."""
    args = parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    levels = [int(x) for x in args.levels.split(",")]
    texts = headlines(max(args.predict_lines, 10_000))
    runs = {"fasttext": ensure_run("fasttext", args.fasttext_run or os.environ.get("BENCH_FASTTEXT_RUN"),
                                   args.debug)}
    if not args.debug:
        runs["lstm"] = ensure_run("lstm", args.lstm_run or os.environ.get("BENCH_LSTM_RUN"), False)
    section = {"seconds_per_level": args.seconds, "max_requests": args.max_requests, "runs": {}}
    for name, run_dir in runs.items():
        section["runs"][name] = {
            "run": str(run_dir),
            "batched": load_levels(run_dir, texts, levels, args.seconds, args.max_requests),
            "unbatched": load_levels(run_dir, texts, levels, args.seconds, args.max_requests,
                                     "max_batch_size=1"),
            "raw_batch_64": raw_batched(run_dir, texts, args.seconds),
            "predict_file": predict_file(run_dir, texts[:args.predict_lines]),
        }
    report["serve"] = section
    print_section(section)
    return section


def print_section(section: dict) -> None:
    for name, r in section["runs"].items():
        print(f"\n## serve: {name} ({r['run']})")
        print("server   clients  req/s   p50ms   p95ms   p99ms  mean_batch  errors")
        for label in ("batched", "unbatched"):
            for row in r[label]:
                print(f"{label:9}{row['clients']:>6}{row['requests_per_s']:>9}{row['p50_ms']:>8}"
                      f"{row['p95_ms']:>8}{row['p99_ms']:>8}{str(row['mean_batch']):>12}"
                      f"{row['errors']:>8}")
        print(f"(b) raw predict call, batch 64, in-process: {r['raw_batch_64']['texts_per_s']} texts/s")
        p = r["predict_file"]
        print(f"(c) bigmodel predict input=FILE ({p['lines']} lines): {p['texts_per_s']} texts/s "
              f"in {p['seconds']} s, peak RSS {p['peak_rss_mb']} MB")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per concurrency level")
    parser.add_argument("--levels", default="1,8,32,64", help="concurrent clients")
    parser.add_argument("--max-requests", type=int, default=200_000, help="per level")
    parser.add_argument("--predict-lines", type=int, default=100_000)
    parser.add_argument("--lstm-run")
    parser.add_argument("--fasttext-run")
    parser.add_argument("--debug", action="store_true",
                        help="a tiny fastText run only (trainer=debug): checks the section works")
    return parser.parse_args(argv)


if __name__ == "__main__":
    report: dict = {}
    run(report, sys.argv[1:])
    (OUT / "serve_bench.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
