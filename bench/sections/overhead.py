"""The engine against a plain hand-written PyTorch loop: the same model, data, batches and
initial weights, samples/s of each (the limit the engine's overhead is judged against)."""

from __future__ import annotations

import itertools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import Context

NAMES = ("overhead",)
TITLE = "Engine vs a plain PyTorch loop"
MODELS = ("fasttext", "lstm", "bert")
# Optimizer steps per loop (at most one epoch, 1,407 steps). A fastText step takes ~3 ms, so
# its loops run the whole epoch: 500 steps (under 2 s) moved by +-10% from one loop to the next.
STEPS = {"fasttext": 1400, "lstm": 300, "bert": 100}
# The finetune command line of each (model=bert: the text transformer, from scratch).
COMMANDS = {"fasttext": ["experiment=fasttext_news"], "lstm": ["experiment=lstm_news"],
            "bert": ["model=bert", "data=news"]}
SMOKE_STEPS = 20
# Interleaved rounds of plain and engine per model; the ratio reported is the median of
# the rounds' ratios (each round's pair ran side by side, so a slow spell falls on both).
ROUNDS = {"fasttext": 5, "lstm": 3, "bert": 3}
WARMUP_STEPS = 100  # a plain loop first (threads, allocator, page faults); not reported


@dataclass
class Prepared:
    """THUCNews tokenized as finetune does it (a cache hit), on the device finetune picks."""

    device: Any
    vocab_size: int
    num_labels: int
    encoded: dict     # split -> EncodedSplit
    tiny_val: Any     # 256 validation rows: the engine's evaluation, kept small


def prepare(cfg) -> Prepared:
    from omegaconf import OmegaConf

    from bigmodel_cli.data.sources import load_text_dataset
    from bigmodel_cli.data.text import EncodedSplit, to_tensors, tokenize_splits
    from bigmodel_cli.engine.runtime import select_device

    device = select_device(cfg.device.name, cfg.device.threads)
    cache_dir = Path(cfg.cache_dir).expanduser()
    data = load_text_dataset(cfg.data, seed=cfg.seed, cache_dir=cache_dir)
    selection = {"seed": cfg.seed, "max_train_samples": None, "max_eval_samples": None,
                 "data": OmegaConf.to_container(cfg.data, resolve=True)}  # as finetune: a cache hit
    tokenizer, raw = tokenize_splits(data.splits, data.files, selection, cache_dir,
                                     cfg.data.tokenizer, cfg.data.max_length)
    encoded = {split: to_tensors(ids, labels) for split, (ids, labels) in raw.items()}
    val = encoded["validation"]
    tiny_val = EncodedSplit(val.input_ids[:256], val.lengths[:256], val.labels[:256])
    return Prepared(device, tokenizer.get_vocab_size(), len(data.label_names), encoded, tiny_val)


def sync(p: Prepared) -> None:
    import torch

    if p.device.type == "cuda":
        torch.cuda.synchronize()


def build(p: Prepared, c):
    """The model and optimizers of config `c`, from the same initial weights every time."""
    import torch
    from hydra.utils import get_class, instantiate

    from bigmodel_cli.commands.transfer import model_config
    from bigmodel_cli.engine.optim import build_optimizers
    from bigmodel_cli.tasks.classification import Classifier

    torch.manual_seed(c.seed)
    kwargs = {k: v for k, v in model_config(c, None).items() if k != "_target_"}
    encoder = get_class(c.model._target_)(vocab_size=p.vocab_size, padding_idx=0, **kwargs)
    model = Classifier(encoder, p.num_labels, c.task.head_dropout).to(p.device)
    return model, build_optimizers(model, instantiate(c.optimizer), c.optimizer)


def train_batches(p: Prepared, c):
    from bigmodel_cli.data.batching import TextBatches

    batches = TextBatches(p.encoded["train"], c.trainer.batch_size, shuffle=True, seed=c.seed,
                          bucket_by_length=c.trainer.bucket_by_length)
    batches.set_epoch(1)  # the engine's first epoch: the same batches in the same order
    return batches


def plain(p: Prepared, c, steps: int) -> tuple[int, float]:
    """`steps` steps of a hand-written loop; returns (samples, seconds)."""
    from torch import nn
    from torch.nn import functional as F

    from bigmodel_cli.engine.optim import sparse_parameters
    from bigmodel_cli.engine.trainer import move

    model, optimizers = build(p, c)
    sparse = {id(q) for q in sparse_parameters(model)}
    dense = [q for q in model.parameters() if id(q) not in sparse]  # clipped, as the engine does
    model.train()
    samples, start = 0, time.perf_counter()
    for batch in itertools.islice(train_batches(p, c), steps):
        batch = move(batch, p.device)
        loss = F.cross_entropy(model(batch), batch["labels"])
        loss.backward()
        if c.trainer.grad_clip:
            nn.utils.clip_grad_norm_(dense, c.trainer.grad_clip)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        samples += int(batch["labels"].shape[0])
    sync(p)
    return samples, time.perf_counter() - start


def engine(p: Prepared, c, steps: int) -> dict:
    """The same `steps` steps through the engine's Trainer; returns its fit() summary."""
    from hydra.utils import instantiate

    from bigmodel_cli.data.batching import TextBatches
    from bigmodel_cli.engine.trainer import Trainer, TrainSettings

    model, optimizers = build(p, c)
    task = instantiate(c.task)
    settings = TrainSettings.from_config({**c.trainer, "max_steps": steps})
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, task, optimizers, instantiate(c.scheduler), p.device, settings,
                          Path(run_dir), {}, new_metrics=lambda: task.new_metrics(p.num_labels))
        start = time.perf_counter()
        fit = trainer.fit(train_batches(p, c), TextBatches(p.tiny_val, 256, shuffle=False))
        sync(p)
        return {**fit, "fit_wall_s": time.perf_counter() - start}


def measure(p: Prepared, c, steps: int, rounds: int) -> dict:
    """`rounds` of the plain loop and the engine, interleaved and in alternating order, so
    that a slow spell of a noisy machine falls on both; medians of each, and the median of
    the rounds' paired ratios."""
    import statistics

    plain(p, c, min(WARMUP_STEPS, steps))
    plains, fits = [], []
    for r in range(rounds):
        engine_first = r % 2 == 1
        if engine_first:
            fits.append(engine(p, c, steps))
        plains.append(plain(p, c, steps))
        if not engine_first:
            fits.append(engine(p, c, steps))
    samples = plains[0][0]
    plain_sps = statistics.median(n / s for n, s in plains)
    engine_sps = statistics.median(f["samples_per_s"] for f in fits)
    ratios = [f["samples_per_s"] / (n / s) for f, (n, s) in zip(fits, plains)]
    return {  # engine_fit_wall_s adds one evaluation of 256 rows and checkpoints
        "steps": steps, "rounds": rounds, "samples": samples,
        "same_samples": all(f["train_samples"] == samples for f in fits),
        "plain_s": round(statistics.median(s for _, s in plains), 2),
        "plain_samples_per_s": round(plain_sps, 1),
        "engine_train_s": round(statistics.median(f["train_time_s"] for f in fits), 2),
        "engine_samples_per_s": round(engine_sps, 1),
        "engine_fit_wall_s": round(statistics.median(f["fit_wall_s"] for f in fits), 2),
        "engine_over_plain": round(statistics.median(ratios), 3),
        "ratio_per_round": [round(r, 3) for r in ratios]}


def run(ctx: Context, name: str) -> dict:
    import torch
    from hydra import compose, initialize_config_dir

    from bigmodel_cli.config import conf_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base=None):  # the CLI's own config
        cfgs = {m: compose("finetune", overrides=[*COMMANDS[m], "trainer.progress=off"])
                for m in MODELS}
    p = prepare(cfgs[MODELS[0]])  # data, seed and device are the same for every model
    results: dict = {"device": str(p.device), "torch_threads": torch.get_num_threads()}
    for model in MODELS:
        steps = SMOKE_STEPS if ctx.smoke else STEPS[model]
        rounds = 1 if ctx.smoke else ROUNDS[model]
        print(f"  overhead: {model}, {steps} steps, {rounds} round(s) of the plain loop and "
              "the engine", flush=True)
        results[model] = measure(p, cfgs[model], steps, rounds)
    return results


def markdown(results: dict) -> list[str]:
    o = results["overhead"]
    lines = [f"On {o['device']} with {o['torch_threads']} threads. Same batches, same initial "
             "weights; engine time is its own train time (evaluation excluded); times are "
             "medians of the interleaved rounds, engine/plain the median of the rounds' "
             "ratios (each in brackets).", "",
             "| model | steps | rounds | plain s | plain samples/s | engine s | engine samples/s "
             "| engine/plain |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {m} | {r['steps']} | {r.get('rounds', 1)} | {r['plain_s']} | "
              f"{r['plain_samples_per_s']:,.0f} | {r['engine_train_s']} | "
              f"{r['engine_samples_per_s']:,.0f} | {r['engine_over_plain']:.3f} "
              f"({', '.join(f'{x:.2f}' for x in r['ratio_per_round'])}) |"
              for m, r in o.items() if isinstance(r, dict)]
    return lines
