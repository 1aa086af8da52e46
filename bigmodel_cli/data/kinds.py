"""Kinds of data, and what the commands need from each.

`data.kind` (text | image | audio | tabular | interactions) picks a module in bigmodel_cli.data that provides:

  prepare(cfg, run_dir, ctx, task) -> Prepared
      Load, split and preprocess the training data (fitting what is fitted on train: a
      tokenizer, normalisation statistics), write the artifacts evaluate/predict need into
      run_dir (when ctx.is_main), and say how to build batches and the encoder.
  eval_batches(trained, data_cfg, split, batch_size, ctx) -> EvalData
      The batches of one split of a dataset, preprocessed as the trained run was.
  load_assets(run_dir, meta) -> what reading raw inputs needs (a tokenizer, the saved
      preprocessing), kept in the loaded run as `trained.assets`.
  read_inputs(cfg, stats) -> iterator of (row, raw)
      `bigmodel predict`'s inputs, lazily: what identifies each ({"index", ...}) and the
      raw input itself (a text, an image path, a table row as a dict).
  encode_inputs(trained, raws, task) -> (batch, truncated flags)
      Raw inputs (from a file or a request) -> one batch, preprocessed as in training.

For serving, a kind also provides request_inputs(trained, inputs) (a request's JSON inputs ->
raws, UsageError naming a bad one) and input_schema(trained); DECODES_REQUESTS = True when
request_inputs does real work (decoding images), so that serve runs it off the event loop.

The commands do the rest the same way for every kind: the engine trains and evaluates on
dicts of tensors, the task owns loss and metrics.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import UsageError

KINDS = {"text": "bigmodel_cli.data.text_kind", "image": "bigmodel_cli.data.image_kind",
         "audio": "bigmodel_cli.data.audio_kind",
         "tabular": "bigmodel_cli.data.tabular_kind",
         "interactions": "bigmodel_cli.data.interactions_kind"}


@dataclass
class DataContext:
    """Settings of the run that shape the data, besides data/ itself."""

    seed: int
    cache_dir: Path
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    rank: int = 0
    world_size: int = 1
    is_main: bool = True
    model_cfg: Any = None               # the encoder's config (a pretrained model may bring
    source: Any = None                  # its tokenizer); the model.init_from run, if any
    tokenizer_file: Path | None = None  # use this tokenizer instead of training one
    add_special_tokens: bool = False    # a pretrained tokenizer's [CLS] ... [SEP]


@dataclass
class Prepared:
    splits: dict[str, Any]                          # split -> data held in memory
    make_batches: Callable[[Any, int, bool], Any]   # (split data, batch size, train) -> batches
    model_args: dict                                # keyword arguments of the encoder
    label_names: list[str]                          # [] for unlabeled data
    encoding: dict                                  # how inputs were preprocessed (checkpoint meta)
    source: str = ""
    folder: Path | None = None
    notes: list[str] = field(default_factory=list)
    # reference figures on the same splits ({split: {baseline: metrics}}), in metrics.json
    baselines: dict = field(default_factory=dict)

    def batches(self, split: str, batch_size: int, train: bool) -> Any:
        return self.make_batches(self.splits[split], batch_size, train)


@dataclass
class EvalData:
    split: str
    batches: Any
    label_names: list[str]


def module(data_cfg) -> Any:
    return module_named(data_cfg.kind)


def module_named(kind: str) -> Any:
    if kind not in KINDS:
        raise UsageError(f"data.kind={kind!r}: choose one of {', '.join(KINDS)}")
    return importlib.import_module(KINDS[kind])
