"""Where a training step of the default LSTM (`model=lstm data=news`) goes, against the
limit of its recurrent kernels on this CPU, and what a fused bidirectional LSTM would change.

  phases      torch.profiler self time per step, grouped: recurrent kernels (forward and
              backward), the within-length reversal, embedding, optimizer, the rest
  bare        the model's own four LSTM layers alone, forward + backward on inputs of the
              batches' shapes: the physical limit of this architecture here
  fused       one nn.LSTM(bidirectional=True) over the same padded batches: its step time,
              and how far its outputs move from the exact (per-text) result

The fused LSTM's backward direction starts in the padding of every shorter text, so its
result depends on what else is in the batch. With BENCH_LSTM_RUN=<run dir> (a trained
default LSTM run) the exactness is measured with trained weights: label agreement on the
validation split; without it, on the weights of the few steps taken here.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from collections import Counter
from pathlib import Path

from harness import Context

from sections import overhead

NAMES = ("lstm_profile",)
TITLE = "LSTM step profile (model=lstm data=news, default batches)"
STEPS, WARMUP, SMOKE_STEPS = 40, 5, 3
EVAL_ROWS = 2048


def _timed(fn, batches) -> float:
    """Median milliseconds of fn(batch) over the batches."""
    times = []
    for batch in batches:
        start = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def _category(name: str) -> str:
    n = name.lower()
    if "rnn" in n or "lstm" in n:
        return "recurrent backward" if "backward" in n else "recurrent forward"
    if "gather" in n or "scatter" in n:
        return "reversal (gather / scatter)"
    if "embedding" in n:
        return "embedding"
    return "other ops"


def _ops(step, batches) -> dict:
    """Self CPU milliseconds per step of the forward and backward ops, by category (the
    optimizer's own ops are timed by _stages)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches:
            step(batch)
    by = Counter()
    for event in prof.key_averages():
        by[_category(event.key)] += event.self_cpu_time_total / 1000 / len(batches)
    return {k: round(v, 2) for k, v in sorted(by.items(), key=lambda kv: -kv[1])}


def _stages(stages, batches) -> dict:
    """Median milliseconds of each stage of a step, timed in order on every batch (CPU ops
    run synchronously, so each stage's time is its own)."""
    times: dict = {name: [] for name, _ in stages}
    for batch in batches:
        state = {"batch": batch}
        for name, fn in stages:
            start = time.perf_counter()
            fn(state)
            times[name].append(time.perf_counter() - start)
    return {name: round(statistics.median(t) * 1000, 2) for name, t in times.items()}


def _fused_from(encoder):
    """A bidirectional nn.LSTM holding the split model's weights (same function on each text
    when there is no padding)."""
    import torch
    from torch import nn

    layers = len(encoder.forward_layers)
    first = encoder.forward_layers[0]
    fused = nn.LSTM(first.input_size, first.hidden_size, num_layers=layers, bidirectional=True,
                    batch_first=True)
    with torch.no_grad():
        for i in range(layers):
            for mod, suffix in ((encoder.forward_layers[i], ""), (encoder.backward_layers[i], "_reverse")):
                for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(fused, f"{w}_l{i}{suffix}").copy_(getattr(mod, f"{w}_l0"))
    return fused


def _pooled(encoder, x, lengths):
    """The encoder's max pooling over each text's own positions."""
    import torch

    mask = (torch.arange(x.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)
    return x.masked_fill(~mask, float("-inf")).amax(dim=1)


def _validation_batches(p, run_dir: str | None):
    """(model, bucketed validation batches): the trained run's model with its own tokenizer
    when a run is given, else None (the caller's model) on this section's tokenization."""
    import torch
    from omegaconf import OmegaConf

    from bigmodel_cli.commands.common import load_run
    from bigmodel_cli.data.batching import TextBatches
    from bigmodel_cli.export.onnx_export import _rows

    if run_dir:
        trained = load_run(run_dir, "best", torch.device("cpu"))
        cfg = OmegaConf.create({"data_path": None, "batch_size": 128, "cache_dir": str(
            Path(os.environ.get("BIGMODEL_CACHE_DIR", Path.home() / ".cache" / "bigmodel")))})
        return trained.model, _rows(cfg, trained, "validation", EVAL_ROWS)
    val = p.encoded["validation"]
    rows = min(EVAL_ROWS, len(val.labels))
    split = type(val)(val.input_ids[:rows], val.lengths[:rows], val.labels[:rows])
    return None, list(TextBatches(split, 128, shuffle=True, seed=1, bucket_by_length=True))


def _exactness(model, batches, trained: bool) -> dict:
    """Fused (padded) against exact features and labels, eval mode."""
    import torch

    fused = _fused_from(model.encoder)
    model.eval()
    diffs, agree, changed, total = [], 0, 0, 0
    with torch.no_grad():
        for batch in batches:
            lengths = batch["lengths"].clamp(min=1)
            exact = model.encoder(batch["input_ids"], lengths)
            out, _ = fused(model.encoder.embedding(batch["input_ids"]))
            approx = _pooled(model.encoder, out, lengths)
            row_diff = (exact - approx).abs().amax(dim=1)
            diffs.append(row_diff)
            changed += int((row_diff > 1e-5).sum())
            agree += int((model.head(exact).argmax(-1) == model.head(approx).argmax(-1)).sum())
            total += len(lengths)
    diff = torch.cat(diffs)
    return {"rows": total, "trained_weights": trained,
            "padding_fraction": _padding(batches),
            "rows_changed_over_1e-5": round(changed / total, 4),
            "max_feature_diff": float(diff.max()), "mean_feature_diff": float(diff.mean()),
            "label_agreement": round(agree / total, 4)}


def _training_stages(model, optimizers, grad_clip: float) -> tuple:
    """The engine's step (as overhead.plain runs it) as named stages over a shared state."""
    from torch import nn
    from torch.nn import functional as F

    dense = list(model.parameters())

    def forward(state):
        state["loss"] = F.cross_entropy(model(state["batch"]), state["batch"]["labels"])

    def optimize(state):
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return (("forward", forward), ("backward", lambda state: state["loss"].backward()),
            ("grad clip", lambda state: nn.utils.clip_grad_norm_(dense, grad_clip)),
            ("optimizer", optimize))


def _encoder_runs(enc) -> dict:
    """Forward + backward of the encoder three ways: as built (each direction its own LSTM,
    exact), the four LSTM layers alone on random inputs of the batch's shape (the kernels'
    limit), and one fused bidirectional nn.LSTM holding the same weights."""
    import torch

    layers = list(zip(enc.forward_layers, enc.backward_layers))
    fused = _fused_from(enc)

    def split(batch):
        enc(batch["input_ids"], batch["lengths"]).sum().backward()

    def bare(batch):
        b, t = batch["input_ids"].shape
        x = torch.randn(b, t, enc.embedding.embedding_dim, requires_grad=True)
        for forward_lstm, backward_lstm in layers:
            x = torch.cat([forward_lstm(x)[0], backward_lstm(x)[0]], dim=-1)
        x.sum().backward()

    def fused_run(batch):
        out, _ = fused(enc.embedding(batch["input_ids"]))
        _pooled(enc, out, batch["lengths"].clamp(min=1)).sum().backward()

    return {"split": split, "bare": bare, "fused": fused_run}


def _padding(batches) -> float:
    import torch

    lengths = torch.cat([b["lengths"] for b in batches])
    return round(1 - float(lengths.sum()) / sum(b["input_ids"].numel() for b in batches), 4)


def run(ctx: Context, name: str) -> dict:
    import torch
    from hydra import compose, initialize_config_dir

    from bigmodel_cli.config import conf_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base=None):
        c = compose("finetune", overrides=["experiment=lstm_news", "trainer.progress=off"])
    p = overhead.prepare(c)
    steps = SMOKE_STEPS if ctx.smoke else STEPS
    batches = list(itertools.islice(overhead.train_batches(p, c), WARMUP + 3 * steps))
    warm, timed, profiled = batches[:WARMUP], batches[WARMUP:WARMUP + steps], batches[-steps:]
    model, optimizers = overhead.build(p, c)
    stages = _training_stages(model, optimizers, c.trainer.grad_clip)
    encoder = _encoder_runs(model.encoder)

    def step(batch):
        state = {"batch": batch}
        for _, fn in stages:
            fn(state)

    def forward_backward(batch):  # the ops the profiler groups; the optimizer is a stage
        state = {"batch": batch}
        for _, fn in stages[:2]:
            fn(state)
        model.zero_grad(set_to_none=True)

    model.train()
    for batch in warm:
        for fn in (step, encoder["bare"], encoder["fused"]):
            fn(batch)
    step_ms = _timed(step, timed)
    ms = {key: _timed(fn, timed) for key, fn in encoder.items()}
    stage_ms = _stages(stages, profiled)
    op_ms = _ops(forward_backward, profiled)
    run_dir = os.environ.get("BENCH_LSTM_RUN")
    trained_model, val_batches = _validation_batches(p, run_dir)
    lengths = torch.cat([b["lengths"] for b in timed])
    return {
        "threads": torch.get_num_threads(), "steps": steps, "batch_size": c.trainer.batch_size,
        "padding_fraction": _padding(timed), "mean_length": round(float(lengths.float().mean()), 1),
        "step_ms": step_ms, "bare_recurrent_ms": ms["bare"],
        "step_over_bare": round(step_ms / ms["bare"], 2),
        "encoder_fwd_bwd_ms": ms["split"], "fused_encoder_fwd_bwd_ms": ms["fused"],
        "fused_speedup": round(ms["split"] / ms["fused"], 2),
        "steps_per_epoch": -(-len(p.encoded["train"].labels) // c.trainer.batch_size),
        "stages_ms": stage_ms, "forward_backward_ops_ms": op_ms,
        "fused_exactness": _exactness(trained_model or model, val_batches, bool(run_dir)),
        "targets": {}}


def markdown(results: dict) -> list[str]:
    r = results["lstm_profile"]
    epoch_s = r["step_ms"] * r["steps_per_epoch"] / 1000
    lines = [f"{r['threads']} threads, batch {r['batch_size']}, median of {r['steps']} steps; "
             f"padding {r['padding_fraction']:.1%} of the batch cells (mean length "
             f"{r['mean_length']}).", "",
             "| measure | ms per step |", "|---|---:|",
             f"| full training step | {r['step_ms']} |",
             f"| the four LSTM layers alone, forward + backward | {r['bare_recurrent_ms']} |",
             f"| encoder forward + backward (split directions, exact) | {r['encoder_fwd_bwd_ms']} |",
             f"| the same with one fused bidirectional nn.LSTM | {r['fused_encoder_fwd_bwd_ms']} |",
             "", f"Step / bare kernels: {r['step_over_bare']}x; one epoch at this step time: "
             f"{epoch_s:.0f} s ({r['steps_per_epoch']} steps). Fused speed-up on the encoder: "
             f"{r['fused_speedup']}x.", "", "| stage of a step | ms |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in r["stages_ms"].items()]
    lines += ["", "| forward + backward ops (profiler self time) | ms per step |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in r["forward_backward_ops_ms"].items()]
    e = r["fused_exactness"]
    lines += ["", f"Fused on padded batches vs exact, {e['rows']} validation rows in "
              f"batches of 128 ({e['padding_fraction']:.1%} padding) "
              f"({'trained' if e['trained_weights'] else 'barely trained'} weights): "
              f"{e['rows_changed_over_1e-5']:.1%} of rows' features moved by more than 1e-5 "
              f"(max {e['max_feature_diff']:.3g}), labels agree on {e['label_agreement']:.2%}."]
    return lines
