"""What `bigmodel predict` reads for a text run: `text=` (one or a list), `prompt=` (the
same, for generation), `input=FILE` (.txt one text per line; .csv/.tsv/.jsonl/.parquet with
`text_column`; .gz too) or `input=-` (standard input, one text per line).

Texts are read lazily, so a large file streams in constant memory. Empty lines are skipped
(their index is not reused; stats["empty"] counts them); invalid UTF-8 is replaced with U+FFFD.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from bigmodel_cli.errors import UsageError


def read_inputs(cfg: DictConfig, stats: dict) -> Iterator[tuple[dict, str]]:
    """({"index": i}, text) for every non-empty input text of `bigmodel predict`, lazily."""
    given = cfg.text if cfg.text is not None else cfg.prompt  # prompt=: the same, for generation
    if cfg.text is not None and cfg.prompt is not None:
        raise UsageError("give text= or prompt=, not both")
    if (given is None) == (cfg.input is None):
        raise UsageError("give exactly one of text=\"...\" (or text='[a,b]'), prompt=\"...\" "
                         "(generation), input=FILE or input=-")
    if given is not None:
        texts = list(given) if isinstance(given, (list, ListConfig)) else [given]
        yield from _numbered((str(t) for t in texts), stats)
        return
    if cfg.input == "-":
        stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
        yield from _numbered((line.rstrip("\r\n") for line in stream), stats)
        return
    path = Path(cfg.input).expanduser()
    if not path.is_file():
        raise UsageError(f"input={cfg.input}: no such file")
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1] if suffixes else ".txt"
    if kind == ".txt" or kind not in (".csv", ".tsv", ".jsonl", ".json", ".parquet"):
        with _open_text(path) as fh:
            yield from _numbered((line.rstrip("\r\n") for line in fh), stats)
    elif kind in (".csv", ".tsv"):
        with _open_text(path) as fh:
            reader = csv.DictReader(fh, delimiter="\t" if kind == ".tsv" else ",")
            if cfg.text_column not in (reader.fieldnames or []):
                raise UsageError(f"input={cfg.input}: no column {cfg.text_column!r}; its columns "
                                 f"are {', '.join(reader.fieldnames or [])} (set text_column=)")
            yield from _numbered((row[cfg.text_column] or "" for row in reader), stats)
    elif kind in (".jsonl", ".json"):
        with _open_text(path) as fh:
            yield from _numbered(_json_texts(fh, cfg.text_column, cfg.input), stats)
    else:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        if cfg.text_column not in parquet.schema_arrow.names:
            raise UsageError(f"input={cfg.input}: no column {cfg.text_column!r}; its columns are "
                             f"{', '.join(parquet.schema_arrow.names)} (set text_column=)")
        texts = (t for b in parquet.iter_batches(columns=[cfg.text_column], batch_size=4096)
                 for t in b.column(0).to_pylist())
        yield from _numbered(("" if t is None else str(t) for t in texts), stats)


def _open_text(path: Path):
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def _json_texts(fh, column: str, name: str) -> Iterator[str]:
    for number, line in enumerate(fh, 1):
        if not line.strip():
            yield ""
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"input={name}, line {number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict) or column not in record:
            raise UsageError(f"input={name}, line {number}: no {column!r} field (set text_column=)")
        yield "" if record[column] is None else str(record[column])


def _numbered(texts, stats: dict) -> Iterator[tuple[dict, str]]:
    for index, text in enumerate(texts):
        if text.strip():
            yield {"index": index}, text
        else:
            stats["empty"] += 1
