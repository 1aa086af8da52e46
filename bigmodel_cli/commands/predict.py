"""bigmodel predict: what a trained run makes of raw text, as JSON lines.

A classification run gives labels; a causal-LM (GPT) pretrain run continues each prompt
(sampled text, streamed); a masked-LM (BERT) pretrain run fills each [MASK].

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


def _numbered(texts, stats: dict) -> Iterator[tuple[int, str]]:
    for index, text in enumerate(texts):
        if text.strip():
            yield index, text
        else:
            stats["empty"] += 1


DEFAULT_TOP_K = {"classification": 3, "clm": 50, "mlm": 5}


def run(cfg: DictConfig, run_dir: Path) -> dict:
    from bigmodel_cli.commands.common import load_run
    from bigmodel_cli.engine.runtime import select_device

    top_k = cfg.top_k
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise UsageError(f"top_k={top_k}: must be a whole number (at least 1; 0 for generation: "
                         "sample from every token)")
    if cfg.format not in (None, "jsonl", "text"):
        raise UsageError(f"format={cfg.format}: must be jsonl or text")
    if _data_kind(cfg) != "text":
        return _predict_batches(cfg)
    stats = {"empty": 0, "truncated": 0, "predicted": 0}
    inputs = iter_inputs(cfg, stats)
    first = list(islice(inputs, 1))  # input errors surface before the model loads
    device = select_device(cfg.device.name, cfg.device.threads)
    trained = load_run(cfg.run, cfg.ckpt, device)
    name = trained.task.name
    handlers = {"classification": _classify, "clm": _generate, "mlm": _fill_mask}
    if name not in handlers:
        raise UsageError(f"predict does not support {name} runs")
    k = DEFAULT_TOP_K[name] if top_k is None else top_k
    if k < 1 and name != "clm":
        raise UsageError(f"top_k={k}: must be at least 1")
    with ExitStack() as stack:
        out = _output(cfg, stack)
        handlers[name](cfg, trained, _chunks(first, inputs, cfg.batch_size), out, stats, device, k)
    if stats["empty"]:
        log.info("note: skipped %d empty input line(s)", stats["empty"])
    if stats["truncated"]:
        log.info("note: %d text(s) longer than the run's data.max_length were truncated",
                 stats["truncated"])
    log.info("predicted %d input(s)%s", stats["predicted"], f" -> {cfg.output}" if cfg.output else "")
    return stats


def _output(cfg, stack: ExitStack):
    """Where predictions go: `output=FILE` (its folder is created), else stdout."""
    if not cfg.output:
        return sys.stdout
    path = Path(cfg.output).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return stack.enter_context(open(path, "w", encoding="utf-8"))


def _chunks(first: list, inputs: Iterator, size: int) -> Iterator[list[tuple[int, str]]]:
    chunk = first + list(islice(inputs, size - 1)) if first else []
    while chunk:
        yield chunk
        chunk = list(islice(inputs, size))


def _write(out, record: dict) -> None:
    out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _classify(cfg, trained, chunks, out, stats, device, k: int) -> None:
    """{"index", "label", "label_id", "top_k": [{"label", "prob"}]} per text."""
    import torch

    from bigmodel_cli.data.text import encode_texts, to_tensors
    from bigmodel_cli.data.text_kind import encoding_of
    from bigmodel_cli.engine.trainer import autocast

    names = trained.label_names
    k = min(k, len(names))
    encoding = encoding_of(trained.meta)
    for chunk in chunks:
        indices = [i for i, _ in chunk]
        ids, truncated = encode_texts(trained.tokenizer, [t for _, t in chunk],
                                      encoding["max_length"], encoding["add_special_tokens"])
        stats["truncated"] += truncated
        batch = to_tensors(ids)
        with torch.inference_mode(), autocast(device, cfg.device.precision):
            logits = trained.task.forward(
                trained.model, {"input_ids": batch.input_ids.to(device),
                                "lengths": batch.lengths.to(device)})
            probs = torch.softmax(logits.float(), dim=-1).cpu()
        top_p, top_i = probs.topk(k, dim=-1)
        for index, p_row, i_row in zip(indices, top_p.tolist(), top_i.tolist()):
            _write(out, {"index": index, "label": names[i_row[0]], "label_id": i_row[0],
                         "top_k": [{"label": names[i], "prob": round(p, 6)}
                                   for p, i in zip(p_row, i_row)]})
        out.flush()
        stats["predicted"] += len(chunk)


def _generate(cfg, trained, chunks, out, stats, device, k: int) -> None:
    """Sample `max_new_tokens` after each prompt. format=text (the default here) streams the
    text as it is generated; jsonl writes {"index", "prompt", "generated"} per prompt. Each
    prompt's sampling is seeded by `seed` and its index: the same command, the same text."""
    import torch

    from bigmodel_cli.data.text import encode_texts
    from bigmodel_cli.engine.trainer import autocast

    if cfg.max_new_tokens < 1:
        raise UsageError(f"max_new_tokens={cfg.max_new_tokens}: must be at least 1")
    if cfg.temperature < 0:
        raise UsageError(f"temperature={cfg.temperature}: must be 0 (greedy) or more")
    as_text = (cfg.format or "text") == "text"
    model, tokenizer = trained.model, trained.tokenizer
    window = model.encoder.max_len
    for chunk in chunks:
        for index, prompt in chunk:
            ids, _ = encode_texts(tokenizer, [prompt], None)
            ids = ids[0]
            generator = torch.Generator(device=device).manual_seed(int(cfg.seed) * 1_000_003 + index)
            shown = ""
            if as_text:
                if index and stats["predicted"]:
                    out.write("\n\n")
                out.write(prompt)
            new: list[int] = []
            for _ in range(cfg.max_new_tokens):
                context = torch.tensor([(ids + new)[-window:]], device=device)
                with torch.inference_mode(), autocast(device, cfg.device.precision):
                    logits = model(context, torch.tensor([context.shape[1]], device=device))
                new.append(sample(logits[0, -1].float(), cfg.temperature, k, generator))
                if as_text:  # print what the new token adds to the decoded text
                    text = tokenizer.decode(new)
                    if text.startswith(shown):
                        out.write(text[len(shown):])
                        out.flush()
                        shown = text
            generated = tokenizer.decode(new)
            if as_text:
                out.write(generated[len(shown):] + ("\n" if not generated.endswith("\n") else ""))
            else:
                _write(out, {"index": index, "prompt": prompt, "generated": generated})
            out.flush()
            stats["predicted"] += 1


def sample(logits, temperature: float, top_k: int, generator) -> int:
    """The next token: greedy at temperature 0, else drawn from softmax(logits / T) over the
    top_k most likely tokens (0: all). Special tokens are never generated but [SEP], which
    ends a text."""
    import torch

    from bigmodel_cli.tasks.language_model import SEP_ID

    logits = logits.clone()
    logits[:SEP_ID] = float("-inf")
    logits[SEP_ID + 1:SEP_ID + 2] = float("-inf")  # [MASK]
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k and top_k < logits.shape[0]:
        kth = logits.topk(top_k).values[-1]
        logits[logits < kth] = float("-inf")
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))


def _fill_mask(cfg, trained, chunks, out, stats, device, k: int) -> None:
    """{"index", "text", "filled", "masks": [{"position", "fills": [{"token", "prob"}]}]}:
    the k most likely tokens at each [MASK] of the text (special tokens excluded)."""
    import torch

    from bigmodel_cli.data.text import MASK, encode_texts, to_tensors
    from bigmodel_cli.data.text_kind import encoding_of
    from bigmodel_cli.engine.trainer import autocast
    from bigmodel_cli.tasks.language_model import MASK_ID

    tokenizer = trained.tokenizer
    limit = encoding_of(trained.meta)["max_length"]
    for chunk in chunks:
        ids, truncated = encode_texts(tokenizer, [t for _, t in chunk], limit)
        stats["truncated"] += truncated
        for (index, text), row in zip(chunk, ids):
            if MASK_ID not in row:
                raise UsageError(f"input {index}: no {MASK} in {text!r}; mark each token to "
                                 f"fill with {MASK}")
        batch = to_tensors(ids)
        positions = batch.input_ids == MASK_ID
        with torch.inference_mode(), autocast(device, cfg.device.precision):
            logits = trained.model(batch.input_ids.to(device), batch.lengths.to(device),
                                   positions.to(device)).float()
            logits[:, :MASK_ID + 1] = float("-inf")
            probs = torch.softmax(logits, -1).cpu()
        top_p, top_i = probs.topk(min(k, probs.shape[-1]), -1)
        rows = positions.nonzero().tolist()
        masks_of: dict[int, list] = {}
        for (row, pos), p_row, i_row in zip(rows, top_p.tolist(), top_i.tolist()):
            masks_of.setdefault(row, []).append(
                {"position": pos, "fills": [{"token": tokenizer.id_to_token(i), "prob": round(p, 6)}
                                            for p, i in zip(p_row, i_row)]})
        for row, (index, text) in enumerate(chunk):
            filled = text  # each [MASK] of the text replaced by its most likely fill
            for m in masks_of[row]:
                filled = filled.replace(MASK, m["fills"][0]["token"].removeprefix("##"), 1)
            _write(out, {"index": index, "text": text, "filled": filled,
                         "masks": masks_of[row]})
        out.flush()
        stats["predicted"] += len(chunk)


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
    k = min(DEFAULT_TOP_K["classification"] if cfg.top_k is None else cfg.top_k, len(names))
    if k < 1:
        raise UsageError(f"top_k={cfg.top_k}: must be at least 1")
    regression = trained.task.name == "regression"
    count = 0
    with ExitStack() as stack:
        out = _output(cfg, stack)
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
                _write(out, record)
            out.flush()
            count += len(rows)
    log.info("predicted %d row(s)%s", count, f" -> {cfg.output}" if cfg.output else "")
    return {"predicted": count}
