"""Tabular data: rows of feature columns and one target column, from scikit-learn's bundled
diabetes data or from your CSV/TSV/Parquet files, held in memory as float32 tensors.

Preprocessing is fitted on train only and saved in the run directory as preprocessing.json;
evaluate and predict apply exactly the same transformation:
  numeric columns      standardised: (x - train mean) / train std (std 0 -> 1); a missing
                       value becomes the train mean (0 after standardising)
  categorical columns  one-hot, one column per value seen in train (sorted); a value not
                       seen in train (or a missing one) is all zeros. Non-numeric columns are
                       categorical, and so are those named in data.categorical
  regression target    standardised the same way for training; predictions and metrics are
                       in the target's original units
  classification       label names are the sorted values of the target in train
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from bigmodel_cli.data import splits as splitting
from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel.data")

SPLITS = ("train", "validation", "test")


@dataclass
class TabularSplit:
    features: torch.Tensor               # float32 [N, F]
    labels: torch.Tensor | None = None   # int64 [N] (classification)
    targets: torch.Tensor | None = None  # float32 [N, T] (regression, original units)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def columns(self) -> dict[str, torch.Tensor]:
        out = {"features": self.features}
        if self.labels is not None:
            out["labels"] = self.labels
        if self.targets is not None:
            out["targets"] = self.targets
        return out


@dataclass
class TabularDataset:
    frames: dict[str, Any]               # split -> pandas DataFrame (features + target)
    features: list[str]
    target: str
    source: str
    folder: Path | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Preprocessor:
    """Standardisation and one-hot encoding fitted on train; saved as JSON."""

    def __init__(self, numeric: dict[str, tuple[float, float]], categorical: dict[str, list[str]],
                 columns: list[str], target: str, task: str, label_names: list[str],
                 target_mean: float = 0.0, target_std: float = 1.0) -> None:
        self.numeric = numeric          # column -> (mean, std)
        self.categorical = categorical  # column -> values seen in train
        self.columns = columns          # the input columns, in order
        self.target, self.task, self.label_names = target, task, label_names
        self.target_mean, self.target_std = target_mean, target_std

    @property
    def feature_names(self) -> list[str]:
        names = []
        for col in self.columns:
            names += ([f"{col}={v}" for v in self.categorical[col]] if col in self.categorical
                      else [col])
        return names

    @classmethod
    def fit(cls, train, columns: list[str], target: str, task: str,
            categorical: list[str] | None) -> Preprocessor:
        import pandas as pd

        forced = set(categorical or [])
        numeric, cats = {}, {}
        for col in columns:
            series = train[col]
            if col in forced or not (pd.api.types.is_numeric_dtype(series)
                                     and not pd.api.types.is_bool_dtype(series)):
                cats[col] = sorted({_category(v) for v in series if not _missing(v)})
            else:
                values = series.astype("float64")
                mean = float(values.mean()) if values.notna().any() else 0.0
                std = float(values.std(ddof=0)) if values.notna().sum() > 1 else 1.0
                numeric[col] = (mean, std if std > 1e-12 else 1.0)
        label_names: list[str] = []
        t_mean, t_std = 0.0, 1.0
        if task == "classification":
            label_names = _label_names(train[target])
        else:
            y = _numeric_target(train[target], "train")
            t_mean, t_std = float(y.mean()), float(y.std())
            t_std = t_std if t_std > 1e-12 else 1.0
        return cls(numeric, cats, columns, target, task, label_names, t_mean, t_std)

    def transform(self, frame, where: str) -> np.ndarray:
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise UsageError(f"{where}: no column {', '.join(map(repr, missing))}; the model "
                             f"takes {', '.join(self.columns)} (its columns are "
                             f"{', '.join(map(str, frame.columns))})")
        parts = []
        for col in self.columns:
            if col in self.categorical:
                values = [_category(v) if not _missing(v) else None for v in frame[col]]
                index = {v: i for i, v in enumerate(self.categorical[col])}
                onehot = np.zeros((len(frame), len(index)), dtype=np.float32)
                for row, v in enumerate(values):
                    if v in index:
                        onehot[row, index[v]] = 1.0
                parts.append(onehot)
            else:
                mean, std = self.numeric[col]
                try:
                    x = frame[col].astype("float64").to_numpy()
                except (TypeError, ValueError):
                    raise UsageError(f"{where}: column {col!r} must be numeric, as in train "
                                     f"(found {frame[col].dropna().iloc[0]!r})") from None
                x = np.where(np.isnan(x), mean, x)
                parts.append(((x - mean) / std).astype(np.float32)[:, None])
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0), np.float32)

    def split(self, frame, where: str, with_target: bool = True) -> TabularSplit:
        features = torch.from_numpy(self.transform(frame, where))
        if not with_target:
            return TabularSplit(features)
        if self.target not in frame.columns:
            raise UsageError(f"{where}: no target column {self.target!r} (set data.target); its "
                             f"columns are {', '.join(map(str, frame.columns))}")
        if self.task == "classification":
            index = {name: i for i, name in enumerate(self.label_names)}
            labels = []
            for v in frame[self.target]:
                key = _category(v)
                if key not in index:
                    raise UsageError(f"{where}: label {v!r} is not one of the "
                                     f"{len(self.label_names)} labels seen in train")
                labels.append(index[key])
            return TabularSplit(features, labels=torch.tensor(labels, dtype=torch.int64))
        y = _numeric_target(frame[self.target], where)
        return TabularSplit(features, targets=torch.from_numpy(y.astype(np.float32))[:, None])

    def to_dict(self) -> dict:
        return {"format": 1, "task": self.task, "columns": self.columns, "target": self.target,
                "numeric": {c: {"mean": m, "std": s} for c, (m, s) in self.numeric.items()},
                "categorical": self.categorical, "label_names": self.label_names,
                "target_mean": self.target_mean, "target_std": self.target_std,
                "feature_names": self.feature_names}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessor:
        return cls({c: (v["mean"], v["std"]) for c, v in d["numeric"].items()},
                   {c: list(v) for c, v in d["categorical"].items()}, list(d["columns"]),
                   d["target"], d["task"], list(d["label_names"]), d["target_mean"],
                   d["target_std"])

    def save(self, path: Path) -> None:
        from bigmodel_cli.jsonfiles import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> Preprocessor:
        import json

        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"{path}: missing or unreadable preprocessing file ({exc})") from None


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _category(v) -> str:
    """One spelling per value: 3 and 3.0 are both "3", True is "True"."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _label_names(series) -> list[str]:
    values = {v for v in series if not _missing(v)}
    if all(isinstance(v, (int, np.integer, float, np.floating)) and not isinstance(v, bool)
           for v in values):
        return [_category(v) for v in sorted(values)]
    return sorted(_category(v) for v in values)


def _numeric_target(series, where: str) -> np.ndarray:
    import pandas as pd

    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(values)
    if bad.any():
        raise UsageError(f"{where}: the target {series.name!r} must be a number in every row for "
                         f"regression (row {int(np.flatnonzero(bad)[0])}: {series.iloc[int(np.flatnonzero(bad)[0])]!r})")
    return values


# -- loading ---------------------------------------------------------------------------------

def read_table(path: Path):
    """A CSV/TSV (optionally .gz) or Parquet file as a pandas DataFrame."""
    import pandas as pd

    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".xz", ".zst")]
    kind = suffixes[-1] if suffixes else ""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        if kind == ".parquet":
            return pd.read_parquet(path)
        if kind in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if kind == ".tsv" else ",")
    except Exception as exc:  # malformed files
        raise UsageError(f"{path}: could not read it ({type(exc).__name__}: {str(exc)[:200]})") from None
    raise UsageError(f"{path}: unknown file type; use .csv, .tsv or .parquet (optionally .csv.gz)")


def _diabetes():
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(as_frame=True, scaled=False)
    return {"all": bunch.frame}, "scikit-learn load_diabetes (bundled)", None, []


def _files(data_cfg: DictConfig):
    base = Path(data_cfg.path).expanduser() if data_cfg.path else Path(".")
    frames, read = {}, []
    for split, name in data_cfg.files.items():
        if not name:
            continue
        path = Path(name).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise UsageError(f"data.files.{split}={name}: no such file (looked for {path})")
        frames[split] = read_table(path)
        read.append(path)
    if "train" not in frames:
        raise UsageError("data=tabular needs data.files.train=FILE (.csv, .tsv or .parquet)")
    return frames, ", ".join(map(str, read)), base if data_cfg.path else None, read


def load_tabular_dataset(data_cfg: DictConfig, *, task: str, seed: int,
                         max_train_samples: int | None = None,
                         max_eval_samples: int | None = None) -> TabularDataset:
    """Load and split a table; check that the target and feature columns exist."""
    if data_cfg.loader == "sklearn_diabetes":
        frames, source, folder, read = _diabetes()
    elif data_cfg.loader == "files":
        frames, source, folder, read = _files(data_cfg)
    else:
        raise UsageError(f"data.loader={data_cfg.loader!r}: choose sklearn_diabetes or files")
    target = str(data_cfg.target)
    first = frames.get("train", frames.get("all"))
    for split, frame in frames.items():
        if target not in frame.columns:
            raise UsageError(f"{source} [{split}]: no target column {target!r} (set data.target); "
                             f"its columns are {', '.join(map(str, frame.columns))}")
    if data_cfg.features is None:
        features = [str(c) for c in first.columns if c != target]
    else:
        features = [str(c) for c in data_cfg.features]
        absent = [c for c in features if c not in first.columns]
        if absent:
            raise UsageError(f"data.features: no column {', '.join(map(repr, absent))} in "
                             f"{source}; its columns are {', '.join(map(str, first.columns))}")
        if target in features:
            raise UsageError(f"data.features includes the target {target!r}")
    if not features:
        raise UsageError(f"{source}: no feature columns besides the target {target!r}")

    def keys(frame):  # classes to stratify on; regression rows are split at random
        if task != "classification":
            return None
        return np.asarray([_category(v) for v in frame[target]])

    notes = []
    if "all" in frames:
        pool = frames.pop("all")
        order = list(data_cfg.split_fractions)
        idx = splitting.partition(len(pool), [float(data_cfg.split_fractions[s]) for s in order],
                                  seed, keys(pool))
        frames = {s: pool.iloc[i].reset_index(drop=True) for s, i in zip(order, idx)}
        notes.append(f"split {len(pool)} rows into " + ", ".join(
            f"{s} {len(frames[s])}" for s in order) + f" (seeded, seed {seed})")
    if "validation" not in frames:
        train = frames["train"]
        frac = float(data_cfg.validation_fraction)
        keep, held = splitting.holdout(len(train), frac, seed, keys(train))
        frames["train"] = train.iloc[keep].reset_index(drop=True)
        frames["validation"] = train.iloc[held].reset_index(drop=True)
        notes.append(f"no validation split: held out {len(held)} of {len(train)} train rows "
                     f"(data.validation_fraction={frac}, seed {seed})")
    for note in notes:
        log.warning("note: %s", note)

    def subset(frame, n):  # exactly n rows, stratified for classification
        keep = splitting.sample(len(frame), n, seed, keys(frame))
        return frame if keep is None else frame.iloc[keep].reset_index(drop=True)

    frames["train"] = subset(frames["train"], max_train_samples)
    for split in ("validation", "test"):
        if split in frames:
            frames[split] = subset(frames[split], max_eval_samples)
    frames = {s: frames[s] for s in SPLITS if s in frames}
    return TabularDataset(frames=frames, features=features, target=target, source=source,
                          folder=folder, files=read, notes=notes)
