"""Audio clips: finding, decoding, resampling and splitting them, held in memory.

Two loaders (`data.loader`):
  manifest  CSV manifests (data.files: split -> file) with a column of audio paths (relative
            to the manifest's folder) and a label or a transcript column, found like the
            other named datasets: data.path, $BIGMODEL_DATA_DIR/<name>/, ./data/<name>/.
            data.path may also be one .csv file: the train manifest.
  folder    data.path holding one subfolder per class (or train/, and optionally val/ or
            validation/ and test/, each holding them) of audio files, as for images.

Rows are split and subset first; only the rows kept are decoded, once, with soundfile
(libsndfile: WAV, FLAC, OGG/Vorbis, MP3, ...), mixed down to mono (the mean of the
channels) and resampled to data.sample_rate with soxr (the same function at training and
at predict time). An optional group column (spoken_words' `synth`) names the group each
row belongs to; the tasks report their metrics per group as well.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from bigmodel_cli.data import splits as splitting
from bigmodel_cli.data.files import relative
from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel.data")

SPLITS = ("train", "validation", "test")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")


@dataclass
class AudioRows:
    """One split's rows before decoding: files, targets (class names or transcripts), groups."""

    paths: list[Path]
    targets: list[str]
    groups: list[str]

    def take(self, rows: np.ndarray) -> AudioRows:
        return AudioRows([self.paths[r] for r in rows], [self.targets[r] for r in rows],
                         [self.groups[r] for r in rows])


@dataclass
class AudioSplit:
    waves: list[np.ndarray]             # float32 [samples], mono, at the dataset's rate
    targets: list[str]                  # class names or transcripts
    groups: list[str]
    paths: list[Path]

    def __len__(self) -> int:
        return len(self.waves)


@dataclass
class AudioDataset:
    splits: dict[str, AudioSplit]
    label_names: list[str] | None       # classes in id order (None: transcripts)
    source: str
    folder: Path | None = None
    notes: list[str] = field(default_factory=list)


# -- decoding ------------------------------------------------------------------------------

def decode_audio(data: bytes | Path, sample_rate: int, where: str) -> np.ndarray:
    """An audio file (or its bytes) -> float32 mono samples at `sample_rate`."""
    import io

    import soundfile as sf

    if isinstance(data, Path) and not data.is_file():
        raise UsageError(f"{where}: no such audio file")
    try:
        wave, rate = sf.read(io.BytesIO(data) if isinstance(data, bytes) else str(data),
                             dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise UsageError(f"{where}: not an audio file that can be read ({str(exc)[:120]}); "
                         "audio files must be WAV, FLAC, OGG or MP3") from None
    return resample(wave.mean(axis=1), rate, sample_rate)


def resample(wave: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """Mono samples from `rate` to `sample_rate` (soxr, high quality)."""
    if rate == sample_rate:
        return np.ascontiguousarray(wave, dtype=np.float32)
    import soxr

    return soxr.resample(wave, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)


def fit_clip(wave: np.ndarray, samples: int) -> np.ndarray:
    """Centre-crop or zero-pad (both ends evenly) to exactly `samples` samples."""
    n = len(wave)
    if n >= samples:
        start = (n - samples) // 2
        return wave[start:start + samples]
    before = (samples - n) // 2
    return np.pad(wave, (before, samples - n - before))


# -- loaders -------------------------------------------------------------------------------

def _read_manifest(path: Path, data_cfg: DictConfig, target_column: str) -> AudioRows:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        wanted = [("data.path_column", data_cfg.path_column), ("target", target_column)]
        if data_cfg.group_column:
            wanted.append(("data.group_column", data_cfg.group_column))
        for key, column in wanted:
            if column not in columns:
                hint = ("data.label_column or data.transcript_column" if key == "target" else key)
                raise UsageError(f"{path}: no column {column!r}; its columns are "
                                 f"{', '.join(columns) or 'none'} (set {hint})")
        rows = list(reader)
    if not rows:
        raise UsageError(f"{path}: the manifest has no rows")
    return AudioRows([relative(r[data_cfg.path_column], path) for r in rows],
                     [str(r[target_column]).strip() for r in rows],
                     [str(r[data_cfg.group_column]) if data_cfg.group_column else "all"
                      for r in rows])


def _manifest(data_cfg: DictConfig, target_column: str):
    from bigmodel_cli.data.files import split_files

    if data_cfg.path and Path(data_cfg.path).expanduser().is_file():  # one manifest: train
        path = Path(data_cfg.path).expanduser()
        return ({"train": _read_manifest(path, data_cfg, target_column)}, None,
                f"{path} (data.path)", path.parent)
    if data_cfg.path and not Path(data_cfg.path).expanduser().exists():
        raise UsageError(f"data.path={data_cfg.path}: no such file or directory")
    found = split_files(data_cfg)
    if not isinstance(found, list):
        how, folder, present = found
        rows = {s: _read_manifest(p, data_cfg, target_column) for s, p in present.items()}
        names = None
        labels_file = folder / data_cfg.labels_file if data_cfg.labels_file else None
        if labels_file is not None and labels_file.is_file():
            names = [n.strip() for n in labels_file.read_text(encoding="utf-8").splitlines()
                     if n.strip()]
        return rows, names, f"{folder} ({how})", folder
    raise UsageError(f"dataset {data_cfg.name!r} not found. Looked in:\n    " + "\n    ".join(found)
                     + f"\n  To provide it: put {', '.join(f for f in data_cfg.files.values() if f)}"
                     f" (columns {data_cfg.path_column},{target_column}) in "
                     f"$BIGMODEL_DATA_DIR/{data_cfg.name}/ or ./data/{data_cfg.name}/, or point "
                     "data.path=DIR at a folder holding them (or at one .csv manifest).")


def _folder(data_cfg: DictConfig, target_column: str):
    from bigmodel_cli.data.files import class_folders

    per_split, names, root = class_folders(data_cfg.path, AUDIO_SUFFIXES, "audio", "audio_folder")
    rows = {split: AudioRows([f for f, _ in files], [c for _, c in files], ["all"] * len(files))
            for split, files in per_split.items()}
    return rows, names, f"{root} (data.path)", root


LOADERS = {"manifest": _manifest, "folder": _folder}


def target_column(data_cfg: DictConfig, transcripts: bool) -> str:
    """The column a task learns: transcripts (task=ctc; a label column serves as one-word
    transcripts when there is none) or labels."""
    column = (data_cfg.transcript_column or data_cfg.label_column) if transcripts \
        else data_cfg.label_column
    if not column:
        raise UsageError(f"data={data_cfg.name} has no " + ("transcript or label" if transcripts
                         else "label") + " column (data.label_column / data.transcript_column)")
    return column


def load_audio_dataset(data_cfg: DictConfig, *, transcripts: bool, seed: int,
                       max_train_samples: int | None = None,
                       max_eval_samples: int | None = None) -> AudioDataset:
    """Find, split, subset and decode an audio dataset as configured in `data_cfg`."""
    if data_cfg.loader not in LOADERS:
        raise UsageError(f"data.loader={data_cfg.loader!r}: choose one of {', '.join(LOADERS)}")
    rows, names, source, folder = LOADERS[data_cfg.loader](data_cfg, target_column(data_cfg, transcripts))
    notes = []
    if "validation" not in rows:
        train = rows["train"]
        frac = float(data_cfg.validation_fraction)
        strata = None if transcripts else np.asarray(train.targets)
        keep, held = splitting.holdout(len(train.paths), frac, seed, strata)
        rows["train"], rows["validation"] = train.take(keep), train.take(held)
        notes.append(f"no validation split: held out {len(held)} of {len(train.paths)} train rows "
                     f"(data.validation_fraction={frac}, seed {seed})")
    if not transcripts:
        names = names or sorted(set(rows["train"].targets))
        for split, part in rows.items():
            unknown = sorted(set(part.targets) - set(names))
            if unknown:
                raise UsageError(f"{source} [{split}]: labels {', '.join(unknown[:5])} are not "
                                 f"among the {len(names)} labels ({', '.join(names[:10])})")
    for note in notes:
        log.warning("note: %s", note)
    for split in rows:
        n = max_train_samples if split == "train" else max_eval_samples
        strata = None if transcripts else np.asarray(rows[split].targets)
        keep = splitting.sample(len(rows[split].paths), n, seed, strata)
        if keep is not None:
            rows[split] = rows[split].take(keep)
    splits = {}
    for split in (s for s in SPLITS if s in rows):
        part = rows[split]
        waves = [decode_audio(p, int(data_cfg.sample_rate), str(p)) for p in part.paths]
        splits[split] = AudioSplit(waves, part.targets, part.groups, part.paths)
    return AudioDataset(splits=splits, label_names=None if transcripts else names, source=source,
                        folder=folder, notes=notes)


# -- predict inputs ------------------------------------------------------------------------

def audio_inputs(given: str, path_column: str) -> Iterator[Path]:
    """The audio files that `input=` names: one file, a folder (all audio files in it and
    its subfolders, sorted), or a .csv/.tsv/.txt list of paths (relative to the list)."""
    from bigmodel_cli.data.files import listed_files

    return listed_files(given, path_column, AUDIO_SUFFIXES, "audio")
