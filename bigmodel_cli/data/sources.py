"""Finding and loading labeled text datasets through HF `datasets`.

A named dataset is looked for, in order, in `data.path`, `$BIGMODEL_DATA_DIR/<name>/`,
`./data/<name>/` (in its packaged layout, then in its upstream layout), then downloaded
from its upstream release or the Hub when one is configured and the machine is online.
When none has it, the error lists every place looked at and how to provide the files.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from bigmodel_cli.data import splits as splitting
from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel.data")

SPLITS = ("train", "validation", "test")
_FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".json": "json", ".jsonl": "json",
            ".parquet": "parquet"}


@dataclass
class TextDataset:
    """Raw labeled splits: each a `datasets.Dataset` with columns `text` (str), `label` (int)."""

    splits: dict[str, Any]
    label_names: list[str]
    source: str                      # where the files came from, for logs and metrics
    folder: Path | None = None       # the local directory they were read from (None: the Hub)
    files: list[Path] = field(default_factory=list)   # local files read (for cache keys)
    notes: list[str] = field(default_factory=list)    # what was derived (held-out splits...)


def _offline() -> bool:
    return any(os.environ.get(v, "0") not in ("0", "", "false", "False")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def candidate_dirs(data_cfg: DictConfig) -> list[tuple[str, Path]]:
    """The directories a named dataset is looked for in, with how each was chosen."""
    places: list[tuple[str, Path]] = []
    if data_cfg.path:
        places.append(("data.path", Path(data_cfg.path).expanduser()))
    env = os.environ.get("BIGMODEL_DATA_DIR")
    if env:
        places.append(("$BIGMODEL_DATA_DIR", Path(env).expanduser() / data_cfg.name))
    places.append(("./data", Path("data") / data_cfg.name))
    if not data_cfg.path:  # your own files, named relative to where you run the command
        places.append(("the current directory", Path(".")))
    return places


def matching_files(folder: Path, name: str) -> list[Path]:
    """The files `name` stands for in `folder`: that file, or every file a glob (`*`, `?`,
    `[...]`; `**` for any depth) matches, sorted; [] when there is none."""
    if not any(c in name for c in "*?["):
        return [folder / name] if (folder / name).is_file() else []
    return sorted(p for p in map(Path, glob.glob(str(folder / name), recursive=True))
                  if p.is_file())


def _wanted(names) -> str:
    return ", ".join(f"files matching {n}" if any(c in n for c in "*?[") else n for n in names)


def _file_format(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".xz", ".zst")]
    fmt = _FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise UsageError(f"{path}: unknown file type; use .csv, .tsv, .jsonl, .json or .parquet "
                         "(optionally compressed: .csv.gz)")
    return fmt


def _load_files(files: dict[str, Path | list[Path]], *,
                headerless_tsv: tuple[str, str] | None = None, sample_by: str | None = None) -> dict:
    """Load split -> file (or files, read in order as one split) with `datasets`; all files
    of one call share a format. With `sample_by` (line | paragraph | document), .txt files
    are plain text, read into a `text` column one line / paragraph / whole file per row."""
    import datasets

    datasets.disable_progress_bars()
    lists = {s: [str(p) for p in (v if isinstance(v, list) else [v])] for s, v in files.items()}
    names = ", ".join(name for names in lists.values() for name in names)
    first = Path(next(iter(lists.values()))[0])
    if sample_by and ".txt" in first.suffixes:
        try:
            loaded = datasets.load_dataset("text", data_files=lists, sample_by=sample_by)
        except Exception as exc:
            raise UsageError(f"could not read {names}: {exc}") from None
        return dict(loaded)
    if headerless_tsv:
        kwargs: dict[str, Any] = dict(delimiter="\t", column_names=list(headerless_tsv),
                                      quoting=csv.QUOTE_NONE, keep_default_na=False)
        fmt = "csv"
    else:
        fmt = _file_format(first)
        kwargs = {}
        if fmt == "csv":
            delimiter = "\t" if ".tsv" in first.suffixes else ","
            kwargs = dict(delimiter=delimiter, keep_default_na=False)
    try:
        loaded = datasets.load_dataset(fmt, data_files=lists, **kwargs)
    except Exception as exc:  # unreadable or malformed files
        raise UsageError(f"could not read {names}: {exc}") from None
    return dict(loaded)


def _read_label_names(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [n for n in names if n]


def _normalise(ds, text_column: str, label_column: str | None, where: str):
    """Keep only `text` (str) and `label` (raw values) columns; check they exist.
    Unlabeled text (label_column None, a pretraining corpus) keeps only `text`."""
    wanted = [text_column] if label_column is None else [text_column, label_column]
    missing = [c for c in wanted if c not in ds.column_names]
    if missing:
        raise UsageError(
            f"{where}: no column {' or '.join(map(repr, missing))}; its columns are "
            f"{', '.join(ds.column_names)} (set data.text_column / data.label_column)"
        )
    ds = ds.select_columns(wanted)
    if text_column != "text":
        ds = ds.rename_column(text_column, "text")
    if label_column is not None and label_column != "label":
        ds = ds.rename_column(label_column, "label")
    return ds


def _infer_label_names(values) -> list[str]:
    """Label names when no labels file is given: sorted numbers, else sorted strings."""
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return [str(v) for v in sorted({int(v) for v in values})]
    return sorted({str(v) for v in values})


def _label_keys(ds) -> np.ndarray:
    """Raw label values as an array to stratify on (numbers and names alike); unlabeled
    rows all share one key, so a "stratified" split of them is a plain seeded one."""
    if "label" not in ds.column_names:
        return np.zeros(len(ds), dtype=np.int64)
    return np.asarray([str(v) for v in ds["label"]])


def _encode_labels(splits: dict, label_names: list[str], where: str) -> dict:
    """Turn label values into ids 0..K-1: an integer indexes `label_names` (or, when the
    names are numbers, is looked up among them); a string is looked up by name."""
    import datasets

    by_name = {name: i for i, name in enumerate(label_names)}
    numeric_names = all(name.lstrip("-").isdigit() for name in label_names)

    def to_id(value) -> int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if numeric_names and str(int(value)) in by_name:
                return by_name[str(int(value))]
            if not numeric_names and 0 <= int(value) < len(label_names):
                return int(value)
        elif str(value) in by_name:
            return by_name[str(value)]
        raise UsageError(f"{where}: label {value!r} is not one of the {len(label_names)} labels "
                         f"({', '.join(label_names[:10])}{', ...' if len(label_names) > 10 else ''})")

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
    out = {}
    for split, ds in splits.items():
        ids = [to_id(v) for v in ds["label"]]
        texts = ["" if t is None else str(t) for t in ds["text"]]
        out[split] = datasets.Dataset.from_dict({"text": texts, "label": ids}, features=features)
    return out


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def verify_file(path: Path, sha256: str | None = None, git_blob: str | None = None) -> None:
    """Check a downloaded file against its published sha256 (or git blob id)."""
    data = path.read_bytes()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise UsageError(f"{path}: sha256 {hashlib.sha256(data).hexdigest()} does not match the "
                         f"published {sha256}; the download is corrupt or changed upstream")
    if git_blob and _git_blob_sha1(data) != git_blob:
        raise UsageError(f"{path}: git blob id {_git_blob_sha1(data)} does not match the "
                         f"published {git_blob}")


def download_upstream(data_cfg: DictConfig, cache_dir: Path) -> Path:
    """Download the upstream release files (through `datasets`' remote-file support), verify
    them against the published checksums, and return the directory that holds them."""
    from datasets import DownloadConfig, DownloadManager

    up = data_cfg.upstream
    names = [*up.files.values(), up.labels_file]
    names = [n for n in names if n]
    manager = DownloadManager(download_config=DownloadConfig(
        cache_dir=str(cache_dir / "downloads"), max_retries=2))
    urls = {name: f"{up.url.rstrip('/')}/{name}" for name in names}
    log.info("downloading %s from %s", ", ".join(names), up.url)
    fetched = manager.download(urls)
    target = cache_dir / "datasets" / data_cfg.name
    target.mkdir(parents=True, exist_ok=True)
    sha = OmegaConf.to_container(up.sha256) if up.sha256 else {}
    blobs = OmegaConf.to_container(up.git_blob) if up.git_blob else {}
    for name, local in fetched.items():
        try:
            verify_file(Path(local), sha.get(name), blobs.get(name))
        except UsageError:
            Path(local).unlink(missing_ok=True)  # so that the next run downloads it again
            raise
        dest = target / name
        tmp = dest.with_suffix(dest.suffix + ".tmp")
        tmp.write_bytes(Path(local).read_bytes())
        os.replace(tmp, dest)
    log.info("verified checksums; cached in %s", target)
    return target


def _subset(ds, n: int | None, seed: int):
    """A seeded random subset of n rows; labeled rows are drawn class by class (stratified)."""
    keep = splitting.sample(len(ds), n, seed,
                         _label_keys(ds) if "label" in ds.column_names else None)
    return ds if keep is None else ds.select(keep)


def _load_hub(data_cfg: DictConfig) -> tuple[dict, list[str] | None]:
    import datasets

    hub = data_cfg.hub
    loaded = datasets.load_dataset(hub.id, hub.config)
    splits = {}
    for ours, theirs in hub.splits.items():
        splits[ours] = _normalise(loaded[theirs], hub.text_column, hub.label_column,
                                  f"{hub.id} [{theirs}]")
    feature = loaded[next(iter(hub.splits.values()))].features.get(hub.label_column)
    names = list(feature.names) if getattr(feature, "names", None) else None
    return splits, names


def _not_found(data_cfg: DictConfig, looked: list[str]) -> UsageError:
    """Where a dataset was looked for, and how to provide it."""
    what = data_cfg.name or "the data files"
    wanted = _wanted(f for f in data_cfg.files.values() if f)
    columns = ",".join(c for c in (data_cfg.text_column, data_cfg.label_column) if c)
    how_to = (f"put {wanted} (column{'s' if ',' in columns else ''} {columns})"
              + (f" and {data_cfg.labels_file}" if data_cfg.labels_file else "")
              + (f" in $BIGMODEL_DATA_DIR/{data_cfg.name}/ or ./data/{data_cfg.name}/, "
                 "or point data.path=DIR at a folder holding them" if data_cfg.name
                 else " in data.path=DIR, or give data.files.train=FILE (and validation/test)"))
    return UsageError(f"dataset {what!r} not found. Looked in:\n    "
                      + "\n    ".join(looked) + f"\n  To provide it: {how_to}.")


def _complete_splits(splits: dict, data_cfg: DictConfig, seed: int,
                     source: str) -> tuple[dict, list[str]]:
    """Train and validation splits where the files lack them (re-split, tail or seeded
    hold-out), with a note for each split made here."""
    notes: list[str] = []
    if "train" not in splits:
        base = splits.pop(data_cfg.resplit_from)
        order = [s for s in SPLITS if s in data_cfg.resplit_fractions]
        fractions = [float(data_cfg.resplit_fractions[s]) for s in order]
        parts = splitting.partition(len(base), fractions, seed, _label_keys(base))
        splits = {s: base.select(idx) for s, idx in zip(order, parts)}
        notes.append(f"no train split in {source}: re-split its {data_cfg.resplit_from} split "
                     f"({len(base)} rows) into " + ", ".join(f"{s} {len(splits[s])}" for s in order)
                     + f" (seed {seed}); not comparable with results on the official splits")
    if "validation" not in splits and data_cfg.validation_from == "tail":
        splits["train"], splits["validation"], note = _tail_split(
            splits["train"], float(data_cfg.validation_fraction))
        notes.append(note)
    if "validation" not in splits:
        train = splits["train"]
        frac = float(data_cfg.validation_fraction)
        keep, held = splitting.holdout(len(train), frac, seed, _label_keys(train))
        splits["train"], splits["validation"] = train.select(keep), train.select(held)
        notes.append(f"no validation split: held out {len(held)} of {len(train)} train rows "
                     f"(data.validation_fraction={frac}, seed {seed})")
    return splits, notes


def _load_local(data_cfg: DictConfig, looked: list[str]) -> tuple:
    """(splits, label names, files read, source, folder) from the first local place that
    holds the configured files (or the upstream layout); (None, None, [], "", None) when none
    does, each place tried added to `looked`."""
    if data_cfg.name:
        places = candidate_dirs(data_cfg)
    else:
        places = [("data.path" if data_cfg.path else "the current directory",
                   Path(data_cfg.path or ".").expanduser())]
    up = data_cfg.upstream
    for how, folder in places:
        files = {s: f for s, f in data_cfg.files.items() if f}
        present = {s: found for s, f in files.items() if (found := matching_files(folder, f))}
        if "train" in present or (data_cfg.resplit_from and data_cfg.resplit_from in present):
            raw = _load_files(present, sample_by=data_cfg.sample_by)
            for split, ds in raw.items():
                raw[split] = _normalise(ds, data_cfg.text_column, data_cfg.label_column,
                                        ", ".join(map(str, present[split])))
            labels_file = folder / data_cfg.labels_file if data_cfg.labels_file else None
            if labels_file is not None and not labels_file.is_file():
                raise UsageError(f"{labels_file}: label names file not found "
                                 "(set data.labels_file=null to infer the names from train)")
            label_names = _read_label_names(labels_file) if labels_file else None
            files_read = [*(p for found in present.values() for p in found),
                          *([labels_file] if labels_file else [])]
            source, found_in = f"{folder} ({how})", folder
            if all(Path(f).is_absolute() for f in files.values()):  # the folder played no part
                found_in = Path(os.path.commonpath([p.parent for ps in present.values() for p in ps]))
                source = f"{found_in} (absolute paths)"
            return raw, label_names, files_read, source, found_in
        if up is not None and (folder / up.files.train).is_file():
            raw, label_names, files_read = _load_upstream_layout(data_cfg, folder)
            return raw, label_names, files_read, f"{folder} ({how}, upstream layout)", folder
        wanted = _wanted(files.values()) if files else "(no files configured)"
        if up is not None:
            wanted += f" -- or {', '.join(up.files.values())}"
        looked.append(f"{how}: {folder} -- no {wanted} there" if folder.is_dir()
                      else f"{how}: {folder} -- does not exist")
    return None, None, [], "", None


def load_text_dataset(data_cfg: DictConfig, *, seed: int, cache_dir: Path,
                      max_train_samples: int | None = None,
                      max_eval_samples: int | None = None) -> TextDataset:
    """Find, load and split a labeled text dataset as configured in `data_cfg`."""
    looked: list[str] = []
    raw, label_names, files_read, source, found_in = _load_local(data_cfg, looked)
    up = data_cfg.upstream
    if raw is None and up is not None:
        if _offline():
            looked.append(f"download from {up.url}: skipped (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set)")
        else:
            try:
                folder = download_upstream(data_cfg, cache_dir)
                raw, label_names, files_read = _load_upstream_layout(data_cfg, folder)
                source = f"{up.url} (downloaded, checksums verified, cached in {folder})"
                found_in = folder
            except UsageError:
                raise
            except Exception as exc:
                looked.append(f"download from {up.url}: failed ({type(exc).__name__}: {str(exc)[:200]})")
    if raw is None and data_cfg.hub is not None:
        if _offline():
            looked.append(f"the Hub ({data_cfg.hub.id}): skipped (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set)")
        else:
            try:
                raw, label_names = _load_hub(data_cfg)
                source = f"the Hub ({data_cfg.hub.id})"
            except UsageError:
                raise
            except Exception as exc:
                looked.append(f"the Hub ({data_cfg.hub.id}): failed ({type(exc).__name__}: {str(exc)[:200]})")
    if raw is None:
        raise _not_found(data_cfg, looked)
    log.info("data: %s", source)
    labeled = data_cfg.label_column is not None
    if not labeled:  # a pretraining corpus: any labels in the files are ignored
        raw = {k: v.select_columns(["text"]) for k, v in raw.items()}
        label_names = []
    elif label_names is None:  # inferred from every train row (before any subsetting)
        label_source = raw["train"] if "train" in raw else raw[data_cfg.resplit_from]
        label_names = _infer_label_names(label_source.unique("label"))
    splits, notes = _complete_splits(dict(raw), data_cfg, seed, source)
    for note in notes:
        log.warning("note: %s", note)
    splits["train"] = _subset(splits["train"], max_train_samples, seed)
    for split in ("validation", "test"):
        if split in splits:
            splits[split] = _subset(splits[split], max_eval_samples, seed)
    if labeled:
        splits = _encode_labels(splits, label_names, source)
    return TextDataset(splits=splits, label_names=label_names, source=source,
                       folder=found_in, files=files_read, notes=notes)


def _tail_split(train, fraction: float):
    """The last `fraction` of the text as validation, the rest as train: of the characters
    when train is one document (a book), else of the rows. No shuffling, so validation is
    text the model never saw a neighbour of."""
    import datasets

    if len(train) == 1:
        text = train[0]["text"]
        cut = int(round(len(text) * (1 - fraction)))
        return (datasets.Dataset.from_dict({"text": [text[:cut]]}),
                datasets.Dataset.from_dict({"text": [text[cut:]]}),
                f"no validation split: the last {fraction:.0%} of the text "
                f"({len(text) - cut:,} of {len(text):,} characters) is validation")
    cut = int(round(len(train) * (1 - fraction)))
    return (train.select(range(cut)), train.select(range(cut, len(train))),
            f"no validation split: the last {len(train) - cut} of {len(train)} rows are validation")


def _load_upstream_layout(data_cfg: DictConfig, folder: Path):
    up = data_cfg.upstream
    present = {s: folder / f for s, f in up.files.items() if f and (folder / f).is_file()}
    raw = _load_files(present, headerless_tsv=("text", "label"))
    labels_file = folder / up.labels_file if up.labels_file else None
    names = _read_label_names(labels_file) if labels_file and labels_file.is_file() else None
    files = [*present.values(), *([labels_file] if names else [])]
    return raw, names, files
