"""Labeled images: finding, decoding and splitting them, held in memory as uint8 tensors.

Three loaders (`data.loader`):
  parquet         Parquet files with an image column (PNG/JPEG bytes, as `datasets` writes
                  an Image feature) and a label column; found like the text datasets, in
                  data.path, $BIGMODEL_DATA_DIR/<name>/, ./data/<name>/ (data=fashion_mnist).
  sklearn_digits  scikit-learn's bundled 8x8 digits (no files, no download).
  folder          data.path holding one subfolder per class (or train/, and optionally
                  val/ or validation/ and test/, each holding them) of image files.

Rows are split and subset on their labels first and only the rows kept are decoded, once,
with Pillow, into uint8 tensors [N, C, H, W]. With `data.image_size` every image is resized
to that square size (bilinear, antialiased; the same function at training and at predict
time). A split that is missing gets a seeded, stratified part of train.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from bigmodel_cli.data import splits as splitting
from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel.data")

SPLITS = ("train", "validation", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class ImageSplit:
    pixels: torch.Tensor               # uint8 [N, C, H, W]
    labels: torch.Tensor | None        # int64 [N]

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def columns(self) -> dict[str, torch.Tensor]:
        out = {"pixels": self.pixels}
        if self.labels is not None:
            out["labels"] = self.labels
        return out


@dataclass
class ImageDataset:
    splits: dict[str, ImageSplit]
    label_names: list[str]
    channels: int
    image_size: int                    # height = width of every image
    source: str
    folder: Path | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class RawSplit:
    """Labels of a split's rows, and how to decode any of them (decoding comes last)."""

    labels: np.ndarray                                   # int64 [N]
    decode: Callable[[np.ndarray], list[np.ndarray]]     # row numbers -> [C, H, W] uint8 arrays

    def take(self, rows: np.ndarray) -> RawSplit:
        return RawSplit(self.labels[rows], lambda r, rows=rows, d=self.decode: d(rows[r]))


# -- decoding and resizing -------------------------------------------------------------------

def decode_image(data: bytes | Path, channels: int, where: str) -> np.ndarray:
    """PNG/JPEG/... bytes or file -> uint8 [C, H, W] (grayscale for 1 channel, else RGB)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            array = np.array(image, dtype=np.uint8)  # a writable copy
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UsageError(f"{where}: not an image that can be read ({type(exc).__name__}: "
                         f"{str(exc)[:120]}); image files must be PNG, JPEG, BMP, GIF, WebP "
                         "or TIFF") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def resize(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, C, size, size]: bilinear, antialiased when shrinking."""
    from torch.nn import functional as F

    if pixels.shape[-2:] == (size, size):
        return pixels
    out = []
    for chunk in pixels.split(4096):
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else pixels.new_zeros((0, pixels.shape[1], size, size))


def to_tensor(arrays: list[np.ndarray], image_size: int | None, where: str) -> torch.Tensor:
    """Decoded images -> one uint8 tensor, resized to image_size (required when sizes differ)."""
    if image_size is None:
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise UsageError(f"{where}: the images have different sizes "
                             f"({', '.join(str(s[1:]) for s in sorted(shapes)[:4])}); "
                             "set data.image_size=N to resize them all to N x N")
        return torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0, 1, 1, 1, dtype=torch.uint8)
    return torch.cat([resize(torch.from_numpy(a)[None], image_size) for a in arrays]) if arrays \
        else torch.zeros(0, 1, image_size, image_size, dtype=torch.uint8)


def pixel_stats(pixels: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images, on the [0, 1] scale."""
    x = pixels.transpose(0, 1).reshape(pixels.shape[1], -1).double() / 255.0
    mean, std = x.mean(1), x.std(1)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


# -- loaders ---------------------------------------------------------------------------------

def _parquet(data_cfg: DictConfig) -> tuple[dict[str, RawSplit], list[str] | None, str, Path, list[Path]]:
    import pyarrow.parquet as pq

    from bigmodel_cli.data.files import split_files

    found = split_files(data_cfg)
    if not isinstance(found, list):
        how, folder, present = found
        raw = {}
        for split, path in present.items():
            try:
                table = pq.read_table(path, columns=[data_cfg.image_column, data_cfg.label_column])
            except Exception as exc:  # a missing column or an unreadable file
                raise UsageError(f"{path}: cannot read columns {data_cfg.image_column!r}, "
                                 f"{data_cfg.label_column!r} ({exc}); set data.image_column / "
                                 "data.label_column") from None
            images = table.column(data_cfg.image_column).combine_chunks()
            if hasattr(images, "field"):  # a `datasets` Image feature: struct<bytes, path>
                images = images.field("bytes")
            blobs = images.to_pylist()
            labels = np.asarray(table.column(data_cfg.label_column).to_pylist(), dtype=np.int64)

            def decode(rows, blobs=blobs, path=path):
                return [decode_image(blobs[r], data_cfg.channels, f"{path} row {r}") for r in rows]

            raw[split] = RawSplit(labels, decode)
        labels_file = folder / data_cfg.labels_file if data_cfg.labels_file else None
        names = None
        if labels_file is not None and labels_file.is_file():
            names = [n.strip() for n in labels_file.read_text(encoding="utf-8").splitlines() if n.strip()]
        read = [*present.values(), *([labels_file] if names else [])]
        return raw, names, f"{folder} ({how})", folder, read
    raise UsageError(f"dataset {data_cfg.name!r} not found. Looked in:\n    " + "\n    ".join(found)
                     + f"\n  To provide it: put {', '.join(f for f in data_cfg.files.values() if f)}"
                     f" (columns {data_cfg.image_column},{data_cfg.label_column}) in "
                     f"$BIGMODEL_DATA_DIR/{data_cfg.name}/ or ./data/{data_cfg.name}/, or point "
                     "data.path=DIR at a folder holding them.")


def _digits(data_cfg: DictConfig) -> tuple[dict[str, RawSplit], list[str], str, None, list]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 intensities -> 0..255, as uint8 images [N, 1, 8, 8]
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    if data_cfg.channels == 3:
        images = np.repeat(images, 3, axis=1)

    def decode(rows):
        return list(images[rows])

    names = [str(int(n)) for n in digits.target_names]
    return ({"all": RawSplit(digits.target.astype(np.int64), decode)}, names,
            "scikit-learn load_digits (bundled)", None, [])


def _folder(data_cfg: DictConfig) -> tuple[dict[str, RawSplit], list[str], str, Path, list[Path]]:
    from bigmodel_cli.data.files import class_folders

    per_split, names, root = class_folders(data_cfg.path, (), "image", "image_folder")
    raw, read = {}, []
    for split, files in per_split.items():
        paths = [f for f, _ in files]
        read += paths

        def decode(rows, paths=paths):
            return [decode_image(paths[r], data_cfg.channels, str(paths[r])) for r in rows]

        raw[split] = RawSplit(np.asarray([names.index(c) for _, c in files], dtype=np.int64), decode)
    return raw, names, f"{root} (data.path)", root, read


LOADERS = {"parquet": _parquet, "sklearn_digits": _digits, "folder": _folder}


def _subset(split: RawSplit, n: int | None, seed: int) -> RawSplit:
    """trainer.max_*_samples: exactly n rows, stratified by label, as for text."""
    keep = splitting.sample(len(split.labels), n, seed, split.labels)
    return split if keep is None else split.take(keep)


def load_image_dataset(data_cfg: DictConfig, *, seed: int, max_train_samples: int | None = None,
                       max_eval_samples: int | None = None) -> ImageDataset:
    """Find, split, subset and decode a labeled image dataset as configured in `data_cfg`."""
    if data_cfg.loader not in LOADERS:
        raise UsageError(f"data.loader={data_cfg.loader!r}: choose one of {', '.join(LOADERS)}")
    if data_cfg.channels not in (1, 3):
        raise UsageError(f"data.channels={data_cfg.channels}: use 1 (grayscale) or 3 (RGB)")
    raw, names, source, folder, files = LOADERS[data_cfg.loader](data_cfg)
    notes = []
    if "all" in raw:  # one pool of rows: split it (seeded, stratified)
        pool = raw.pop("all")
        order = list(data_cfg.split_fractions)
        parts = splitting.partition(len(pool.labels), [float(data_cfg.split_fractions[s]) for s in order],
                                   seed, pool.labels)
        raw = {s: pool.take(p) for s, p in zip(order, parts)}
        notes.append(f"split {len(pool.labels)} rows into " + ", ".join(
            f"{s} {len(raw[s].labels)}" for s in order) + f" (seeded, stratified, seed {seed})")
    if "validation" not in raw:
        train = raw["train"]
        frac = float(data_cfg.validation_fraction)
        keep, held = splitting.holdout(len(train.labels), frac, seed, train.labels)
        raw["train"], raw["validation"] = train.take(keep), train.take(held)
        notes.append(f"no validation split: held out {len(held)} of {len(train.labels)} train rows "
                     f"(data.validation_fraction={frac}, seed {seed})")
    if names is None:
        names = [str(v) for v in sorted(set(raw["train"].labels.tolist()))]
    for split, part in raw.items():
        bad = part.labels[(part.labels < 0) | (part.labels >= len(names))]
        if bad.size:
            raise UsageError(f"{source} [{split}]: label {int(bad[0])} is not one of the "
                             f"{len(names)} labels")
    for note in notes:
        log.warning("note: %s", note)
    raw["train"] = _subset(raw["train"], max_train_samples, seed)
    for split in ("validation", "test"):
        if split in raw:
            raw[split] = _subset(raw[split], max_eval_samples, seed)
    size = data_cfg.image_size
    splits = {}
    for split in (s for s in SPLITS if s in raw):
        part = raw[split]
        pixels = to_tensor(part.decode(np.arange(len(part.labels))), size, f"{source} [{split}]")
        splits[split] = ImageSplit(pixels, torch.from_numpy(part.labels.copy()))
    sizes = {tuple(s.pixels.shape[1:]) for s in splits.values() if len(s)}
    if len(sizes) > 1:
        raise UsageError(f"{source}: the splits have different image sizes ({sorted(sizes)}); "
                         "set data.image_size=N")
    _, height, width = sizes.pop()
    if height != width:
        raise UsageError(f"{source}: images are {height}x{width}; set data.image_size=N for "
                         "square N x N images")
    return ImageDataset(splits=splits, label_names=names, channels=int(data_cfg.channels),
                        image_size=height, source=source, folder=folder, files=files, notes=notes)


# -- predict inputs --------------------------------------------------------------------------

def image_inputs(given: str, path_column: str) -> Iterator[Path]:
    """The image files that `input=` names: one image, a folder (all images in it and its
    subfolders, sorted), or a .csv/.tsv/.txt list of paths (relative to the list's folder)."""
    from bigmodel_cli.data.files import listed_files

    return listed_files(given, path_column, IMAGE_SUFFIXES, "image")


def load_image_file(path: Path, channels: int, image_size: int) -> torch.Tensor:
    """One image file as the run's models saw images in training: uint8 [C, S, S]."""
    if not path.is_file():
        raise UsageError(f"{path}: no such image file")
    return resize(torch.from_numpy(decode_image(path, channels, str(path)))[None], image_size)[0]


def load_image_bytes(data: bytes, channels: int, image_size: int, where: str) -> torch.Tensor:
    """An encoded image (PNG, JPEG, ...) as the run's models saw images in training."""
    return resize(torch.from_numpy(decode_image(data, channels, where))[None], image_size)[0]
