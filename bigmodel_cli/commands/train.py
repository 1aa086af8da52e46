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
    import torch

    from bigmodel_cli.commands import transfer
    from bigmodel_cli.data import kinds
    from bigmodel_cli.engine import distributed, loggers
    from bigmodel_cli.engine.checkpoint import load_state, load_weights, read_meta, unwrap
    from bigmodel_cli.engine.optim import build_optimizers
    from bigmodel_cli.engine.plots import training_curves
    from bigmodel_cli.engine.runtime import seed_everything, select_device, versions
    from bigmodel_cli.engine.trainer import Trainer, TrainSettings, autocast, evaluate
    from bigmodel_cli.jsonfiles import write_json
    from bigmodel_cli.runs import record_invocation, resume_checkpoint

    started = time.time()
    rank, world_size = distributed.world()
    is_main = rank == 0
    if world_size > 1:
        distributed.init()
    resume_state = None
    if cfg.trainer.resume:
        ckpt_dir = resume_checkpoint(cfg.trainer.resume, run_dir)
        cfg = _config_to_resume(cfg, read_meta(ckpt_dir), run_dir)
        resume_state = load_state(ckpt_dir)
    if is_main:
        record_invocation(run_dir, resumed=resume_state is not None)
    trainer_cfg = cfg.trainer
    try:
        settings = TrainSettings.from_config(trainer_cfg)
        settings.precision = cfg.device.precision
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    device = select_device(cfg.device.name, cfg.device.threads)
    try:
        autocast(device, settings.precision)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    seed_everything(cfg.seed)
    task = build(cfg.task, "task")
    source = transfer.source_run(cfg) if cfg.model.init_from else None
    model_cfg = transfer.model_config(cfg, source)
    ctx = kinds.DataContext(seed=cfg.seed, cache_dir=Path(cfg.cache_dir).expanduser(),
                            max_train_samples=trainer_cfg.max_train_samples,
                            max_eval_samples=trainer_cfg.max_eval_samples, rank=rank,
                            world_size=world_size, is_main=is_main)
    if cfg.data.kind == "text":
        transfer.choose_tokenizer(cfg, model_cfg, source, ctx, run_dir)
    prepared = kinds.module(cfg.data).prepare(cfg, run_dir, ctx, task)
    num_labels = len(prepared.label_names)
    encoder = build(model_cfg, "model", **prepared.model_args)
    try:
        model = task.build_model(encoder, num_labels)
    except ValueError as exc:
        raise UsageError(f"task={task.name} with model={cfg.model._target_.rsplit('.', 1)[-1]}: "
                         f"{exc}") from None
    if source is not None:
        report = transfer.load_matching(model, source, prepared.label_names)
        if is_main:
            write_json(run_dir / "init_from.json", report)
    if cfg.model.freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        log.info("model.freeze_encoder=true: only the head is trained")
    model = model.to(device)
    optimizers = build_optimizers(model, build(cfg.optimizer, "optimizer"), cfg.optimizer,
                                  head_lr_mult=cfg.model.head_lr_mult)
    if cfg.device.compile:  # opt-in; checkpoints are saved from the uncompiled module
        model = torch.compile(model)
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        from bigmodel_cli.engine.optim import sparse_parameters

        if sparse_parameters(model):
            raise UsageError("sparse embedding gradients are not supported under torchrun: "
                             "set model.sparse=false")
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    scheduler_factory = build(cfg.scheduler, "scheduler")
    n_params = count_parameters(model)
    log.info("model: %s, %s parameters", cfg.model._target_.rsplit(".", 1)[-1], f"{n_params:,}")

    def batches(split: str, train: bool):
        size = trainer_cfg.batch_size if train else trainer_cfg.eval_batch_size
        return prepared.batches(split, size, train)

    checkpoint_meta = {
        "format": 1, "command": command,
        "model": OmegaConf.to_container(model_cfg, resolve=True),
        "model_args": prepared.model_args,
        "task": OmegaConf.to_container(cfg.task, resolve=True),
        "num_labels": num_labels, "label_names": prepared.label_names,
        "data_kind": cfg.data.kind, "encoding": prepared.encoding,
        "max_length": prepared.encoding.get("max_length"), "versions": versions(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    logger = loggers.build(cfg, run_dir, enabled=is_main,  # metrics.jsonl + logger/ group
                           resumed_from=ckpt_dir.parent.parent if resume_state else None)
    trainer = Trainer(model, task, optimizers, scheduler_factory, device, settings, run_dir,
                      checkpoint_meta, new_metrics=lambda: task.new_metrics(num_labels),
                      distributed=world_size > 1, is_main=is_main, logger=logger)
    if resume_state is not None:
        load_weights(model, ckpt_dir)
    with logger.closed_on_error():
        fit = trainer.fit(batches("train", True), batches("validation", False), resume_state)
    if world_size > 1:
        distributed.barrier()  # rank 0 has written its checkpoints
        if not is_main:
            return {"paused": fit["paused"], "steps": fit["steps"], "rank": rank}
    if fit["paused"]:
        log.info("paused after step %d (trainer.pause_after_steps=%d); continue with: "
                 "bigmodel %s trainer.resume=%s", fit["steps"], settings.pause_after_steps,
                 command, run_dir)
        logger.close("paused")
        print(run_dir, flush=True)
        return {"paused": True, "steps": fit["steps"]}

    test_metrics = None
    if "test" in prepared.splits:
        load_weights(model, run_dir / "checkpoints" / "best")
        test_metrics = evaluate(unwrap(model), task, batches("test", False), device,
                                task.new_metrics(num_labels), precision=settings.precision)
        logger.log_metrics({"split": "test", "step": trainer.step, "checkpoint": "best",
                            **test_metrics})
    training_curves(run_dir / "metrics.jsonl", run_dir / "plots" / "training_curves.png",
                    settings.monitor)
    summary = {
        "command": command, "run_dir": str(run_dir), "task": task.name,
        "model": cfg.model._target_, "data": cfg.data.name, "data_source": prepared.source,
        "data_dir": str(prepared.folder.resolve()) if prepared.folder else None,
        "data_notes": prepared.notes, "splits": {k: len(v) for k, v in prepared.splits.items()},
        "monitor": settings.monitor, "monitor_mode": settings.monitor_mode,
        "best_step": fit["best_step"],
        "best_validation": fit["best_validation"], "last_validation": fit["last_validation"],
        "test": test_metrics, "steps": fit["steps"], "epochs": fit["epochs"],
        "skipped_steps": fit["skipped_steps"],
        "train_time_s": round(fit["train_time_s"], 3),
        "samples_per_s": round(fit["samples_per_s"] * world_size, 1),
        "tokens_per_s": round(fit["tokens_per_s"] * world_size, 1), "world_size": world_size,
        "total_time_s": round(time.time() - started, 3), "parameters": n_params,
        "device": str(device), "seed": cfg.seed, "versions": versions(),
    }
    write_json(run_dir / "metrics.json", summary)
    logger.log_summary(loggers.final_metrics(summary), step=trainer.step)
    logger.log_artifacts(run_dir)
    logger.close("ok")
    print_summary(summary, task)
    print(run_dir, flush=True)  # stdout: the run directory, for scripts
    return summary


RESUME_FROM_COMMAND_LINE = ("resume", "pause_after_steps", "progress")


def _config_to_resume(cfg: DictConfig, meta: dict, run_dir: Path) -> DictConfig:
    """The config the checkpoint was trained with (plus trainer.resume): an exact resume
    needs the same data, model and schedule. Keys given differently now are reported and
    ignored. `.hydra/config.yaml` is rewritten to it, for evaluate and predict."""
    if "config" not in meta:
        raise UsageError("this checkpoint has no saved config; it cannot be resumed")
    saved = OmegaConf.create(meta["config"])
    for key in RESUME_FROM_COMMAND_LINE:  # how this invocation runs, not what it trains
        saved.trainer[key] = cfg.trainer[key]
    from hydra.core.hydra_config import HydraConfig

    now = OmegaConf.to_container(cfg, resolve=True)
    given = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    differs = sorted(key for key in _differences(now, meta["config"])
                     if any(key == g or key.startswith(f"{g}.") for g in given)
                     and key not in {f"trainer.{k}" for k in RESUME_FROM_COMMAND_LINE})
    if differs:
        log.warning("resuming with the run's own config; ignored (different now): %s",
                    ", ".join(differs))
    OmegaConf.save(saved, run_dir / ".hydra" / "config.yaml")
    OmegaConf.set_struct(saved, True)
    return saved


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


SUMMARY_METRICS = {"classification": ("accuracy", "f1_macro", "precision_macro", "recall_macro", "loss"),
                   "mlm": ("loss", "perplexity", "accuracy"), "clm": ("loss", "perplexity", "accuracy")}


def print_summary(summary: dict, task) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['command']} {summary['model'].rsplit('.', 1)[-1]} "
                        f"({task.name}) on {summary['data']}")
    table.add_column("metric")
    for col in ("validation (best)", "test"):
        table.add_column(col, justify="right")
    best, test = summary["best_validation"] or {}, summary["test"] or {}
    keys = getattr(task, "summary_metrics", None) or SUMMARY_METRICS.get(task.name) or tuple(best)
    for key in keys:
        table.add_row(key, *(f"{m[key]:.4f}" if key in m else "-" for m in (best, test)))
    console = Console(stderr=True)
    console.print(table)
    if summary.get("tokens_per_s"):
        console.print(f"{summary['tokens_per_s']:,.0f} tokens/s")
    console.print(f"{summary['steps']} steps in {summary['train_time_s']:.1f} s "
                  f"({summary['samples_per_s']:,.0f} samples/s), {summary['parameters']:,} "
                  f"parameters, device {summary['device']}")
    console.print(f"run directory: [bold]{summary['run_dir']}[/bold]", soft_wrap=True)
