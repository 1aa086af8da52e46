"""The one training and evaluation engine, shared by every command and model family.

The engine knows nothing about models or tasks beyond this protocol:
  task.forward(model, batch) -> outputs        task.loss(outputs, batch) -> scalar
  task.eval_loss(outputs, batch)               task.new_metrics(...) -> .update/.compute
Batches are dicts of tensors; data sources have `set_epoch`, `iter_from`, `__len__`,
`num_samples`. Every batch has "index" (the rows it holds).

Training state is saved with every `last` checkpoint (optimizers, schedulers, RNG states,
epoch, step, position in the epoch's batch order, early-stopping state), so a run resumes
exactly where it stopped: N steps straight and N/2 + resume + N/2 give the same weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigmodel_cli.engine.loggers import Logger, Loggers, MetricsJsonl
from bigmodel_cli.engine.progress import Progress, choose_mode
from bigmodel_cli.engine.runtime import restore_rng_state, rng_state
from bigmodel_cli.engine.strategy import Strategy
from bigmodel_cli.errors import Interrupted, NonFiniteLoss, UsageError

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
    skip_nonfinite: bool
    pause_after_steps: int | None
    progress: str
    precision: str = "fp32"   # from the device/ group: fp32 | bf16 | fp16

    @classmethod
    def from_config(cls, cfg: Any) -> TrainSettings:
        names = [n for n in cls.__dataclass_fields__ if n != "precision"]
        settings = cls(**{name: cfg[name] for name in names})
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


def autocast(device: torch.device, precision: str):
    """Mixed precision for the forward pass: bf16 (CPU or GPU) or fp16 (CUDA), else nothing."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"device.precision must be fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("device.precision=fp16 needs a CUDA device; use bf16 on CPU")
    return torch.autocast(device_type=device.type,
                          dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.inference_mode()
def evaluate(model: nn.Module, task: Any, batches: Any, device: torch.device,
             metrics: Any, on_batch: Callable[[dict, Any], None] | None = None,
             precision: str = "fp32") -> dict:
    """Run `model` over `batches` and return `metrics.compute()`."""
    was_training = model.training
    model.eval()
    for batch in batches:
        batch = move(batch, device)
        with autocast(device, precision):
            outputs = task.forward(model, batch)
        metrics.update(outputs, batch, task.eval_loss(outputs, batch))
        if on_batch is not None:
            on_batch(batch, outputs)
    model.train(was_training)
    return metrics.compute()


class StopSignals:
    """SIGINT/SIGTERM set a flag that the loop checks after each optimizer step; a second
    SIGINT stops at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: stopping after the current step (again to stop at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. some launchers): leave defaults
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Trainer:
    def __init__(self, model: nn.Module, task: Any, optimizers: list[torch.optim.Optimizer],
                 scheduler_factory: Callable[..., Any], device: torch.device,
                 settings: TrainSettings, run_dir: Path, checkpoint_meta: dict,
                 new_metrics: Callable[[], Any], strategy: Strategy | None = None,
                 logger: Logger | None = None, flops_per_token: int | None = None,
                 peak_flops: float | None = None) -> None:
        self.model = model
        # A transformer LM's FLOPs per token and one device's peak (engine/throughput.py):
        # the progress line's MFU, where both are known.
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.strategy = strategy or Strategy()
        # All ranks agree on stops and take part in saving; only the main one writes.
        self.distributed = self.strategy.distributed
        self.is_main = self.strategy.is_main
        self.task = task
        self.optimizers = optimizers
        self.scheduler_factory = scheduler_factory
        self.device = device
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.checkpoint_meta = checkpoint_meta
        self.new_metrics = new_metrics
        # Where records go (commands/train.py builds it from the logger/ group); without
        # one, metrics.jsonl on the main process only.
        self.logger = logger if logger is not None else Loggers(
            [MetricsJsonl(run_dir)] if self.is_main else [])
        self.step = 0
        self.epoch = 0            # the epoch in progress (1-based once training starts)
        self.batches_done = 0     # micro-batches of that epoch already trained on
        self.best: float | None = None
        self.best_metrics: dict | None = None
        self.best_step: int | None = None
        self.last_val: dict | None = None
        self.bad_evals = 0
        self.samples = 0
        self.tokens = 0           # real (non-padding) tokens trained on, for text batches
        self.train_time = 0.0
        self.skipped_steps = 0
        self.total_steps = 0      # the budget of this fit (saved: a resume may change it)

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything besides the weights that an exact resume needs (weights_only-safe)."""
        return {"optimizers": self.strategy.optimizer_states(self.model, self.optimizers),
                "schedulers": [s.state_dict() for s in self.schedulers],
                "step": self.step, "epoch": self.epoch, "batches_done": self.batches_done,
                "best": self.best, "best_metrics": self.best_metrics, "best_step": self.best_step,
                "last_val": self.last_val, "bad_evals": self.bad_evals, "samples": self.samples,
                "tokens": self.tokens, "train_time": self.train_time, "skipped_steps": self.skipped_steps,
                "scaler": self.scaler.state_dict(), "rng": rng_state(),
                "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        self.strategy.load_optimizer_states(self.model, self.optimizers, state["optimizers"])
        for scheduler, saved in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved)
        for key in ("step", "epoch", "batches_done", "best", "best_metrics", "best_step",
                    "last_val", "bad_evals", "samples", "train_time", "skipped_steps"):
            setattr(self, key, state[key])
        self.tokens = state.get("tokens", 0)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])

    def _adapt_budget(self, before: int, now: int) -> None:
        """A resume with another budget (trainer.max_steps or trainer.epochs changed): the
        learning-rate schedule is rebuilt for the new total number of steps and continues at
        the current step, so the steps still to come follow the schedule a run with this
        budget from the start would have had. Same budget: nothing changes (exact resume)."""
        if before == now:
            return
        if now < self.step:
            raise UsageError(f"the new budget ({now} steps) is below the {self.step} steps this "
                             "run has already trained; give a larger trainer.max_steps or "
                             "trainer.epochs, or leave them as they were")
        old_lr = self.optimizers[0].param_groups[0]["lr"]
        for scheduler in self.schedulers:  # the lr of the current step, by the new schedule
            groups = scheduler.optimizer.param_groups
            for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * factor(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in groups]
        log.info("budget changed from %d to %d steps: the learning-rate schedule is rebuilt "
                 "for %d steps and continues at step %d (lr %.3g; the previous schedule had "
                 "%.3g)", before, now, now, self.step, self.optimizers[0].param_groups[0]["lr"],
                 old_lr)

    # -- helpers ---------------------------------------------------------------------------
    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.settings.monitor_mode == "max" else value < self.best

    def _save(self, name: str, metrics: dict | None, with_state: bool) -> None:
        meta = {**self.checkpoint_meta, "epoch": self.epoch, "step": self.step,
                "metrics": metrics, "monitor": self.settings.monitor, "best": self.best}
        state = self.state_dict() if with_state else None
        # Collective: every rank takes part (FSDP gathers or writes shards), rank 0 writes.
        self.strategy.save(self.run_dir / "checkpoints" / name, self.model, meta, state)

    def _validate(self, validation: Any, progress: Progress) -> bool:
        """Evaluate, log, keep best/last checkpoints. Returns True when training should stop."""
        metrics = evaluate(self.model, self.task, validation, self.device, self.new_metrics(),
                           precision=self.settings.precision)
        self.last_val = metrics
        self.logger.log_metrics({"split": "validation", "epoch": self.epoch, "step": self.step,
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

    def _check_loss(self, value: float) -> bool:
        """False when this step must be skipped; raises NonFiniteLoss unless skipping is on.
        Distributed: a non-finite loss on any rank counts for all of them."""
        finite = math.isfinite(value)
        if self.distributed:
            from bigmodel_cli.engine.distributed import all_reduce_max

            finite = all_reduce_max([0.0 if finite else 1.0])[0] == 0.0
        if finite:
            return True
        if not self.settings.skip_nonfinite:
            raise NonFiniteLoss(
                f"the training loss is {value} at step {self.step + 1} (epoch {self.epoch}); "
                "the last checkpoint before it is kept. Lower optimizer.lr, set "
                "trainer.grad_clip, or skip such steps with trainer.skip_nonfinite=true")
        return False

    def _agreed_signal(self, signals: StopSignals) -> int:
        """The stop signal received (0: none); distributed, any rank's signal stops all."""
        signum = signals.signum or 0
        if self.distributed:
            from bigmodel_cli.engine.distributed import all_reduce_max

            signum = int(all_reduce_max([float(signum)])[0])
        return signum

    # -- the loop --------------------------------------------------------------------------
    def fit(self, train: Any, validation: Any, resume_state: dict | None = None) -> dict:
        s = self.settings
        steps_per_epoch = math.ceil(len(train) / s.grad_accum_steps)
        self.total_steps = s.max_steps or steps_per_epoch * s.epochs
        epochs = math.ceil(self.total_steps / steps_per_epoch)
        self.schedulers = [self.scheduler_factory(o, total_steps=self.total_steps)
                           for o in self.optimizers]
        autocast(self.device, s.precision)  # fail early on a bad precision for this device
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=s.precision == "fp16")
        if resume_state is not None:
            self._resume(resume_state, len(train))
        # Clipping covers dense gradients; sparse embedding rows are bounded by their optimizer.
        self._clipped = [p for o in self.optimizers if not isinstance(o, torch.optim.SparseAdam)
                         for g in o.param_groups for p in g["params"]]
        progress = Progress(choose_mode(s.progress) if self.is_main else "off", self.total_steps,
                            s.log_every_steps, start=self.step)
        log.info("training: %d epochs, %d optimizer steps, %d samples per epoch, device %s",
                 epochs, self.total_steps, train.num_samples, self.device)
        self.model.train()
        self._first_step = self.step
        self._loss_sum, self._loss_count = 0.0, 0  # the train loss since the last log line
        outcome = "stop" if self.step >= self.total_steps else "go on"
        with StopSignals() as signals:
            try:
                while self.epoch < epochs and outcome == "go on":
                    outcome = self._epoch(train, validation, progress, signals, epochs)
            finally:
                progress.close()
        if outcome == "paused":
            return {"paused": True, "steps": self.step}
        return {"paused": False, "train_time_s": self.train_time, "train_samples": self.samples,
                "samples_per_s": self.samples / max(self.train_time, 1e-9),
                "tokens_per_s": self.tokens / max(self.train_time, 1e-9), "steps": self.step,
                "epochs": self.epoch, "best_step": self.best_step, "skipped_steps": self.skipped_steps,
                "best_validation": self.best_metrics, "last_validation": self.last_val}

    def _resume(self, resume_state: dict, batches_per_epoch: int) -> None:
        self.load_state_dict(resume_state)
        if self.batches_done >= batches_per_epoch:  # saved at the end of an epoch
            self.batches_done = 0
        else:
            self.epoch -= 1  # continue inside the epoch it stopped in
        log.info("resumed at step %d (epoch %d, %d batches into it)", self.step,
                 self.epoch + 1, self.batches_done)
        self._adapt_budget(resume_state.get("total_steps", self.total_steps), self.total_steps)

    def _epoch(self, train: Any, validation: Any, progress: Progress, signals: StopSignals,
               epochs: int) -> str:
        """One epoch, or the rest of the one a resume stopped in: "go on", "stop" (the budget
        is spent or early stopping), or "paused" (pause_after_steps). A stop signal saves
        `last` and raises Interrupted."""
        s = self.settings
        self.epoch += 1
        train.set_epoch(self.epoch)
        tick = time.perf_counter()  # train_time counts training, not validation
        micro, step_ok, stop = self.batches_done, True, False
        for batch in train.iter_from(self.batches_done):
            step_ok = self._backward(batch, step_ok)
            micro += 1
            if micro % s.grad_accum_steps and micro < len(train):
                continue
            self._optimizer_step(step_ok, progress)
            step_ok = True
            self.batches_done = micro
            elapsed = max(self.train_time + time.perf_counter() - tick, 1e-9)
            self._report_step(progress, epochs, self.samples / elapsed, self.tokens / elapsed)
            if s.eval_every_steps and self.step % s.eval_every_steps == 0:
                self.train_time += time.perf_counter() - tick
                stop = self._validate(validation, progress)
                tick = time.perf_counter()
            signum = self._agreed_signal(signals)
            paused = bool(s.pause_after_steps) and \
                self.step - self._first_step >= s.pause_after_steps
            if signum or paused:
                self.train_time += time.perf_counter() - tick
                self._save("last", self.last_val, with_state=True)
                if signum:
                    raise Interrupted(signum, self.step)
                return "paused"
            if stop or self.step >= self.total_steps:
                stop = True
                break
        self.train_time += time.perf_counter() - tick
        self.batches_done = len(train) if not stop or micro >= len(train) else micro
        if not s.eval_every_steps or self.step % s.eval_every_steps:
            stop = self._validate(validation, progress) or stop
        self.batches_done = 0
        signum = self._agreed_signal(signals)
        if signum:
            raise Interrupted(signum, self.step)
        return "stop" if stop else "go on"

    def _backward(self, batch: dict, step_ok: bool) -> bool:
        """Forward and backward of one micro-batch; False once a micro-batch of this
        optimizer step had a non-finite loss (the rest of the step is then skipped)."""
        s = self.settings
        batch = move(batch, self.device)
        with autocast(self.device, s.precision):
            outputs = self.task.forward(self.model, batch)
            loss = self.task.loss(outputs, batch)
        value = float(loss.detach())
        step_ok = self._check_loss(value) and step_ok
        if step_ok:
            self.scaler.scale(loss / s.grad_accum_steps).backward()
            self._loss_sum += value
            self._loss_count += 1
        self.samples += int(batch["index"].shape[0])
        if "lengths" in batch:
            self.tokens += int(batch["lengths"].sum())
        return step_ok

    def _optimizer_step(self, step_ok: bool, progress: Progress) -> None:
        """Clip and step (or skip a step with a non-finite loss); the schedules move on."""
        if step_ok:
            if self.settings.grad_clip:
                for optimizer in self.optimizers:
                    self.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(
                    [p for p in self._clipped if p.grad is None or not p.grad.is_sparse],
                    self.settings.grad_clip)
            for optimizer in self.optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
        else:
            self.skipped_steps += 1
            progress.message(f"skipped step {self.step + 1}: non-finite loss")
        for optimizer, scheduler in zip(self.optimizers, self.schedulers):
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        self.step += 1

    def _report_step(self, progress: Progress, epochs: int, speed: float,
                     tokens_per_s: float) -> None:
        """The progress line; every log_every_steps, a train record (all ranks' mean)."""
        mean_loss = self._loss_sum / self._loss_count if self._loss_count else float("nan")
        mfu = (tokens_per_s * self.flops_per_token / self.peak_flops
               if self.flops_per_token and self.peak_flops else None)
        progress.update(self.step, self.epoch, epochs, mean_loss, speed, tokens_per_s, mfu)
        if self.step % self.settings.log_every_steps and self.step != self.total_steps:
            return
        if self.distributed:  # the mean loss and throughput of all ranks
            from bigmodel_cli.engine.distributed import all_reduce_sum

            total_loss, count, rate = all_reduce_sum(
                [self._loss_sum, float(self._loss_count), speed])
            mean_loss, speed = total_loss / max(count, 1.0), rate
        self.logger.log_metrics({
            "split": "train", "epoch": self.epoch, "step": self.step, "loss": mean_loss,
            "lr": self.schedulers[0].get_last_lr()[0], "samples_per_s": speed})
        self._loss_sum, self._loss_count = 0.0, 0
