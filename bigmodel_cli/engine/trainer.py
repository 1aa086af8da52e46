"""The one training and evaluation engine, shared by every command and model family.

The engine knows nothing about models or tasks beyond this protocol:
  task.forward(model, batch) -> outputs        task.loss(outputs, batch) -> scalar
  task.eval_loss(outputs, batch)               task.new_metrics(...) -> .update/.compute
Batches are dicts of tensors; data sources have `set_epoch`, `__len__`, `num_samples`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigmodel_cli.engine.checkpoint import save_checkpoint
from bigmodel_cli.engine.progress import Progress, choose_mode
from bigmodel_cli.engine.runtime import MetricsLog, rng_state

log = logging.getLogger("bigmodel")


@dataclass
class TrainSettings:
    """The trainer/ config group, as the engine reads it."""

    epochs: int
    max_steps: int | None
    grad_accum_steps: int
    grad_clip: float | None
    eval_every_steps: int | None
    log_every_steps: int
    monitor: str
    monitor_mode: str
    early_stopping_patience: int | None
    progress: str

    @classmethod
    def from_config(cls, cfg: Any) -> TrainSettings:
        settings = cls(**{name: cfg[name] for name in cls.__dataclass_fields__})
        if settings.monitor_mode not in ("max", "min"):
            raise ValueError(f"trainer.monitor_mode must be max or min, got {settings.monitor_mode!r}")
        if settings.grad_accum_steps < 1:
            raise ValueError("trainer.grad_accum_steps must be at least 1")
        if settings.epochs < 1 and not settings.max_steps:
            raise ValueError("trainer.epochs must be at least 1 (or set trainer.max_steps)")
        return settings


def move(batch: dict, device: torch.device) -> dict:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


@torch.inference_mode()
def evaluate(model: nn.Module, task: Any, batches: Any, device: torch.device,
             metrics: Any, on_batch: Callable[[dict, Any], None] | None = None) -> dict:
    """Run `model` over `batches` and return `metrics.compute()`."""
    was_training = model.training
    model.eval()
    for batch in batches:
        batch = move(batch, device)
        outputs = task.forward(model, batch)
        metrics.update(outputs, batch, task.eval_loss(outputs, batch))
        if on_batch is not None:
            on_batch(batch, outputs)
    model.train(was_training)
    return metrics.compute()


class Trainer:
    def __init__(self, model: nn.Module, task: Any, optimizers: list[torch.optim.Optimizer],
                 scheduler_factory: Callable[..., Any], device: torch.device,
                 settings: TrainSettings, run_dir: Path, checkpoint_meta: dict,
                 new_metrics: Callable[[], Any]) -> None:
        self.model = model
        self.task = task
        self.optimizers = optimizers
        self.scheduler_factory = scheduler_factory
        self.device = device
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.checkpoint_meta = checkpoint_meta
        self.new_metrics = new_metrics
        self.metrics_log = MetricsLog(run_dir)
        self.step = 0
        self.epoch = 0
        self.best: float | None = None
        self.best_metrics: dict | None = None
        self.best_step: int | None = None
        self.last_val: dict | None = None
        self.bad_evals = 0

    # -- helpers ---------------------------------------------------------------------------
    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.settings.monitor_mode == "max" else value < self.best

    def _save(self, name: str, metrics: dict | None, with_state: bool) -> None:
        meta = {**self.checkpoint_meta, "epoch": self.epoch, "step": self.step,
                "metrics": metrics, "monitor": self.settings.monitor, "best": self.best}
        state = None
        if with_state:
            state = {"optimizers": [o.state_dict() for o in self.optimizers],
                     "schedulers": [s.state_dict() for s in self.schedulers], "step": self.step,
                     "epoch": self.epoch, "best": self.best, "bad_evals": self.bad_evals,
                     "rng": rng_state()}
        save_checkpoint(self.run_dir / "checkpoints" / name, self.model, meta, state)

    def _validate(self, validation: Any, progress: Progress) -> bool:
        """Evaluate, log, keep best/last checkpoints. Returns True when training should stop."""
        metrics = evaluate(self.model, self.task, validation, self.device, self.new_metrics())
        self.last_val = metrics
        self.metrics_log.write({"split": "validation", "epoch": self.epoch, "step": self.step,
                                **metrics})
        monitor = self.settings.monitor
        if monitor not in metrics:
            raise ValueError(f"trainer.monitor={monitor!r} is not a validation metric; "
                             f"choose one of {', '.join(sorted(metrics))}")
        value = metrics[monitor]
        improved = self._improved(value)
        progress.message(
            f"validation  epoch {self.epoch}  step {self.step}  "
            + "  ".join(f"{k} {metrics[k]:.4f}" for k in dict.fromkeys(("loss", monitor, "f1_macro"))
                        if k in metrics)
            + ("  (best)" if improved else ""))
        if improved:
            self.best, self.best_metrics, self.best_step = value, metrics, self.step
            self.bad_evals = 0
            self._save("best", metrics, with_state=False)
        else:
            self.bad_evals += 1
        self._save("last", metrics, with_state=True)
        patience = self.settings.early_stopping_patience
        if patience is not None and self.bad_evals >= patience:
            progress.message(f"early stopping: no {monitor} improvement in {patience} evaluations")
            return True
        return False

    # -- the loop --------------------------------------------------------------------------
    def fit(self, train: Any, validation: Any) -> dict:
        s = self.settings
        steps_per_epoch = math.ceil(len(train) / s.grad_accum_steps)
        total_steps = s.max_steps or steps_per_epoch * s.epochs
        epochs = math.ceil(total_steps / steps_per_epoch)
        self.schedulers = [self.scheduler_factory(o, total_steps=total_steps)
                           for o in self.optimizers]
        # Clipping covers dense gradients; sparse embedding rows are bounded by their optimizer.
        clipped = [p for o in self.optimizers if not isinstance(o, torch.optim.SparseAdam)
                   for g in o.param_groups for p in g["params"]]
        progress = Progress(choose_mode(s.progress), total_steps, s.log_every_steps)
        log.info("training: %d epochs, %d optimizer steps, %d samples per epoch, device %s",
                 epochs, total_steps, train.num_samples, self.device)
        self.model.train()
        samples, train_time, stop = 0, 0.0, False
        loss_sum, loss_count = 0.0, 0
        try:
            while self.epoch < epochs and not stop:
                self.epoch += 1
                train.set_epoch(self.epoch)
                tick = time.perf_counter()
                micro = 0
                for batch in train:
                    batch = move(batch, self.device)
                    outputs = self.task.forward(self.model, batch)
                    loss = self.task.loss(outputs, batch)
                    (loss / s.grad_accum_steps).backward()
                    loss_sum += float(loss.detach())
                    loss_count += 1
                    samples += int(batch["lengths"].shape[0])
                    micro += 1
                    if micro % s.grad_accum_steps and micro < len(train):
                        continue
                    if s.grad_clip:
                        nn.utils.clip_grad_norm_(
                            [p for p in clipped if p.grad is None or not p.grad.is_sparse],
                            s.grad_clip)
                    for optimizer, scheduler in zip(self.optimizers, self.schedulers):
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                    self.step += 1
                    elapsed = train_time + time.perf_counter() - tick
                    speed = samples / max(elapsed, 1e-9)
                    progress.update(self.step, self.epoch, epochs, loss_sum / loss_count, speed)
                    if self.step % s.log_every_steps == 0 or self.step == total_steps:
                        self.metrics_log.write({
                            "split": "train", "epoch": self.epoch, "step": self.step,
                            "loss": loss_sum / loss_count, "lr": self.schedulers[0].get_last_lr()[0],
                            "samples_per_s": speed})
                        loss_sum, loss_count = 0.0, 0
                    if s.eval_every_steps and self.step % s.eval_every_steps == 0:
                        train_time += time.perf_counter() - tick
                        stop = self._validate(validation, progress)
                        tick = time.perf_counter()
                    if stop or self.step >= total_steps:
                        stop = True
                        break
                train_time += time.perf_counter() - tick
                if not s.eval_every_steps or self.step % s.eval_every_steps:
                    stop = self._validate(validation, progress) or stop
        finally:
            progress.close()
        return {"train_time_s": train_time, "train_samples": samples,
                "samples_per_s": samples / max(train_time, 1e-9), "steps": self.step,
                "epochs": self.epoch, "best_step": self.best_step,
                "best_validation": self.best_metrics, "last_validation": self.last_val}
