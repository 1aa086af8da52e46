"""Training progress: a rich bar on a terminal, plain periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("bigmodel")


def choose_mode(setting: str) -> str:
    if setting == "auto":
        return "bar" if sys.stderr.isatty() else "log"
    if setting not in ("bar", "log", "off"):
        raise ValueError(f"trainer.progress must be auto, bar, log or off, got {setting!r}")
    return setting


class Progress:
    """Shows epoch, step, loss, samples/s (tokens/s for text, and MFU where it is known) and
    ETA. `update` is called once per optimizer step."""

    def __init__(self, mode: str, total_steps: int, log_every: int, start: int = 0) -> None:
        self.mode = mode
        self.total = total_steps
        self.first = start
        self.log_every = max(1, log_every)
        self.start = time.perf_counter()
        self._bar = None
        if mode == "bar":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} samples/s"),
                TextColumn("{task.fields[tokens]}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )
            self._task = self._bar.add_task("train", total=total_steps, completed=start,
                                            loss="-", speed="-", tokens="")
            self._bar.start()

    def update(self, step: int, epoch: int, epochs: int, loss: float, samples_per_s: float,
               tokens_per_s: float | None = None, mfu: float | None = None) -> None:
        tokens = "" if not tokens_per_s else f"{tokens_per_s:,.0f} tokens/s"
        if tokens and mfu is not None:
            tokens += f"  MFU {mfu:.1%}"
        if self.mode == "bar":
            self._bar.update(self._task, completed=step, description=f"epoch {epoch}/{epochs}",
                             loss=f"{loss:.4f}", speed=f"{samples_per_s:,.0f}", tokens=tokens)
        elif self.mode == "log" and (step % self.log_every == 0 or step == self.total):
            elapsed = time.perf_counter() - self.start
            eta = elapsed / max(step - self.first, 1) * (self.total - step)
            log.info("epoch %d/%d  step %d/%d  loss %.4f  %.0f samples/s  %selapsed %s  eta %s",
                     epoch, epochs, step, self.total, loss, samples_per_s,
                     f"{tokens}  " if tokens else "", _fmt(elapsed), _fmt(eta))

    def message(self, text: str) -> None:
        if self.mode == "bar":
            self._bar.console.print(text)
            logging.getLogger("bigmodel.file").debug(text)
        else:
            log.info(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
