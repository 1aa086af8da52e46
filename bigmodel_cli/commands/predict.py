"""bigmodel predict: what a trained run makes of raw inputs, as JSON lines.

The run's data kind reads the inputs (text runs: `text=`, `prompt=`, `input=FILE` or
`input=-`; image and audio runs: a file, a folder or a list of paths; tabular runs: a file of rows),
and `bigmodel_cli.inference.Predictor` turns each chunk of `batch_size` inputs into records,
whose shape the task owns:
  classification  {"index", "label", "label_id", "top_k": [{"label", "prob"}, ...]}
                  (image rows also carry their "path")
  regression      {"index", "prediction"}, in the target's original units
  causal LM       {"index", "prompt", "generated"}; format=text (its default) streams the
                  text as it is generated
  masked LM       {"index", "text", "filled", "masks": [...]}
  ctc (audio)     {"index", "path", "text"}
Inputs stream in chunks, so a large file runs in constant memory. Texts longer than the
run's data.max_length tokens are truncated, as they were in training (a note gives the count).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from itertools import islice
from pathlib import Path

from omegaconf import DictConfig

from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    from bigmodel_cli.data import kinds
    from bigmodel_cli.inference import PredictOptions, Predictor, run_data_kind

    if cfg.format not in (None, "jsonl", "text"):
        raise UsageError(f"format={cfg.format}: must be jsonl or text")
    options = PredictOptions(top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
                             temperature=cfg.temperature, seed=cfg.seed)
    stats = {"empty": 0, "truncated": 0, "predicted": 0}
    inputs = kinds.module_named(run_data_kind(cfg.run, cfg.ckpt)).read_inputs(cfg, stats)
    first = list(islice(inputs, 1))  # input errors surface before the model loads
    predictor = Predictor.load(cfg.run, cfg.ckpt, cfg.device.name, cfg.device.threads,
                               cfg.device.precision, cfg.backend)
    predictor.check(options)
    # Generated text streams as plain text unless format=jsonl asks for records.
    streams = predictor.task.generates_text and (cfg.format or "text") == "text"
    with ExitStack() as stack:
        out = _output(cfg, stack)
        writer = _TextStream(out) if streams else None
        for chunk in _chunks(first, inputs, cfg.batch_size):
            prediction = predictor.predict(chunk, options,
                                           on_text=writer.callback(chunk) if writer else None)
            stats["truncated"] += sum(prediction.truncated)
            stats["predicted"] += len(chunk)
            if writer is None:
                for record in prediction.records:
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
        if writer is not None:
            writer.finish()
    if stats["empty"]:
        log.info("note: skipped %d empty input line(s)", stats["empty"])
    if stats["truncated"]:
        log.info("note: %d input(s) longer than the run's data.max_length (texts) or "
                 "data.clip_seconds (audio clips) were truncated, as in training", stats["truncated"])
    log.info("predicted %d input(s)%s", stats["predicted"], f" -> {cfg.output}" if cfg.output else "")
    return stats


class _TextStream:
    """format=text for generation: each prompt, then its continuation as it is produced;
    a blank line between prompts."""

    def __init__(self, out) -> None:
        self.out = out
        self.started = False
        self.last = "\n"

    def callback(self, chunk: list):
        def on_text(position: int, piece: str) -> None:
            if piece == "":  # a new prompt
                if self.started:
                    self._write(("" if self.last == "\n" else "\n") + "\n\n")
                self.started = True
                self._write(chunk[position][1])
            else:
                self._write(piece)
        return on_text

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self.last = text[-1]

    def finish(self) -> None:
        if self.started and self.last != "\n":
            self._write("\n")


def _output(cfg, stack: ExitStack):
    """Where predictions go: `output=FILE` (its folder is created), else stdout."""
    if not cfg.output:
        return sys.stdout
    path = Path(cfg.output).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return stack.enter_context(open(path, "w", encoding="utf-8"))


def _chunks(first: list, inputs: Iterator, size: int) -> Iterator[list]:
    chunk = first + list(islice(inputs, size - 1)) if first else []
    while chunk:
        yield chunk
        chunk = list(islice(inputs, size))
