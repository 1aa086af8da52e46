#!/usr/bin/env python3
"""Benchmarks for `bigmodel`: startup time, training figures against targets, engine overhead.

    python3 bench/run.py                           all (the full lstm run alone takes ~10 minutes)
    python3 bench/run.py --only startup,overhead   a subset of SECTIONS (below), e.g. cnn_fashion,
                                                   vit_fashion, cnn_digits, mlp_diabetes
    python3 bench/run.py --quick                   trainer=debug runs and 20-step loops: checks
                                                   this script; its figures are not comparable

Prints figures and writes outputs/bench/report.md and report.json. It reports, it does not
test: the exit status is 0 whether or not the targets are met.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "bench"
WORK = OUT / "work"  # the commands run here, so their outputs/ land under outputs/bench/work
SECTIONS = ("startup", "overhead", "fasttext", "lstm", "sweep", "resume", "ddp",
            "transfer", "gpt", "hf", "cnn_fashion", "vit_fashion", "cnn_digits", "mlp_diabetes")
# Images and tables: (finetune arguments, the test metric, its target, a wall-time target in
# seconds or None). Wall time is the whole command: data loading, training, the test split.
BEYOND_TEXT = {
    "cnn_fashion": (["model=cnn", "data=fashion_mnist"], "accuracy", 0.92, 900.0),
    "vit_fashion": (["model=vit", "data=fashion_mnist"], "accuracy", 0.88, None),
    "cnn_digits": (["model=cnn", "data=digits"], "accuracy", 0.98, 60.0),
    "mlp_diabetes": (["model=mlp", "data=diabetes"], "r2", 0.45, None),
}
STARTUP_RUNS = 5
STARTUP = (("help", ["--help"], 0, 0.3),  # (key, arguments, expected exit code, target seconds)
           ("cfg_job", ["finetune", "--cfg", "job"], 0, 1.0),
           ("config_error", ["finetune", "optimizer.lr=abc"], 2, 1.0))
# Test accuracy at least `accuracy` with a train time (metrics.json train_time_s) of at most `train_s`.
TRAIN_TARGETS = {"fasttext": {"accuracy": 0.920, "train_s": 120.0},
                 "lstm": {"accuracy": 0.905, "train_s": 600.0}}
OVERHEAD_STEPS = {"fasttext": 500, "lstm": 300}  # optimizer steps per loop (less than one epoch)
QUICK_STEPS = 20
# Transfer: MLM pretraining on the unlabeled headlines for a fixed number of steps, then a
# 1% labeled subset (1,800 headlines, stratified, seeded) finetuned from scratch and from the
# pretrained weights: same model size, same steps, SEEDS seeds each.
# The model: model=bert at d_model 128 (2.3M parameters), both arms. Pretraining masks 40% of
# the tokens (more predictions per step; in a short budget it learned faster than 15%).
SMALL_BERT = ["model=bert", "model.d_model=128", "model.d_ff=512"]
PRETRAIN_BERT = ["pretrain", *SMALL_BERT, "data=news_corpus", "task.mask_prob=0.4",
                 "model.dropout=0.0", "optimizer.lr=2e-3", "trainer.batch_size=128",
                 "trainer.max_steps=3000", "trainer.eval_every_steps=1500"]
FINETUNE_1PCT = ["finetune", *SMALL_BERT, "data=news", "trainer.max_train_samples=1800",
                 "trainer.epochs=4", "trainer.batch_size=32"]
SEEDS = (1, 2, 3)
TRANSFER_GAIN = 0.05   # pretrained beats scratch by at least 5 points on every seed
# Character-level GPT on Tiny Shakespeare (a small GPT: 4 layers, d_model 128, 128-char blocks).
PRETRAIN_GPT = ["pretrain", "model=gpt", "data=tinyshakespeare", "data.max_length=128",
                "model.d_model=128", "model.d_ff=512", "model.max_len=129",
                "optimizer.lr=2e-3", "trainer.batch_size=32", "trainer.max_steps=1200",
                "trainer.eval_every_steps=400"]
# all-MiniLM-L6-v2 (model=hf) finetuned on 20,000 SST-2 sentences for one epoch.
FINETUNE_HF = ["finetune", "model=hf", "data=sst2", "trainer.max_train_samples=20000",
               "trainer.epochs=1", "trainer.batch_size=32", "trainer.eval_every_steps=200"]
HF_TARGET = 0.85


def bigmodel_command() -> list[str]:
    """The installed `bigmodel` script itself (not a version-manager shim in front of it)."""
    script = Path(sys.executable).with_name("bigmodel")
    found = str(script) if script.is_file() else shutil.which("bigmodel")
    return [found] if found else [sys.executable, "-m", "bigmodel_cli"]


def run_child(args: list[str], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
    """Run `args` in WORK; returns (exit code, wall seconds, peak RSS of that child in MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=WORK, stdout=stdout, stderr=stderr)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not a max over children
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 2**20


def verdict(ok: bool, quick: bool = False) -> str:
    return "n/a (quick)" if quick else "PASS" if ok else "MISS"


def bench_startup(cli: list[str]) -> dict:
    """Median wall time of each command over STARTUP_RUNS runs, with the exit codes seen."""
    results: dict = {"targets": {}}
    for key, args, want_code, target_s in STARTUP:
        runs = [run_child(cli + args) for _ in range(STARTUP_RUNS)]
        seconds = round(statistics.median(wall for _, wall, _ in runs), 3)
        codes = sorted({code for code, _, _ in runs})
        command = "bigmodel " + " ".join(args)
        results[key] = {"command": command, "median_s": seconds, "exit_codes": codes,
                        "target_s": target_s}
        results["targets"][f"`{command}` exits {want_code} in <= {target_s} s"] = verdict(
            codes == [want_code] and seconds <= target_s)
    return results


def bench_training(cli: list[str], model: str, quick: bool) -> dict:
    args = ["finetune", f"model={model}", "data=news"] + (["trainer=debug"] if quick else [])
    stdout_file, log_file = WORK / f"{model}.stdout", WORK / f"{model}.log"
    print(f"  running: bigmodel {' '.join(args)}  (log: {log_file})", flush=True)
    with open(stdout_file, "w") as out, open(log_file, "w") as err:
        code, wall, rss = run_child(cli + args, out, err)
    result: dict = {"command": "bigmodel " + " ".join(args), "exit_code": code,
                    "wall_s": round(wall, 1), "peak_rss_mib": round(rss)}
    lines = stdout_file.read_text().splitlines()
    if code != 0 or not lines:
        print("\n".join("    | " + line for line in log_file.read_text(errors="replace").splitlines()[-10:]))
        return {**result, "error": f"exit code {code}; see {log_file}",
                "targets": {"the run completes": "MISS"}}
    run_dir = WORK / lines[-1].strip()  # the last stdout line: the run directory
    m = json.loads((run_dir / "metrics.json").read_text())
    result.update(run_dir=str(run_dir), test_accuracy=m["test"]["accuracy"],
                  test_f1_macro=m["test"]["f1_macro"],
                  best_validation_accuracy=m["best_validation"]["accuracy"],
                  train_time_s=m["train_time_s"], total_time_s=m["total_time_s"],
                  samples_per_s=m["samples_per_s"], parameters=m["parameters"])
    t = TRAIN_TARGETS[model]
    ok = result["test_accuracy"] >= t["accuracy"] and result["train_time_s"] <= t["train_s"]
    name = f"test accuracy >= {t['accuracy']} with train time <= {t['train_s']:.0f} s"
    return {**result, "targets": {name: verdict(ok, quick)}}


def run_bigmodel(cli: list[str], args: list[str], name: str) -> dict:
    """Run `bigmodel ARGS`; returns its metrics.json (+ wall_s, run_dir), or {"error": ...}."""
    stdout_file, log_file = WORK / f"{name}.stdout", WORK / f"{name}.log"
    print(f"  running: bigmodel {' '.join(args)}  (log: {log_file})", flush=True)
    with open(stdout_file, "w") as out, open(log_file, "w") as err:
        code, wall, rss = run_child(cli + args, out, err)
    lines = stdout_file.read_text().splitlines()
    if code != 0 or not lines:
        print("\n".join("    | " + line for line in log_file.read_text(errors="replace").splitlines()[-10:]))
        return {"command": "bigmodel " + " ".join(args), "error": f"exit code {code}; see {log_file}"}
    run_dir = WORK / lines[-1].strip()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {**metrics, "command": "bigmodel " + " ".join(args), "run_dir": str(run_dir),
            "wall_s": round(wall, 1), "peak_rss_mib": round(rss)}


def _lm_figures(m: dict) -> dict:
    best = m.get("best_validation") or {}
    return {"command": m["command"], "validation_loss": best.get("loss"),
            "validation_perplexity": best.get("perplexity"),
            "test_perplexity": (m.get("test") or {}).get("perplexity"),
            "tokens_per_s": m.get("tokens_per_s"), "steps": m.get("steps"),
            "train_time_s": m.get("train_time_s"), "wall_s": m.get("wall_s"),
            "parameters": m.get("parameters"), "run_dir": m.get("run_dir")}


def bench_transfer(cli: list[str], quick: bool) -> dict:
    """The transfer gain: 1%-label finetuning from scratch vs from an MLM-pretrained BERT."""
    tiny = ["model=bert_tiny", "trainer.max_steps=30", "trainer.max_eval_samples=300"] if quick else []
    pre = run_bigmodel(cli, PRETRAIN_BERT + tiny, "pretrain_bert")
    if "error" in pre:
        return {"pretrain": pre, "targets": {"the pretrain run completes": "MISS"}}
    result: dict = {"pretrain": _lm_figures(pre), "scratch": {}, "pretrained": {}}
    tiny = ["model=bert_tiny", "trainer.epochs=1", "trainer.max_eval_samples=300"] if quick else []
    for seed in SEEDS:
        for kind, extra in (("scratch", []), ("pretrained", [f"model.init_from={pre['run_dir']}"])):
            m = run_bigmodel(cli, FINETUNE_1PCT + tiny + [f"seed={seed}", *extra], f"{kind}_{seed}")
            result[kind][seed] = m.get("test", {}).get("accuracy") if "error" not in m else None
            result.setdefault("commands", {})[kind] = " ".join(
                ["bigmodel", *FINETUNE_1PCT, *tiny, "seed=S", *extra])
            result.setdefault("train_time_s", {})[f"{kind}_{seed}"] = m.get("train_time_s")
    for kind in ("scratch", "pretrained"):
        values = [v for v in result[kind].values() if v is not None]
        result[f"{kind}_mean"] = round(statistics.mean(values), 4) if values else None
        result[f"{kind}_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else None
    gains = [result["pretrained"][s] - result["scratch"][s] for s in SEEDS
             if result["pretrained"][s] is not None and result["scratch"][s] is not None]
    result["gains"] = [round(g, 4) for g in gains]
    ok = len(gains) == len(SEEDS) and min(gains) >= TRANSFER_GAIN
    return {**result, "targets": {f"pretrained beats scratch by >= {TRANSFER_GAIN:.0%} "
                                  "on every seed (1% of THUCNews labels)": verdict(ok, quick)}}


def bench_gpt(cli: list[str], quick: bool) -> dict:
    tiny = ["model=gpt_tiny", "model.max_len=129", "trainer.max_steps=20"] if quick else []
    m = run_bigmodel(cli, PRETRAIN_GPT + tiny, "pretrain_gpt")
    if "error" in m:
        return {**m, "targets": {"the run completes": "MISS"}}
    return _lm_figures(m)


def bench_hf(cli: list[str], quick: bool) -> dict:
    tiny = ["trainer.max_train_samples=200", "trainer.max_steps=5"] if quick else []
    m = run_bigmodel(cli, FINETUNE_HF + tiny, "hf_sst2")
    if "error" in m:
        return {**m, "targets": {"the run completes": "MISS"}}
    acc = m["best_validation"]["accuracy"]
    return {"command": m["command"], "validation_accuracy": acc,
            "train_time_s": m["train_time_s"], "wall_s": m["wall_s"],
            "samples_per_s": m["samples_per_s"], "parameters": m["parameters"],
            "targets": {f"MiniLM on SST-2: validation accuracy >= {HF_TARGET}":
                        verdict(acc >= HF_TARGET and m["wall_s"] <= 900, quick)}}


def bench_beyond_text(cli: list[str], name: str, quick: bool) -> dict:
    """One image or tabular finetune run with its default settings: the test metric, wall time."""
    extra, metric, target, wall_target = BEYOND_TEXT[name]
    args = ["finetune", *extra, "trainer.progress=log"] + (["trainer=debug"] if quick else [])
    m = run_bigmodel(cli, args, name)
    if "error" in m:
        return {**m, "targets": {"the run completes": "MISS"}}
    test = m["test"]
    result = {"command": m["command"], "metric": metric, "test": test,
              "best_validation": m["best_validation"], "train_time_s": m["train_time_s"],
              "total_time_s": m["total_time_s"], "wall_s": m["wall_s"],
              "samples_per_s": m["samples_per_s"], "peak_rss_mib": m["peak_rss_mib"],
              "parameters": m["parameters"], "epochs": m["epochs"], "steps": m["steps"],
              "run_dir": m["run_dir"]}
    ok = test[metric] >= target and (wall_target is None or m["wall_s"] <= wall_target)
    label = f"test {metric} >= {target}" + (f" in <= {wall_target:.0f} s wall" if wall_target else "")
    return {**result, "targets": {label: verdict(ok, quick)}}


def bench_overhead(models: list[str], quick: bool) -> dict:
    """Samples/s of a plain hand-written loop vs the engine: same model, data and batches."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch import nn
    from torch.nn import functional as F

    from bigmodel_cli.commands.transfer import model_config
    from bigmodel_cli.config import conf_dir
    from bigmodel_cli.data.batching import TextBatches
    from bigmodel_cli.data.sources import load_text_dataset
    from bigmodel_cli.data.text import EncodedSplit, to_tensors, tokenize_splits
    from bigmodel_cli.engine.optim import build_optimizers, sparse_parameters
    from bigmodel_cli.engine.runtime import select_device
    from bigmodel_cli.engine.trainer import Trainer, TrainSettings, move
    from bigmodel_cli.models.fasttext import FastTextEncoder
    from bigmodel_cli.models.lstm import LSTMEncoder
    from bigmodel_cli.tasks.classification import Classifier

    encoders = {f"{cls.__module__}.{cls.__name__}": cls for cls in (FastTextEncoder, LSTMEncoder)}
    with initialize_config_dir(config_dir=conf_dir(), version_base=None):  # the CLI's own config
        cfgs = {m: compose("finetune", overrides=[f"model={m}", "data=news", "trainer.progress=off"])
                for m in models}
    cfg = cfgs[models[0]]  # data, seed and device are the same for every model
    device = select_device(cfg.device.name, cfg.device.threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cache_dir = Path(cfg.cache_dir).expanduser()
    data = load_text_dataset(cfg.data, seed=cfg.seed, cache_dir=cache_dir)
    selection = {"seed": cfg.seed, "max_train_samples": None, "max_eval_samples": None,
                 "data": OmegaConf.to_container(cfg.data, resolve=True)}  # as finetune: a cache hit
    tokenizer, raw = tokenize_splits(data.splits, data.files, selection, cache_dir,
                                     cfg.data.tokenizer, cfg.data.max_length)
    encoded = {split: to_tensors(ids, labels) for split, (ids, labels) in raw.items()}
    val = encoded["validation"]
    tiny_val = EncodedSplit(val.input_ids[:256], val.lengths[:256], val.labels[:256])
    num_labels = len(data.label_names)

    def build(c):
        torch.manual_seed(c.seed)  # plain and engine start from the same weights
        kwargs = {k: v for k, v in model_config(c, None).items() if k != "_target_"}
        encoder = encoders[c.model._target_](vocab_size=tokenizer.get_vocab_size(), padding_idx=0,
                                             **kwargs)
        model = Classifier(encoder, num_labels, c.task.head_dropout).to(device)
        return model, build_optimizers(model, instantiate(c.optimizer), c.optimizer)

    def train_batches(c) -> TextBatches:
        batches = TextBatches(encoded["train"], c.trainer.batch_size, shuffle=True, seed=c.seed,
                              bucket_by_length=c.trainer.bucket_by_length)
        batches.set_epoch(1)  # the engine's first epoch: the same batches in the same order
        return batches

    def plain(c, steps: int) -> tuple[int, float]:
        model, optimizers = build(c)
        sparse = {id(p) for p in sparse_parameters(model)}
        dense = [p for p in model.parameters() if id(p) not in sparse]  # clipped, as the engine
        model.train()
        samples, start = 0, time.perf_counter()
        for batch in itertools.islice(train_batches(c), steps):
            batch = move(batch, device)
            loss = F.cross_entropy(model(batch), batch["labels"])
            loss.backward()
            if c.trainer.grad_clip:
                nn.utils.clip_grad_norm_(dense, c.trainer.grad_clip)
            for optimizer in optimizers:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            samples += int(batch["labels"].shape[0])
        sync()
        return samples, time.perf_counter() - start

    def engine(c, steps: int) -> dict:
        model, optimizers = build(c)
        task = instantiate(c.task)
        settings = TrainSettings.from_config({**c.trainer, "max_steps": steps})
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(model, task, optimizers, instantiate(c.scheduler), device, settings,
                              Path(run_dir), {}, new_metrics=lambda: task.new_metrics(num_labels))
            start = time.perf_counter()
            fit = trainer.fit(train_batches(c), TextBatches(tiny_val, 256, shuffle=False))
            sync()
            return {**fit, "fit_wall_s": time.perf_counter() - start}

    results: dict = {"device": str(device), "torch_threads": torch.get_num_threads()}
    for name in models:
        steps = QUICK_STEPS if quick else OVERHEAD_STEPS[name]
        print(f"  overhead: {name}, {steps} steps, plain loop then engine", flush=True)
        plain(cfgs[name], min(10, steps))  # warm-up (threads, allocator); not reported
        samples, seconds = plain(cfgs[name], steps)
        fit = engine(cfgs[name], steps)
        plain_sps, engine_sps = samples / seconds, fit["samples_per_s"]
        results[name] = {  # engine_fit_wall_s adds one evaluation of 256 rows and checkpoints
            "steps": steps, "samples": samples, "same_samples": fit["train_samples"] == samples,
            "plain_s": round(seconds, 2), "plain_samples_per_s": round(plain_sps, 1),
            "engine_train_s": round(fit["train_time_s"], 2),
            "engine_samples_per_s": round(engine_sps, 1),
            "engine_fit_wall_s": round(fit["fit_wall_s"], 2),
            "engine_over_plain": round(engine_sps / plain_sps, 3)}
    return results


# A mid-sized fastText job (20k rows, 1 epoch, dense embeddings so that torchrun can run it)
# for the sweep, resume and DDP figures.
MID_JOB = ["finetune", "model=fasttext", "model.ngram_buckets=50000", "trainer.max_train_samples=20000",
           "trainer.epochs=1", "trainer.progress=log", "device.threads=1"]


def bench_sweep(cli: list[str], quick: bool) -> dict:
    """A 4-job sweep, sequential vs the joblib launcher with 2 parallel jobs."""
    sweep = ["optimizer.lr=0.002,0.005", "model.embedding_dim=50,100"]
    job = MID_JOB + (["trainer.max_train_samples=2000"] if quick else [])
    run_child(cli + job + ["trainer.max_steps=1"])  # fill the tokenized cache first
    results = {}
    for name, extra in (("sequential", []),
                        ("joblib_n_jobs_2", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])):
        # Hydra wants -m before the overrides, which must stay together.
        code, wall, _ = run_child(cli + job[:1] + ["-m"] + job[1:] + sweep + extra)
        results[name] = {"exit_code": code, "wall_s": round(wall, 1)}
    results["speedup"] = round(results["sequential"]["wall_s"] / results["joblib_n_jobs_2"]["wall_s"], 2)
    return results


def _seconds_until(args: list[str], pattern: str) -> float:
    """Wall seconds from starting `args` until `pattern` appears in its stderr (it then runs on)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=WORK, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found = float("nan")
    for line in proc.stderr:
        if pattern in line and found != found:
            found = time.perf_counter() - start
    proc.wait()
    return found


def bench_resume(cli: list[str], quick: bool) -> dict:
    """Time from start to the first new training step: a fresh run vs resuming a paused one."""
    run_dir = WORK / "outputs" / "bench-resume"
    shutil.rmtree(run_dir, ignore_errors=True)
    job = MID_JOB + ["trainer.log_every_steps=1", f"hydra.run.dir={run_dir}"]
    run_child(cli + MID_JOB + ["trainer.max_steps=1"])  # fill the tokenized cache first
    fresh = _seconds_until(cli + job + ["trainer.pause_after_steps=20"], "step 1/")
    resumed = _seconds_until(cli + ["finetune", f"trainer.resume={run_dir}", "trainer.pause_after_steps=5"],
                             "step 21/")
    return {"fresh_start_to_first_step_s": round(fresh, 2),
            "resume_to_first_new_step_s": round(resumed, 2),
            "resume_overhead_s": round(resumed - fresh, 2)}


def bench_ddp(cli: list[str], quick: bool) -> dict:
    """samples/s of 2 gloo processes (torchrun) vs 1 process on the same job."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    job = [a for a in MID_JOB if a != "device.threads=1"] + ["model.sparse=false"]
    if quick:
        job.append("trainer.max_train_samples=2000")
    results = {}
    for name, prefix in (("1_process", cli), ("2_processes_gloo",
                         [torchrun, "--standalone", "--nproc_per_node=2", "-m", "bigmodel_cli"])):
        out = WORK / f"ddp-{name}.stdout"
        with open(out, "w") as fh:
            code, wall, _ = run_child(prefix + job, stdout=fh)
        result = {"exit_code": code, "wall_s": round(wall, 1)}
        if code == 0:
            metrics = json.loads((WORK / out.read_text().split()[-1] / "metrics.json").read_text())
            result.update(samples_per_s=metrics["samples_per_s"], train_time_s=metrics["train_time_s"],
                          test_accuracy=metrics["test"]["accuracy"])
        results[name] = result
    one, two = results["1_process"], results["2_processes_gloo"]
    if "samples_per_s" in one and "samples_per_s" in two:
        results["speedup"] = round(two["samples_per_s"] / one["samples_per_s"], 2)
    return results


def markdown(report: dict) -> str:
    lines = [f"# bigmodel benchmarks{' (--quick)' if report['quick'] else ''}", "",
             f"{report['date']} · {report['machine']} · load average {report['load_average']} "
             f"at start · Python {report['python']}", ""]
    if report["load_average"][0] >= 1.0:
        lines += ["Note: other work was running when this started; timings may be inflated.", ""]
    if s := report.get("startup"):
        lines += [f"## Startup (median of {STARTUP_RUNS} runs, wall seconds)", "",
                  "| command | seconds | target | exit codes |", "|---|---:|---:|---|"]
        lines += [f"| `{r['command']}` | {r['median_s']} | {r['target_s']} | "
                  f"{', '.join(map(str, r['exit_codes']))} |" for k, r in s.items() if k != "targets"]
        lines.append("")
    if o := report.get("overhead"):
        lines += [f"## Engine vs a plain PyTorch loop ({o['device']}, {o['torch_threads']} threads)",
                  "", "Same batches, same initial weights; engine time is its own train time "
                  "(evaluation excluded).", "",
                  "| model | steps | plain s | plain samples/s | engine s | engine samples/s "
                  "| engine/plain |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {m} | {r['steps']} | {r['plain_s']} | {r['plain_samples_per_s']:,.0f} | "
                  f"{r['engine_train_s']} | {r['engine_samples_per_s']:,.0f} | "
                  f"{r['engine_over_plain']:.3f} |" for m, r in o.items() if isinstance(r, dict)]
        lines.append("")
    if trained := [(m, report[m]) for m in ("fasttext", "lstm") if m in report]:
        lines += ["## Training on THUCNews (`bigmodel finetune model=M data=news`)", "",
                  "| model | test acc | test F1 | train s | total s | wall s | samples/s | peak MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for m, r in trained:
            lines.append(f"| {m} | error: {r['error']} | | | | | | |" if "error" in r else
                         f"| {m} | {r['test_accuracy']:.4f} | {r['test_f1_macro']:.4f} | "
                         f"{r['train_time_s']:.1f} | {r['total_time_s']:.1f} | {r['wall_s']:.1f} "
                         f"| {r['samples_per_s']:,.0f} | {r['peak_rss_mib']:,} |")
        lines.append("")
    if s := report.get("sweep"):
        lines += ["## A 4-job sweep (fastText, 20k rows, 1 epoch each)", "",
                  f"- sequential: {s['sequential']['wall_s']} s; joblib launcher, n_jobs=2: "
                  f"{s['joblib_n_jobs_2']['wall_s']} s (speed-up {s['speedup']}x)", ""]
    if r := report.get("resume"):
        lines += ["## Resume", "",
                  f"- start to first training step: fresh {r['fresh_start_to_first_step_s']} s, "
                  f"resuming {r['resume_to_first_new_step_s']} s (overhead {r['resume_overhead_s']} s)", ""]
    if d := report.get("ddp"):
        one, two = d["1_process"], d["2_processes_gloo"]
        lines += ["## DDP on this CPU (torchrun, gloo)", "",
                  f"- 1 process: {one.get('samples_per_s', '-')} samples/s; 2 processes: "
                  f"{two.get('samples_per_s', '-')} samples/s (speed-up {d.get('speedup', '-')}x)", ""]
    if t := report.get("transfer"):
        p = t["pretrain"]
        lines += ["## Pretraining and transfer (BERT, THUCNews headlines)", "",
                  f"- MLM pretraining: `{p['command']}`: {p.get('steps')} steps in "
                  f"{p.get('train_time_s')} s, {p.get('tokens_per_s')} tokens/s; validation "
                  f"perplexity {p.get('validation_perplexity')}, test {p.get('test_perplexity')}"]
        if "scratch" in t:
            for kind in ("scratch", "pretrained"):
                lines.append(f"- {kind}: test accuracy {t[kind + '_mean']} ± {t[kind + '_std']} "
                             f"(seeds: {t[kind]}); `{t['commands'][kind]}`")
            lines.append(f"- gain per seed: {t['gains']}")
        lines.append("")
    if g := report.get("gpt"):
        lines += ["## Character-level GPT on Tiny Shakespeare", "",
                  f"- `{g['command']}`: validation loss {g.get('validation_loss')}, perplexity "
                  f"{g.get('validation_perplexity')}; {g.get('tokens_per_s')} tokens/s, "
                  f"{g.get('train_time_s')} s", ""]
    if h := report.get("hf"):
        lines += ["## all-MiniLM-L6-v2 (model=hf) on SST-2", "",
                  f"- `{h['command']}`: validation accuracy {h.get('validation_accuracy')}, "
                  f"train {h.get('train_time_s')} s, wall {h.get('wall_s')} s", ""]
    if beyond := [(n, report[n]) for n in BEYOND_TEXT if n in report]:
        lines += ["## Images and tables (default settings)", "",
                  "| command | test metric | RMSE | train s | wall s | samples/s | peak MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for _, r in beyond:
            if "error" in r:
                lines.append(f"| `{r['command']}` | error: {r['error']} | | | | | |")
                continue
            rmse = f"{r['test']['rmse']:.2f}" if "rmse" in r["test"] else "-"
            lines.append(f"| `{r['command']}` | {r['metric']} {r['test'][r['metric']]:.4f} | {rmse} "
                         f"| {r['train_time_s']:.1f} | {r['wall_s']:.1f} | {r['samples_per_s']:,.0f} "
                         f"| {r['peak_rss_mib']:,} |")
        lines.append("")
    lines += ["## Targets", ""] + [f"- {status}: {name}" for name, status in report["targets"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="trainer=debug runs and short overhead loops (to check this script)")
    args = parser.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(only) - set(SECTIONS):
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    # The commands run in WORK: point them at the datasets as CI does, and keep them offline.
    shared = ROOT.parent / "shared" / "data"
    os.environ.setdefault("BIGMODEL_DATA_DIR", str(shared if shared.is_dir() else ROOT / "data"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    WORK.mkdir(parents=True, exist_ok=True)
    cli = bigmodel_command()
    report: dict = {"quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
                    "load_average": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "bigmodel": " ".join(cli),
                    "data_dir": os.environ["BIGMODEL_DATA_DIR"], "targets": {}}
    for section in (s for s in SECTIONS if s in only):
        print(f"== {section}", flush=True)
        if section == "startup":
            result = bench_startup(cli)
        elif section == "overhead":
            result = bench_overhead(["fasttext", "lstm"], args.quick)
        elif section in BEYOND_TEXT:
            result = bench_beyond_text(cli, section, args.quick)
        elif section in ("sweep", "resume", "ddp", "transfer", "gpt", "hf"):
            result = {"sweep": bench_sweep, "resume": bench_resume, "ddp": bench_ddp,
                      "transfer": bench_transfer, "gpt": bench_gpt, "hf": bench_hf}[section](
                cli, args.quick)
        else:
            result = bench_training(cli, section, args.quick)
        report[section] = result
        prefix = "" if section in ("startup", "overhead") else f"{section}: "
        report["targets"].update({prefix + k: v for k, v in result.get("targets", {}).items()})
        for name, status in result.get("targets", {}).items():
            print(f"  {status}: {name}")
    previous = OUT / "report.json"
    if previous.is_file() and not args.quick:  # keep the sections this run did not measure
        old = json.loads(previous.read_text())
        if not old.get("quick"):
            for section in SECTIONS:
                if section in old and section not in report:
                    report[section] = old[section]
                    prefix = "" if section in ("startup", "overhead") else f"{section}: "
                    for name, status in old[section].get("targets", {}).items():
                        report["targets"].setdefault(prefix + name, status)
    (OUT / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (OUT / "report.md").write_text(markdown(report))
    print("\n" + markdown(report) + f"\nwritten: {OUT / 'report.md'} and {OUT / 'report.json'}")


if __name__ == "__main__":
    main()
