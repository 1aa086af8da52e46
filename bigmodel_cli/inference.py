"""Inputs -> output records: the one prediction path behind `bigmodel predict` (and any
server or exported backend built on a run directory).

A `Predictor` holds a trained run loaded once. `predict(items, options)` takes a list of
(row, raw input) pairs, where `row` identifies the input ({"index": i, ...}) and `raw` is
what the run's data kind reads (a text, an image path or bytes, a table row as a dict),
and returns one JSON-ready record per input. The data kind turns raw inputs into a batch
(tokenizing, decoding, preprocessing as in training); the task turns the model's outputs
into records (labels and probabilities, a regression value, generated text, mask fills).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import UsageError


@dataclass
class PredictOptions:
    """Per-request settings; None means the task's default (`task.default_top_k`)."""

    top_k: int | None = None
    max_new_tokens: int = 50     # generation (GPT runs)
    temperature: float = 1.0     # 0: greedy
    seed: int = 0                # each input's sampling is seeded by (seed, its index)


@dataclass
class Prediction:
    records: list[dict]
    truncated: list[bool]        # per input: longer than the run's max length, cut as in training


# on_text(position in the list, piece): generated text as it is produced; called with ""
# when an input's generation starts. The pieces of one input add up to its "generated".
OnText = Callable[[int, str], None]


def run_data_kind(run: str | Path, ckpt: str) -> str:
    """The data kind a run was trained on, from its checkpoint's meta.json (no torch)."""
    from bigmodel_cli.engine.checkpoint import read_meta, resolve_checkpoint

    return read_meta(resolve_checkpoint(Path(run), ckpt)).get("data_kind", "text")


class Predictor:
    def __init__(self, trained: Any, device: Any, precision: str = "fp32",
                 backend: str = "torch") -> None:
        from bigmodel_cli.data import kinds

        self.trained = trained
        self.backend = backend
        self.task = trained.task
        self.kind = kinds.module_named(trained.meta.get("data_kind", "text"))
        self.device = device
        self.precision = precision

    @classmethod
    def load(cls, run: str | Path, ckpt: str, device_name: str, threads: int | None,
             precision: str = "fp32", backend: str = "torch") -> Predictor:
        """`backend`: torch, or onnx / onnx-int8, the run's export folder run through
        onnxruntime in the model's place (the task makes the same records from it)."""
        from dataclasses import replace

        from bigmodel_cli.commands.common import load_run
        from bigmodel_cli.engine.runtime import select_device
        from bigmodel_cli.engine.trainer import autocast

        # onnxruntime runs on the CPU here, on `threads`; the torch side follows it on one
        # thread: it only computes the softmax and top-k of the logits, and a torch pool beside
        # onnxruntime's kept spinning on the cores the other one needed (predict at batch 64:
        # 3,600 texts/s with two torch threads, 6,300 with one).
        onnx = backend != "torch"
        device = select_device("cpu" if onnx else device_name, 1 if onnx else threads)
        try:
            autocast(device, precision)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        from bigmodel_cli.export.backend import BACKENDS, export_folder, load_export

        if backend not in BACKENDS:
            raise UsageError(f"backend={backend}: must be one of {', '.join(BACKENDS)}")
        trained = load_run(str(run), ckpt, device)
        if onnx:
            from bigmodel_cli.export.onnx_export import check_exportable

            check_exportable(trained, f"backend={backend}")
            folder = export_folder(trained.run_dir, backend)
            trained = replace(trained, model=load_export(folder, trained.ckpt_dir, threads))
        return cls(trained, device, precision, backend)

    @property
    def label_names(self) -> list[str]:
        return self.trained.label_names

    def check(self, options: PredictOptions) -> PredictOptions:
        """The options with the task's defaults filled in; UsageError when one is out of range."""
        return self.task.check_predict_options(options, self.label_names)

    def predict(self, items: list[tuple[dict, Any]], options: PredictOptions,
                on_text: OnText | None = None) -> Prediction:
        import torch

        from bigmodel_cli.engine.trainer import autocast

        options = self.check(options)
        rows = [row for row, _ in items]
        raws = [raw for _, raw in items]
        batch, truncated = self.kind.encode_inputs(self.trained, raws, self.task)
        batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        with torch.inference_mode(), autocast(self.device, self.precision):
            records = self.task.predict_records(self.trained, batch, rows, raws, options,
                                                self.device, on_text)
        return Prediction(records=records, truncated=truncated)
