"""bigmodel predict: labels for raw text (or images, or table rows) from a trained run, as JSON lines.

Inputs: `text=` (one or a list), `input=FILE` (.txt one text per line; .csv/.tsv/.jsonl/
.parquet with `text_column`), or `input=-` for standard input (one text per line).
Each output line: {"index": i, "label": name, "label_id": k, "top_k": [{"label", "prob"}, ...]}.
Inputs are read and scored in batches, so a large file streams in constant memory.
Empty lines are skipped (their index is not reused; a note gives the count), invalid UTF-8
is replaced with U+FFFD, and texts longer than the run's data.max_length tokens are
truncated, as they were in training.
Image runs take `input=` an image, a folder of images or a .csv/.tsv list of image paths
(`path_column`); tabular runs a .csv/.tsv/.parquet file of rows (see _predict_batches).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from itertools import islice
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel")


def iter_inputs(cfg: DictConfig, stats: dict) -> Iterator[tuple[int, str]]:
    """(index, text) for every non-empty input text, lazily."""
    if (cfg.text is None) == (cfg.input is None):
        raise UsageError("give exactly one of text=\"...\" (or text='[a,b]'), input=FILE or input=-")
    if cfg.text is not None:
        texts = list(cfg.text) if isinstance(cfg.text, (list, ListConfig)) else [cfg.text]
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


def _numbered(texts, stats: dict) -> Iterator[tuple[int, str]]:
    for index, text in enumerate(texts):
        if text.strip():
            yield index, text
        else:
            stats["empty"] += 1


def run(cfg: DictConfig, run_dir: Path) -> dict:
    import torch

    from bigmodel_cli.commands.common import load_run
    from bigmodel_cli.data.text import encode_texts, to_tensors
    from bigmodel_cli.engine.runtime import select_device
    from bigmodel_cli.engine.trainer import autocast

    if cfg.top_k < 1:
        raise UsageError(f"top_k={cfg.top_k}: must be at least 1")
    if _data_kind(cfg) != "text":
        return _predict_batches(cfg)
    stats = {"empty": 0, "truncated": 0, "predicted": 0}
    inputs = iter_inputs(cfg, stats)
    first = list(islice(inputs, 1))  # input errors surface before the model loads
    device = select_device(cfg.device.name, cfg.device.threads)
    trained = load_run(cfg.run, cfg.ckpt, device)
    names = trained.label_names
    k = min(cfg.top_k, len(names))
    max_length = trained.meta["max_length"]
    with ExitStack() as stack:
        out = sys.stdout
        if cfg.output:
            out_path = Path(cfg.output).expanduser()
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(open(out_path, "w", encoding="utf-8"))
        chunk = first + list(islice(inputs, cfg.batch_size - 1)) if first else []
        while chunk:
            indices = [i for i, _ in chunk]
            ids, truncated = encode_texts(trained.tokenizer, [t for _, t in chunk], max_length)
            stats["truncated"] += truncated
            batch = to_tensors(ids)
            with torch.inference_mode(), autocast(device, cfg.device.precision):
                logits = trained.task.forward(
                    trained.model, {"input_ids": batch.input_ids.to(device),
                                    "lengths": batch.lengths.to(device)})
                probs = torch.softmax(logits.float(), dim=-1).cpu()
            top_p, top_i = probs.topk(k, dim=-1)
            for index, p_row, i_row in zip(indices, top_p.tolist(), top_i.tolist()):
                out.write(json.dumps({
                    "index": index, "label": names[i_row[0]], "label_id": i_row[0],
                    "top_k": [{"label": names[i], "prob": round(p, 6)} for p, i in zip(p_row, i_row)],
                }, ensure_ascii=False) + "\n")
            out.flush()
            stats["predicted"] += len(chunk)
            chunk = list(islice(inputs, cfg.batch_size))
    if stats["empty"]:
        log.info("note: skipped %d empty input line(s)", stats["empty"])
    if stats["truncated"]:
        log.info("note: %d text(s) longer than %d tokens were truncated", stats["truncated"], max_length)
    log.info("predicted %d text(s)%s", stats["predicted"],
             f" -> {cfg.output}" if cfg.output else "")
    return stats


def _data_kind(cfg: DictConfig) -> str:
    """The kind of data the run was trained on, from its checkpoint's meta.json (no torch)."""
    from bigmodel_cli.engine.checkpoint import read_meta, resolve_checkpoint

    return read_meta(resolve_checkpoint(Path(cfg.run), cfg.ckpt)).get("data_kind", "text")


def _predict_batches(cfg: DictConfig) -> dict:
    """Images and table rows: the data kind reads `input=` into batches; one JSON line per row.
    Classification: {"index", ..., "label", "label_id", "top_k"}; regression: {"index",
    "prediction"} in the target's original units (image rows also carry their "path")."""
    import torch

    from bigmodel_cli.commands.common import load_run
    from bigmodel_cli.data import kinds
    from bigmodel_cli.engine.runtime import select_device
    from bigmodel_cli.engine.trainer import autocast, move

    device = select_device(cfg.device.name, cfg.device.threads)
    trained = load_run(cfg.run, cfg.ckpt, device)
    names = trained.label_names
    k = min(cfg.top_k, len(names))
    regression = trained.task.name == "regression"
    count = 0
    with ExitStack() as stack:
        out = sys.stdout
        if cfg.output:
            out_path = Path(cfg.output).expanduser()
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(open(out_path, "w", encoding="utf-8"))
        for rows, batch in kinds.module(trained.config.data).predict_batches(trained, cfg,
                                                                             cfg.batch_size):
            with torch.inference_mode(), autocast(device, cfg.device.precision):
                outputs = trained.task.forward(trained.model, move(batch, device))
            if regression:
                values = outputs["value"].float().cpu().tolist()
                records = [{**row, "prediction": v[0] if len(v) == 1 else dict(zip(names, v))}
                           for row, v in zip(rows, values)]
            else:
                probs = torch.softmax(outputs.float(), dim=-1).cpu()
                top_p, top_i = probs.topk(k, dim=-1)
                records = [{**row, "label": names[i_row[0]], "label_id": i_row[0],
                            "top_k": [{"label": names[i], "prob": round(p, 6)}
                                      for p, i in zip(p_row, i_row)]}
                           for row, p_row, i_row in zip(rows, top_p.tolist(), top_i.tolist())]
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            count += len(rows)
    log.info("predicted %d row(s)%s", count, f" -> {cfg.output}" if cfg.output else "")
    return {"predicted": count}
