"""Section `serve`: `bigmodel serve` under closed-loop load, beside the limits it works within.

For the default LSTM and fastText THUCNews runs, a real server process on a free loopback
port gets 1, 8, 32 and 64 concurrent clients (asyncio keep-alive connections speaking plain
HTTP/1.1, in this process: see one_client), each sending
one headline per request and the next as soon as its answer comes, for SECONDS per level.
Reported per level: requests/s, p50/p95/p99 latency, mean batch size (the server's
/metrics), errors, and the CPU seconds the server and the load generator used (they share
the machine's cores). Beside it, in the same run:
  (a) the same server with max_batch_size=1 (no batching);
  (b) the predict call in-process at batch 64, tokenization included: the limit;
  (c) `bigmodel predict input=FILE` on 100,000 headlines: texts/s and peak RSS;
  and, with py-spy installed, where the server's time goes at 32 clients (HTTP, JSON,
  tokenization, forward, ...), from its sampled Python stacks.

Runs are reused from $BENCH_LSTM_RUN / $BENCH_FASTTEXT_RUN when set, else trained here
(the LSTM takes about 9 minutes on 2 cores).
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
import shutil
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path

from harness import SMOKE_RUN, Context, failed, run_bigmodel, run_child, verdict

NAMES = ("serve",)
TITLE = "Serving: `bigmodel serve` under concurrent load (THUCNews runs)"
PRESETS = {"lstm": "lstm_news", "fasttext": "fasttext_news"}
LEVELS, SMOKE_LEVELS = (1, 8, 32, 64), (1, 8)
SECONDS, SMOKE_SECONDS = 20.0, 1.0
PREDICT_LINES, SMOKE_LINES = 100_000, 500
MAX_REQUESTS = 200_000  # per level: bounds a level on a fast machine
TARGETS = {"speedup_32": 3.0, "of_raw_32": 0.40, "p99_ms_32": 250.0, "predict_of_raw": 0.70,
           "predict_rss_mib": 1536.0}


def headlines(limit: int) -> list[str]:
    data = Path(os.environ["BIGMODEL_DATA_DIR"]) / "thucnews" / "test.csv.gz"
    with gzip.open(data, "rt", encoding="utf-8") as f:
        texts = [row["text"].replace("\n", " ") for row in csv.DictReader(f)]
    return [texts[i % len(texts)] for i in range(limit)]


def trained_run(ctx: Context, model: str) -> dict:
    given = os.environ.get(f"BENCH_{model.upper()}_RUN")
    if given:
        return {"run_dir": str(Path(given).resolve()), "trained": "given"}
    args = ["finetune", f"experiment={PRESETS[model]}", "trainer.progress=log"]
    return run_bigmodel(ctx, args + (SMOKE_RUN if ctx.smoke else []), f"serve_{model}")


class Server:
    """`bigmodel serve` on a free loopback port, stopped with SIGTERM."""

    def __init__(self, ctx: Context, run_dir: str, *overrides: str) -> None:
        self.proc = subprocess.Popen([*ctx.cli, "serve", f"run={run_dir}", "port=0",
                                      "device=cpu", *overrides], cwd=ctx.work,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines = []
        for line in self.proc.stderr:
            lines.append(line)
            if " on http://" in line:
                self.url = line.split(" on ", 1)[1].split()[0]
                break
        else:
            raise RuntimeError(f"the server did not start:\n{''.join(lines[-10:])}")
        # the access log keeps coming: drain it so the pipe never fills
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def batch_totals(metrics: str) -> tuple[float, float]:
    """(batches, inputs) so far, from the server's batch-size histogram."""
    values = {}
    for line in metrics.splitlines():
        name = line.split(" ", 1)[0]
        if name in ("bigmodel_batch_size_count", "bigmodel_batch_size_sum"):
            values[name] = float(line.split()[-1])
    return values.get("bigmodel_batch_size_count", 0.0), values.get("bigmodel_batch_size_sum", 0.0)


def request_bytes(host: str, text: str) -> bytes:
    body = json.dumps({"inputs": [text]}, ensure_ascii=False).encode()
    return (f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def one_client(url: str, requests: list[bytes], deadline: float, latencies: list,
                     budget: list) -> int:
    """One closed-loop client on its own keep-alive connection: send, read the whole
    answer, send the next. Plain HTTP/1.1 over asyncio streams: httpx costs about 1.7 ms
    of CPU per request, which on a 2-core machine shared with the server caps the load a
    generator can offer well below what the server answers. Returns its error count."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    errors, i = 0, 0
    try:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            started = time.perf_counter()
            writer.write(requests[i % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            errors += not head.startswith(b"HTTP/1.1 200")
            i += 1
    except (OSError, asyncio.IncompleteReadError, StopIteration):
        errors += 1
    finally:
        writer.close()
    return errors


async def metrics_text(url: str) -> str:
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    text = (await reader.read()).decode()
    writer.close()
    return text


async def closed_loop(server: Server, texts: list[str], clients: int, seconds: float) -> dict:
    host = server.url.split("//", 1)[1]
    latencies: list[float] = []
    before = batch_totals(await metrics_text(server.url))
    cpu = server.cpu_seconds(), time.process_time()
    started = time.perf_counter()
    budget = [MAX_REQUESTS]
    errors = sum(await asyncio.gather(*[
        one_client(server.url, [request_bytes(host, t) for t in texts[c::clients][:200]],
                   started + seconds, latencies, budget) for c in range(clients)]))
    elapsed = time.perf_counter() - started
    server_cpu, client_cpu = server.cpu_seconds() - cpu[0], time.process_time() - cpu[1]
    after = batch_totals(await metrics_text(server.url))
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    batches = after[0] - before[0]
    return {"clients": clients, "requests": len(latencies), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(q[49] * 1000, 1), "p95_ms": round(q[94] * 1000, 1),
            "p99_ms": round(q[98] * 1000, 1), "errors": errors,
            "mean_batch": round((after[1] - before[1]) / batches, 2) if batches else None,
            "server_cpu_s": round(server_cpu, 1), "client_cpu_s": round(client_cpu, 1)}


def load_levels(ctx: Context, run_dir: str, texts: list[str], *overrides: str,
                profile_clients: int | None = None) -> dict:
    """Every level against one server process; optionally a profiled extra pass."""
    levels, seconds = (SMOKE_LEVELS, SMOKE_SECONDS) if ctx.smoke else (LEVELS, SECONDS)
    server = Server(ctx, run_dir, *overrides)
    profile = None
    try:
        rows = [asyncio.run(closed_loop(server, texts, n, seconds)) for n in levels]
        if profile_clients:
            profile = profiled(ctx, server, texts, profile_clients, min(seconds, 10.0))
    finally:
        code = server.stop()
    return {"levels": rows, "exit_code": code, "profile": profile}


# Where a sampled stack's time is charged: the first of these found from the innermost
# frame outwards. Tokenizers and torch run native code under the Python frame that called
# them, so the caller's file says which it was.
CATEGORIES = (
    ("tokenization", ("text_inputs.py", "text_kind.py", "tokenizers")),
    ("forward", ("torch/", "bigmodel_cli/models/")),
    ("records", ("bigmodel_cli/tasks/",)),
    ("json + validation", ("json/", "pydantic", "encoders.py", "schemas.py")),
    ("metrics + logging", ("prometheus_client", "logging/")),
    ("batching (queue, threads)", ("batcher.py", "queue.py", "threading.py")),
    ("http (uvicorn, starlette, fastapi, asyncio)", ("uvicorn", "h11", "httptools", "starlette",
                                                      "fastapi", "anyio", "asyncio")),
)


def profiled(ctx: Context, server: Server, texts: list[str], clients: int,
             seconds: float) -> dict | None:
    """py-spy samples the server's active Python threads while `clients` load it."""
    spy = shutil.which("py-spy")
    if spy is None:
        return None
    raw = ctx.work / "serve_profile.txt"
    proc = subprocess.Popen([spy, "record", "--pid", str(server.proc.pid), "--format", "raw",
                             "--rate", "200", "--nonblocking", "--duration", str(int(seconds)),
                             "--output", str(raw)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    asyncio.run(closed_loop(server, texts, clients, seconds))
    proc.wait(timeout=60)
    if not raw.is_file():
        return None
    shares = dict.fromkeys([name for name, _ in CATEGORIES] + ["other"], 0)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[::-1]  # innermost first
        name = next((name for frame in frames for name, keys in CATEGORIES
                     if any(k in frame for k in keys)), "other")
        shares[name] += int(count)
    total = sum(shares.values()) or 1
    return {"clients": clients, "samples": total,
            "shares": {k: round(v / total, 3) for k, v in shares.items()}}


def raw_batched(run_dir: str, texts: list[str], seconds: float, batch: int = 64) -> dict:
    """The predict call in-process at batch 64, tokenization included: a server's ceiling."""
    from bigmodel_cli.inference import PredictOptions, Predictor

    predictor = Predictor.load(run_dir, "best", "cpu", None)
    options, done = PredictOptions(), 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor.predict([({"index": j}, texts[(done + j) % len(texts)]) for j in range(batch)],
                          options)
        done += batch
    return {"batch": batch, "texts_per_s": round(done / (time.perf_counter() - started), 1)}


def predict_file(ctx: Context, run_dir: str, texts: list[str]) -> dict:
    path, out = ctx.work / "serve_headlines.txt", ctx.work / "serve_predictions.jsonl"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    args = ["predict", f"run={run_dir}", f"input={path}", f"output={out}", "device=cpu"]
    code, wall, rss = run_child(ctx, ctx.cli + args)
    return {"command": f"bigmodel predict run=RUN input=<{len(texts):,} headlines>",
            "exit_code": code, "lines": len(texts), "seconds": round(wall, 1),
            "texts_per_s": round(len(texts) / wall, 1), "peak_rss_mib": round(rss)}


def measure_run(ctx: Context, model: str, texts: list[str]) -> dict:
    trained = trained_run(ctx, model)
    if "error" in trained:
        return trained
    run_dir = trained["run_dir"]
    lines = SMOKE_LINES if ctx.smoke else PREDICT_LINES
    return {"run_dir": run_dir,
            "batched": load_levels(ctx, run_dir, texts, profile_clients=32 if model == "lstm"
                                   else None),
            "unbatched": load_levels(ctx, run_dir, texts, "max_batch_size=1"),
            "raw_batch_64": raw_batched(run_dir, texts, SMOKE_SECONDS if ctx.smoke else SECONDS),
            "predict_file": predict_file(ctx, run_dir, texts[:lines])}


def level(result: dict, mode: str, clients: int) -> dict | None:
    return next((r for r in result[mode]["levels"] if r["clients"] == clients), None)


def targets(runs: dict, smoke: bool) -> dict:
    out = {}
    errors = sum(r["errors"] for m in runs.values() if "error" not in m
                 for mode in ("batched", "unbatched") for r in m[mode]["levels"])
    out["0 errors at every concurrency"] = verdict(errors == 0, smoke)
    lstm = runs.get("lstm", {})
    if "batched" not in lstm or level(lstm, "batched", 32) is None:
        return {**out, "the LSTM at 32 clients is measured": verdict(False, smoke)}
    b, u = level(lstm, "batched", 32), level(lstm, "unbatched", 32)
    raw, p = lstm["raw_batch_64"]["texts_per_s"], lstm["predict_file"]
    t = TARGETS
    out[f"LSTM, 32 clients: >= {t['speedup_32']}x the unbatched req/s"] = verdict(
        b["requests_per_s"] >= t["speedup_32"] * u["requests_per_s"], smoke)
    out[f"LSTM, 32 clients: >= {t['of_raw_32']:.0%} of the raw batch-64 texts/s"] = verdict(
        b["requests_per_s"] >= t["of_raw_32"] * raw, smoke)
    out[f"LSTM, 32 clients: p99 <= {t['p99_ms_32']:.0f} ms"] = verdict(
        b["p99_ms"] <= t["p99_ms_32"], smoke)
    out[f"LSTM predict on {p['lines']:,} lines: >= {t['predict_of_raw']:.0%} of raw, peak RSS "
        f"< {t['predict_rss_mib']:.0f} MiB"] = verdict(
        p["exit_code"] == 0 and p["texts_per_s"] >= t["predict_of_raw"] * raw
        and p["peak_rss_mib"] < t["predict_rss_mib"], smoke)
    return out


def run(ctx: Context, name: str) -> dict:
    texts = headlines(max(SMOKE_LINES if ctx.smoke else PREDICT_LINES, 10_000))
    runs = {}
    for model in PRESETS:
        try:
            runs[model] = measure_run(ctx, model, texts)
        except RuntimeError as exc:  # a server that did not start
            runs[model] = {"error": str(exc)}
    if all("error" in r for r in runs.values()):
        return failed({"runs": runs})
    return {"seconds_per_level": SMOKE_SECONDS if ctx.smoke else SECONDS, "runs": runs,
            "targets": targets(runs, ctx.smoke)}


def markdown(results: dict) -> list[str]:
    lines = []
    for r in results.values():
        lines.append(f"{r.get('seconds_per_level')} s per level; one headline per request; "
                     "the load generator runs on the same cores as the server.")
        for model, m in r.get("runs", {}).items():
            lines += ["", f"**{model}** (`{m.get('run_dir', '')}`)", ""]
            if "error" in m:
                lines.append(f"error: {m['error']}")
                continue
            lines += ["| server | clients | req/s | p50 ms | p95 ms | p99 ms | mean batch | "
                      "errors | server CPU s | client CPU s |", "|---|" + "---:|" * 9]
            for mode in ("batched", "unbatched"):
                for x in m[mode]["levels"]:
                    lines.append(f"| {mode} | {x['clients']} | {x['requests_per_s']:,} | "
                                 f"{x['p50_ms']} | {x['p95_ms']} | {x['p99_ms']} | "
                                 f"{x['mean_batch']} | {x['errors']} | {x['server_cpu_s']} | "
                                 f"{x['client_cpu_s']} |")
            p = m["predict_file"]
            lines += ["", f"(b) the predict call in-process, batch 64: "
                          f"{m['raw_batch_64']['texts_per_s']:,} texts/s; "
                          f"(c) `{p['command']}`: {p['texts_per_s']:,} texts/s in {p['seconds']} s, "
                          f"peak RSS {p['peak_rss_mib']:,} MiB"]
            if prof := m["batched"].get("profile"):
                shares = ", ".join(f"{k} {v:.0%}" for k, v in prof["shares"].items() if v)
                lines.append(f"\nServer time at {prof['clients']} clients (py-spy, "
                             f"{prof['samples']:,} samples of active Python threads): {shares}")
    return lines
