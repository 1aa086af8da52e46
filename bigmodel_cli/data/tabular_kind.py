"""data.kind=tabular: rows of features and a target, for regression or classification.

prepare() fits the preprocessing on train (standardisation, one-hot encoding, the target's
scale; bigmodel_cli.data.tabular) and writes it as preprocessing.json with labels.json into
the run directory; evaluate and predict transform new rows with exactly that file. For
regression, labels.json holds the target's name (the one output) and the train target
scale is handed to the task, which keeps it in the model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig

from bigmodel_cli.data.kinds import DataContext, EvalData, Prepared
from bigmodel_cli.data.tensor_batches import batches_factory
from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel.data")

PREPROCESSING = "preprocessing.json"


def _check_task(task) -> None:
    if task.name not in ("classification", "regression"):
        raise UsageError(f"data.kind=tabular supports task=regression or task=classification, "
                         f"not task={task.name}")


def prepare(cfg: DictConfig, run_dir: Path, ctx: DataContext, task) -> Prepared:
    from bigmodel_cli.data.tabular import Preprocessor, load_tabular_dataset
    from bigmodel_cli.jsonfiles import write_json

    _check_task(task)
    data = load_tabular_dataset(cfg.data, task=task.name, seed=ctx.seed,
                                max_train_samples=ctx.max_train_samples,
                                max_eval_samples=ctx.max_eval_samples)
    categorical = list(cfg.data.categorical) if cfg.data.categorical is not None else None
    pre = Preprocessor.fit(data.frames["train"], data.features, data.target, task.name, categorical)
    splits = {s: pre.split(frame, f"{data.source} [{s}]") for s, frame in data.frames.items()}
    if task.name == "regression":
        task.set_target_scale([pre.target_mean], [pre.target_std])
        label_names = [data.target]
    else:
        label_names = pre.label_names
    log.info("data: %s", data.source)
    log.info("splits: %s; %d input columns -> %d features (%d one-hot); target %r (%s)",
             ", ".join(f"{k} {len(v)}" for k, v in splits.items()), len(pre.columns),
             len(pre.feature_names), len(pre.feature_names) - len(pre.numeric), data.target,
             task.name if task.name == "regression" else f"{len(label_names)} labels")
    if ctx.is_main:
        write_json(run_dir / "labels.json", label_names)
        pre.save(run_dir / PREPROCESSING)
    return Prepared(splits=splits, make_batches=batches_factory(ctx),
                    model_args={"num_features": len(pre.feature_names)}, label_names=label_names,
                    encoding={"preprocessing": PREPROCESSING, "columns": pre.columns,
                              "target": data.target},
                    source=data.source, folder=data.folder, notes=data.notes)


def load_preprocessor(run_dir: Path):
    from bigmodel_cli.data.tabular import Preprocessor

    return Preprocessor.load(Path(run_dir) / PREPROCESSING)


def eval_batches(trained, data_cfg: DictConfig, split: str | None, batch_size: int,
                 ctx: DataContext) -> EvalData:
    """One split of `data_cfg`, transformed with the run's saved preprocessing."""
    from bigmodel_cli.data.tabular import load_tabular_dataset
    from bigmodel_cli.data.tensor_batches import TensorBatches
    from bigmodel_cli.data.text_kind import choose_split

    _check_task(trained.task)
    pre = trained.assets
    data = load_tabular_dataset(data_cfg, task=trained.task.name, seed=ctx.seed,
                                max_train_samples=ctx.max_train_samples,
                                max_eval_samples=ctx.max_eval_samples)
    split = choose_split(data.frames, split, data_cfg)
    part = pre.split(data.frames[split], f"{data.source} [{split}]")
    return EvalData(split=split, batches=TensorBatches(part.columns(), batch_size, shuffle=False),
                    label_names=trained.label_names)


def load_assets(run_dir: Path, meta: dict):
    """The run's fitted preprocessing (preprocessing.json)."""
    return load_preprocessor(run_dir)


def read_inputs(cfg: DictConfig, stats: dict) -> Iterator[tuple[dict, dict]]:
    """({"index"}, row as a dict) for `input=` a .csv/.tsv/.parquet file of rows with the
    run's input columns (others, such as the target, are ignored)."""
    from bigmodel_cli.data.tabular import read_table

    if cfg.text is not None or cfg.prompt is not None or cfg.input is None or cfg.input == "-":
        raise UsageError("this run predicts from table rows: give input=ROWS.csv (or .tsv, "
                         ".parquet) with the columns it was trained on")
    frame = read_table(Path(str(cfg.input)).expanduser())
    for index, row in enumerate(frame.to_dict("records")):
        yield {"index": index}, row


def encode_inputs(trained, rows: list[dict], task) -> tuple[dict, list[bool]]:
    """Table rows (dicts of column -> value) -> {"index", "features"}, transformed with the
    run's saved preprocessing (a missing column or a non-numeric value is a UsageError)."""
    import pandas as pd
    import torch

    frame = pd.DataFrame.from_records(rows)
    features = torch.from_numpy(trained.assets.transform(frame, "input rows"))
    return {"index": torch.arange(len(rows)), "features": features}, [False] * len(rows)


def request_inputs(trained, inputs: list) -> list[dict]:
    """A request's `inputs` -> table rows: JSON objects with the run's input columns (other
    keys are ignored, as in predict). Numeric columns take numbers (null: the train mean, as
    a missing value in a file); UsageError naming the row and column otherwise."""
    pre = trained.assets
    for i, row in enumerate(inputs):
        if not isinstance(row, dict):
            raise UsageError(f"inputs[{i}]: expected a table row (a JSON object of column -> "
                             f"value), got {type(row).__name__}")
        missing = [c for c in pre.columns if c not in row]
        if missing:
            raise UsageError(f"inputs[{i}]: no column {', '.join(map(repr, missing))}; the "
                             f"model takes {', '.join(pre.columns)}")
        for col in pre.numeric:
            value = row[col]
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                raise UsageError(f"inputs[{i}].{col}: must be a number (or null), got {value!r}")
            if isinstance(value, float) and value != value:
                raise UsageError(f"inputs[{i}].{col}: must be a number, got NaN")
    return list(inputs)


def input_schema(trained) -> dict:
    pre = trained.assets
    example = {col: pre.categorical[col][0] if col in pre.categorical else
               round(pre.numeric[col][0], 4) for col in pre.columns}
    return {"kind": "tabular", "items": "object of column -> value",
            "columns": {col: "category" if col in pre.categorical else "number"
                        for col in pre.columns},
            "categories": pre.categorical, "example": [example]}
