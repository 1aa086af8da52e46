"""Training, for `bigmodel finetune` and `bigmodel pretrain`: data -> model -> the engine ->
the best checkpoint scored on test. What differs between them is configuration (the task:
classification, masked or causal LM; the monitored metric), not code."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bigmodel_cli.commands.common import build, count_parameters
from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel")


def run(cfg: DictConfig, run_dir: Path, command: str = "finetune") -> dict:
    """Train as configured; returns the summary written to metrics.json."""
    from bigmodel_cli.engine import loggers
    from bigmodel_cli.engine.runtime import seed_everything
    from bigmodel_cli.engine.strategy import Strategy
    from bigmodel_cli.runs import record_invocation

    started = time.time()
    cfg, resume = _resume_point(cfg, run_dir)
    strategy = Strategy.from_environment(cfg.trainer.strategy)
    if strategy.is_main:
        record_invocation(run_dir, resumed=resume is not None)
    settings, device = _settings_and_device(cfg, strategy)
    seed_everything(cfg.seed)
    task = build(cfg.task, "task")
    source, model_cfg, prepared = _prepare_data(cfg, run_dir, task, strategy)
    model, lora = _build_model(cfg, task, model_cfg, prepared, source, run_dir, strategy)
    model = model.to(device)
    logger = loggers.build(cfg, run_dir, enabled=strategy.is_main,  # metrics.jsonl + logger/
                           resumed_from=None if resume is None else resume.parent.parent)
    trainer = _trainer(cfg, command, run_dir, task, model, model_cfg, prepared, settings,
                       device, strategy, logger, lora)
    resume_state = None if resume is None else strategy.restore(
        resume, trainer.model, trainer.optimizers)
    with logger.closed_on_error():
        fit = trainer.fit(_batches(cfg, prepared, "train"), _batches(cfg, prepared, "validation"),
                          resume_state)
    strategy.barrier()  # rank 0 has written its checkpoints
    memory = strategy.memory(trainer.model, trainer.optimizers)  # collective
    if not strategy.is_main:
        return {"paused": fit["paused"], "steps": fit["steps"], "rank": strategy.rank}
    if fit["paused"]:
        log.info("paused after step %d (trainer.pause_after_steps=%d); continue with: "
                 "bigmodel %s trainer.resume=%s", fit["steps"], settings.pause_after_steps,
                 command, run_dir)
        logger.close("paused")
        print(run_dir, flush=True)
        return {"paused": True, "steps": fit["steps"]}
    test_metrics = _score_test(cfg, trainer, prepared, run_dir)
    summary = _summary(cfg, command, run_dir, task, prepared, fit, test_metrics, trainer,
                       strategy, started)
    summary["memory_per_rank"] = memory
    from bigmodel_cli.jsonfiles import write_json

    write_json(run_dir / "metrics.json", summary)
    logger.log_summary(loggers.final_metrics(summary), step=trainer.step)
    logger.log_artifacts(run_dir)
    logger.close("ok")
    print_summary(summary, task)
    print(run_dir, flush=True)  # stdout: the run directory, for scripts
    return summary


def _resume_point(cfg: DictConfig, run_dir: Path) -> tuple[DictConfig, Path | None]:
    """With trainer.resume: the run's own config and the checkpoint to resume from."""
    from bigmodel_cli.engine.checkpoint import read_meta
    from bigmodel_cli.runs import resume_checkpoint

    if not cfg.trainer.resume:
        return cfg, None
    ckpt_dir = resume_checkpoint(cfg.trainer.resume, run_dir)
    return _config_to_resume(cfg, read_meta(ckpt_dir), run_dir), ckpt_dir


def _settings_and_device(cfg: DictConfig, strategy):
    from bigmodel_cli.engine.runtime import select_device
    from bigmodel_cli.engine.trainer import TrainSettings, autocast

    try:
        settings = TrainSettings.from_config(cfg.trainer)
        settings.precision = cfg.device.precision
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    device = select_device(cfg.device.name, cfg.device.threads)
    try:
        autocast(device, settings.precision)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return settings, strategy.device(device)


def _prepare_data(cfg: DictConfig, run_dir: Path, task, strategy):
    """(transfer source, encoder config, prepared data): the data kind loads, splits and
    preprocesses the data (with the source run's tokenizer when there is one)."""
    from bigmodel_cli.commands import transfer
    from bigmodel_cli.data import kinds

    source = transfer.source_run(cfg) if cfg.model.init_from else None
    model_cfg = transfer.model_config(cfg, source)
    ctx = kinds.DataContext(seed=cfg.seed, cache_dir=Path(cfg.cache_dir).expanduser(),
                            max_train_samples=cfg.trainer.max_train_samples,
                            max_eval_samples=cfg.trainer.max_eval_samples, rank=strategy.rank,
                            world_size=strategy.world_size, is_main=strategy.is_main,
                            model_cfg=model_cfg, source=source)
    return source, model_cfg, kinds.module(cfg.data).prepare(cfg, run_dir, ctx, task)


def _build_model(cfg: DictConfig, task, model_cfg, prepared, source, run_dir: Path, strategy):
    """(the task's model around the configured encoder, weights from model.init_from and
    LoRA adapters when model.lora.enabled; the LoRA record for meta.json or None)."""
    from bigmodel_cli.commands import transfer
    from bigmodel_cli.jsonfiles import write_json

    encoder = build(model_cfg, "model", **prepared.model_args)
    try:
        model = task.build_model(encoder, len(prepared.label_names))
    except ValueError as exc:
        raise UsageError(f"task={task.name} with model={cfg.model._target_.rsplit('.', 1)[-1]}: "
                         f"{exc}") from None
    if source is not None:
        report = transfer.load_matching(model, source, prepared.label_names)
        if strategy.is_main:
            write_json(run_dir / "init_from.json", report)
    if cfg.model.freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        log.info("model.freeze_encoder=true: only the head is trained")
    lora = None
    if "lora" in cfg.model and cfg.model.lora.enabled:
        from bigmodel_cli.models import lora as lora_adapters

        if cfg.model.freeze_encoder:
            raise UsageError("model.lora.enabled=true trains adapters inside the encoder, "
                             "model.freeze_encoder=true would freeze them: set only one")
        lora = lora_adapters.enable(model, model_cfg, cfg.model.lora, source)
    return model, lora


def _trainer(cfg: DictConfig, command: str, run_dir: Path, task, model, model_cfg, prepared,
             settings, device, strategy, logger, lora: dict | None):
    """The engine, with the optimizers, the wrapped model and what every checkpoint records."""
    from bigmodel_cli.engine import throughput
    from bigmodel_cli.engine.optim import build_optimizers
    from bigmodel_cli.engine.runtime import versions
    from bigmodel_cli.engine.trainer import Trainer

    # Wrapped first: FSDP replaces the parameters by their shards, which the optimizers update.
    wrapped = strategy.wrap(model, device, compile=cfg.device.compile,
                            precision=cfg.device.precision)
    optimizers = build_optimizers(model, build(cfg.optimizer, "optimizer"), cfg.optimizer,
                                  head_lr_mult=cfg.model.head_lr_mult)
    log.info("model: %s, %s parameters (%s trainable)", cfg.model._target_.rsplit(".", 1)[-1],
             f"{count_parameters(model):,}", f"{count_parameters(model, trainable=True):,}")
    num_labels = len(prepared.label_names)
    checkpoint_meta = {
        "format": 1, "command": command,
        "model": OmegaConf.to_container(model_cfg, resolve=True),
        "model_args": prepared.model_args,
        "task": OmegaConf.to_container(cfg.task, resolve=True),
        "num_labels": num_labels, "label_names": prepared.label_names,
        "data_kind": cfg.data.kind, "encoding": prepared.encoding,
        "max_length": prepared.encoding.get("max_length"), "versions": versions(),
        "config": OmegaConf.to_container(cfg, resolve=True), "lora": lora,
    }
    per_token = throughput.flops_per_token(model, task.name, prepared.encoding.get("max_length"))
    peak, note = throughput.peak_flops(device, settings.precision)
    if per_token:
        log.info("model FLOPs per token: %s (6N + 12 * layers * d_model * context); %s",
                 f"{per_token:,}", f"peak {peak:.3g} FLOP/s ({note})" if peak else note)
    return Trainer(wrapped, task, optimizers, build(cfg.scheduler, "scheduler"), device,
                   settings, run_dir, checkpoint_meta,
                   new_metrics=lambda: task.new_metrics(num_labels), strategy=strategy,
                   logger=logger, flops_per_token=per_token, peak_flops=peak)


def _batches(cfg: DictConfig, prepared, split: str):
    train = split == "train"
    size = cfg.trainer.batch_size if train else cfg.trainer.eval_batch_size
    return prepared.batches(split, size, train)


def _score_test(cfg: DictConfig, trainer, prepared, run_dir: Path) -> dict | None:
    """The best checkpoint on the test split (when the data has one), logged as a record."""
    from bigmodel_cli.engine.plots import training_curves
    from bigmodel_cli.engine.trainer import evaluate

    test_metrics = None
    if "test" in prepared.splits:
        best = trainer.strategy.best_model(trainer.model, run_dir / "checkpoints" / "best",
                                           trainer.device)
        test_metrics = evaluate(best, trainer.task,
                                _batches(cfg, prepared, "test"), trainer.device,
                                trainer.new_metrics(), precision=trainer.settings.precision)
        trainer.logger.log_metrics({"split": "test", "step": trainer.step,
                                    "checkpoint": "best", **test_metrics})
    training_curves(run_dir / "metrics.jsonl", run_dir / "plots" / "training_curves.png",
                    trainer.settings.monitor)
    return test_metrics


def _summary(cfg: DictConfig, command: str, run_dir: Path, task, prepared, fit: dict,
             test_metrics: dict | None, trainer, strategy, started: float) -> dict:
    from bigmodel_cli.engine import throughput
    from bigmodel_cli.engine.checkpoint import unwrap
    from bigmodel_cli.engine.runtime import versions

    world_size = strategy.world_size
    tokens_per_s = round(fit["tokens_per_s"] * world_size, 1)
    flops = throughput.summary(unwrap(trainer.model), task.name,
                               prepared.encoding.get("max_length"), tokens_per_s,
                               trainer.device, trainer.settings.precision, world_size)
    return {
        "command": command, "run_dir": str(run_dir), "task": task.name,
        "model": cfg.model._target_, "data": cfg.data.name, "data_source": prepared.source,
        "data_dir": str(prepared.folder.resolve()) if prepared.folder else None,
        "data_notes": prepared.notes, "splits": {k: len(v) for k, v in prepared.splits.items()},
        "monitor": trainer.settings.monitor, "monitor_mode": trainer.settings.monitor_mode,
        "best_step": fit["best_step"],
        "best_validation": fit["best_validation"], "last_validation": fit["last_validation"],
        "test": test_metrics, "baselines": prepared.baselines, "steps": fit["steps"], "epochs": fit["epochs"],
        "skipped_steps": fit["skipped_steps"],
        "train_time_s": round(fit["train_time_s"], 3),
        "samples_per_s": round(fit["samples_per_s"] * world_size, 1),
        "tokens_per_s": tokens_per_s, **flops, "world_size": world_size,
        "strategy": strategy.name,
        "total_time_s": round(time.time() - started, 3),
        "parameters": count_parameters(trainer.model),
        "trainable_parameters": count_parameters(trainer.model, trainable=True),
        "device": str(trainer.device), "seed": cfg.seed, "versions": versions(),
    }


RESUME_FROM_COMMAND_LINE = ("resume", "pause_after_steps", "progress")
# The training budget may be changed on resume (train on past a finished run, or stop
# earlier); the engine rebuilds the learning-rate schedule for it (Trainer._adapt_budget).
BUDGET = ("max_steps", "epochs")


def _config_to_resume(cfg: DictConfig, meta: dict, run_dir: Path) -> DictConfig:
    """The config the checkpoint was trained with (plus trainer.resume): an exact resume
    needs the same data, model and schedule. Keys given differently now are reported and
    ignored. `.hydra/config.yaml` is rewritten to it, for evaluate and predict."""
    if "config" not in meta:
        raise UsageError("this checkpoint has no saved config; it cannot be resumed")
    saved = OmegaConf.create(meta["config"])
    if "strategy" not in saved.trainer:  # saved before the key existed: it trained as auto
        saved.trainer.strategy = "auto"
    for key in RESUME_FROM_COMMAND_LINE:  # how this invocation runs, not what it trains
        saved.trainer[key] = cfg.trainer[key]
    from hydra.core.hydra_config import HydraConfig

    now = OmegaConf.to_container(cfg, resolve=True)
    given = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    _change_budget(saved, cfg, given, meta)
    own_keys = {f"trainer.{k}" for k in (*RESUME_FROM_COMMAND_LINE, *BUDGET)}
    differs = sorted(key for key in _differences(now, meta["config"])
                     if any(key == g or key.startswith(f"{g}.") for g in given)
                     and key not in own_keys)
    if differs:
        log.warning("resuming with the run's own config; ignored (different now): %s",
                    ", ".join(differs))
    OmegaConf.save(saved, run_dir / ".hydra" / "config.yaml")
    OmegaConf.set_struct(saved, True)
    return saved


def _change_budget(saved: DictConfig, cfg: DictConfig, given: list[str], meta: dict) -> None:
    """trainer.max_steps / trainer.epochs given on the command line replace the run's own."""
    for key in BUDGET:
        if f"trainer.{key}" not in given or cfg.trainer[key] == saved.trainer[key]:
            continue
        value = cfg.trainer[key]
        done = meta["step"] if key == "max_steps" else meta["epoch"] - 1
        if value is not None and value < done:
            raise UsageError(f"trainer.{key}={value}: this run has already trained "
                             f"{meta['step']} steps ({meta['epoch']} epochs begun); a resume "
                             f"can raise its budget but not go below what is done")
        log.info("resuming with a new budget: trainer.%s %s -> %s", key, saved.trainer[key], value)
        saved.trainer[key] = value


def _differences(a: dict, b: dict, prefix: str = "") -> set[str]:
    keys = set(a) | set(b)
    out: set[str] = set()
    for key in keys:
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out |= _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.add(f"{prefix}{key}")
    return out


def print_summary(summary: dict, task) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['command']} {summary['model'].rsplit('.', 1)[-1]} "
                        f"({task.name}) on {summary['data']}")
    table.add_column("metric")
    for col in ("validation (best)", "test"):
        table.add_column(col, justify="right")
    best, test = summary["best_validation"] or {}, summary["test"] or {}
    keys = task.summary_metrics
    for key in keys:
        table.add_row(key, *(f"{m[key]:.4f}" if key in m else "-" for m in (best, test)))
    console = Console(stderr=True)
    console.print(table)
    if summary.get("tokens_per_s"):
        flops = summary["flops_per_token"]
        console.print(f"{summary['tokens_per_s']:,.0f} tokens/s" + (
            f", {flops:,} model FLOPs per token, "
            + (f"MFU {summary['mfu']:.1%}" if summary["mfu"] is not None else summary["mfu_note"])
            if flops else ""))
    trainable = summary["trainable_parameters"]
    console.print(f"{summary['steps']} steps in {summary['train_time_s']:.1f} s "
                  f"({summary['samples_per_s']:,.0f} samples/s), {summary['parameters']:,} "
                  f"parameters" + (f" ({trainable:,} trained)" if trainable != summary["parameters"]
                                   else "") + f", device {summary['device']}")
    console.print(f"run directory: [bold]{summary['run_dir']}[/bold]", soft_wrap=True)
