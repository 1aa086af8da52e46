"""Files that the file-based data kinds (images, audio) share how to find: class folders
for training, and the inputs `bigmodel predict input=` names."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from bigmodel_cli.errors import UsageError


def class_folders(path: str | None, suffixes: tuple[str, ...], what: str,
                  config: str) -> tuple[dict[str, list[tuple[Path, str]]], list[str], Path]:
    """data.path holding one subfolder per class, or train/ (and optionally val/ or
    validation/, and test/) folders that each hold them -> ({split: [(file, class)]},
    class names in train's sorted order, the root). Only files ending in `suffixes` count
    (all files when it is empty)."""
    if not path:
        raise UsageError(f"data={config} needs data.path=DIR: a folder with one subfolder per "
                         "class (or train/, val/, test/ folders that each hold them)")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UsageError(f"data.path={path}: no such directory")
    split_dirs = {"train": root / "train"}
    for split, names in (("validation", ("validation", "val", "valid")), ("test", ("test",))):
        for name in names:
            if (root / name).is_dir():
                split_dirs[split] = root / name
                break
    if not split_dirs["train"].is_dir():
        split_dirs = {"train": root}  # the class folders are right here
    per_split = {split: _class_files(d, suffixes) for split, d in split_dirs.items()}
    names = list(per_split["train"])
    if not names:
        raise UsageError(f"{split_dirs['train']}: no class subfolders; put the {what} files of "
                         "each class in a subfolder named after the class")
    out = {}
    for split, classes in per_split.items():
        unknown = sorted(set(classes) - set(names))
        if unknown:
            raise UsageError(f"{split_dirs[split]}: classes {', '.join(unknown)} are not in "
                             f"{split_dirs['train']} ({', '.join(names)})")
        files = [(f, c) for c, fs in classes.items() for f in fs]
        if not files:
            raise UsageError(f"{split_dirs[split]}: no {what} files in its class folders "
                             f"({', '.join(classes) or 'none'})"
                             + (f"; {what} files end in {', '.join(suffixes)}" if suffixes else ""))
        out[split] = files
    return out, names, root


def _class_files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, list[Path]]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {c.name: sorted(f for f in c.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and (not suffixes or f.suffix.lower() in suffixes))
            for c in classes}


def listed_files(given: str, path_column: str, suffixes: tuple[str, ...],
                 what: str) -> Iterator[Path]:
    """The files that `input=` names: one file, a folder (all files ending in `suffixes`
    in it and its subfolders, sorted), or a .csv/.tsv/.txt list of paths (relative to the
    list's folder)."""
    path = Path(given).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
        found = [f for f in files if f.suffix.lower() in suffixes]
        if not found:
            raise UsageError(f"input={given}: no {what} files in this folder "
                             f"({', '.join(suffixes)})")
        yield from found
        return
    if not path.is_file():
        raise UsageError(f"input={given}: no such file or folder")
    kind = path.suffix.lower()
    if kind in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if kind == ".tsv" else ",")
            if path_column not in (reader.fieldnames or []):
                raise UsageError(f"input={given}: no column {path_column!r}; its columns are "
                                 f"{', '.join(reader.fieldnames or [])} (set path_column=)")
            for row in reader:
                yield relative(row[path_column], path)
    elif kind == ".txt":
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield relative(line.strip(), path)
    else:
        yield path


def relative(name: str, listing: Path) -> Path:
    """A path as written in a list file: absolute, or relative to the list's folder."""
    p = Path(name).expanduser()
    return p if p.is_absolute() else listing.parent / p


def request_bytes(inputs: list, what: str) -> list[bytes]:
    """A request's `inputs` -> file bytes: base64 strings (JSON; a data: URL prefix is
    allowed) or the bytes of uploaded files."""
    import base64
    import binascii

    out = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            try:
                item = base64.b64decode(item.split(",", 1)[1] if item.startswith("data:")
                                        else item, validate=True)
            except (binascii.Error, ValueError):
                raise UsageError(f"inputs[{i}]: not valid base64") from None
        if not isinstance(item, bytes):
            raise UsageError(f"inputs[{i}]: expected {what} as a base64 string, got "
                             f"{type(item).__name__}")
        out.append(item)
    return out


def split_files(data_cfg) -> tuple[str, Path, dict[str, Path]] | list[str]:
    """The first place a named dataset's split files (data.files: split -> file name) are
    found with a train file: (how it was chosen, the folder, {split: file}); else the list
    of places looked at, for the error message."""
    from bigmodel_cli.data.sources import candidate_dirs

    looked = []
    for how, folder in candidate_dirs(data_cfg):
        files = {s: folder / f for s, f in data_cfg.files.items() if f}
        present = {s: p for s, p in files.items() if p.is_file()}
        if "train" in present:
            return how, folder, present
        looked.append(f"{how}: {folder} -- " + ("no " + ", ".join(p.name for p in files.values())
                                                + " there" if folder.is_dir() else "does not exist"))
    return looked


def path_inputs(cfg, listed, refusal: str) -> Iterator[tuple[dict, Path]]:
    """({"index", "path"}, path) for each file `listed(input, path_column)` names; a run
    that reads files refuses text=, prompt= and stdin with `refusal`."""
    if cfg.text is not None or cfg.prompt is not None or cfg.input is None or cfg.input == "-":
        raise UsageError(refusal)
    for index, path in enumerate(listed(str(cfg.input), cfg.path_column)):
        yield {"index": index, "path": str(path)}, path
