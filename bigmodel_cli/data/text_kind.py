"""data.kind=text: labeled texts (classification) and unlabeled corpora (language models).

Texts are tokenized with a tokenizer trained on train (or a given one: a pretrained run's,
or a Hugging Face model's), and held in memory as padded id tensors. For language models
with `data.pack=true`, the texts are concatenated (each ended by [SEP]) and cut into blocks
of data.max_length tokens (+1 for a causal LM, whose blocks overlap by one token so every
token is predicted once); in training those blocks are read from memory-mapped token shards
in the cache (data/shards.py), so a corpus need not fit in memory. Evaluating another
dataset and predicting encode their texts in memory (`encode`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bigmodel_cli.data.kinds import DataContext, EvalData, Prepared
from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel.data")
NO_TEXT = "no text to train or evaluate on: every text is empty"


def to_split(ids: list[list[int]], labels, encoding: dict, sep_id: int, labeled: bool,
             max_blocks: int | None = None, seed: int = 0):
    """Token ids -> EncodedSplit as `encoding` says: packed blocks, or one row per text.
    Unlabeled (language-model) rows drop empty texts: they teach nothing. Packed blocks are
    cut to a seeded subset of at most `max_blocks`: trainer.max_train_samples/max_eval_samples
    subset the texts before packing, which leaves a corpus of a few long documents (Tiny
    Shakespeare is one) as large as it was; this bounds what is trained on in blocks too."""
    from bigmodel_cli.data.text import pack_blocks, to_tensors

    if encoding["pack"] or not labeled:
        ids = [i for i in ids if i]
        if not ids:
            raise UsageError(NO_TEXT)
    if encoding["pack"]:
        length = encoding["max_length"]
        blocks = pack_blocks(ids, length + encoding["overlap"], sep_id, stride=length)
        return to_tensors(_at_most(blocks, max_blocks, seed))
    return to_tensors(ids, labels if labeled else None)


def packed_split(stream, encoding: dict, max_blocks: int | None = None, seed: int = 0):
    """The blocks of a split held in token shards: the same blocks as `to_split` packs."""
    from bigmodel_cli.data import splits
    from bigmodel_cli.data.shards import PackedBlocks
    from bigmodel_cli.data.text import block_starts

    if not len(stream):
        raise UsageError(NO_TEXT)
    size, stride = encoding["max_length"] + encoding["overlap"], encoding["max_length"]
    keep = splits.sample(len(block_starts(len(stream), size, stride)), max_blocks, seed)
    return PackedBlocks(stream, size, stride, keep)


def _at_most(blocks: list, n: int | None, seed: int) -> list:
    """A seeded random subset of n blocks, in their original order (all when n is None)."""
    from bigmodel_cli.data import splits

    keep = splits.sample(len(blocks), n, seed)
    return blocks if keep is None else [blocks[i] for i in keep]


def encode(tokenizer, texts: list[str], labels, encoding: dict, labeled: bool,
           max_blocks: int | None = None, seed: int = 0):
    """Raw texts -> (EncodedSplit, number truncated), the same at training, evaluate, predict."""
    from bigmodel_cli.data.text import SEP, encode_texts

    limit = None if encoding["pack"] else encoding["max_length"] + encoding["overlap"]
    ids, truncated = encode_texts(tokenizer, texts, limit, encoding["add_special_tokens"])
    split = to_split(ids, labels, encoding, tokenizer.token_to_id(SEP), labeled,
                     max_blocks, seed)
    return split, truncated


def _max_samples(ctx: DataContext, split: str) -> int | None:
    return ctx.max_train_samples if split == "train" else ctx.max_eval_samples


def _batches_factory(cfg: DictConfig, ctx: DataContext):
    from bigmodel_cli.data.batching import TextBatches
    from bigmodel_cli.data.shards import BlockBatches, PackedBlocks

    def make(data, batch_size: int, train: bool):
        kind = BlockBatches if isinstance(data, PackedBlocks) else TextBatches
        return kind(data, batch_size, shuffle=train, seed=ctx.seed,
                    bucket_by_length=cfg.trainer.bucket_by_length,
                    rank=ctx.rank if train else 0, world_size=ctx.world_size if train else 1)
    return make


def prepare(cfg: DictConfig, run_dir: Path, ctx: DataContext, task) -> Prepared:
    from bigmodel_cli.commands.transfer import choose_tokenizer
    from bigmodel_cli.data.shards import tokenize_to_shards
    from bigmodel_cli.data.sources import load_text_dataset
    from bigmodel_cli.data.text import SEP, load_tokenizer, tokenize_splits
    from bigmodel_cli.engine import distributed
    from bigmodel_cli.jsonfiles import write_json

    choose_tokenizer(cfg, ctx.model_cfg, ctx.source, ctx, run_dir)  # sets ctx.tokenizer_file
    data = load_text_dataset(cfg.data, seed=ctx.seed, cache_dir=ctx.cache_dir,
                             max_train_samples=ctx.max_train_samples,
                             max_eval_samples=ctx.max_eval_samples)
    if task.needs_labels and not data.label_names:
        raise UsageError(f"data={cfg.data.name}: this dataset has no labels (data.label_column is "
                         f"null), so it cannot train a {task.name} model; pretrain on it "
                         "(bigmodel pretrain), or set data.label_column")
    log.info("splits: %s%s", ", ".join(f"{k} {len(v)}" for k, v in data.splits.items()),
             f"; {len(data.label_names)} labels" if data.label_names else " (unlabeled)")
    encoding = {"max_length": int(cfg.data.max_length), "pack": bool(cfg.data.pack),
                "add_special_tokens": ctx.add_special_tokens, "overlap": task.block_overlap}
    given = load_tokenizer(ctx.tokenizer_file) if ctx.tokenizer_file else None
    selection = {"seed": ctx.seed, "max_train_samples": ctx.max_train_samples,
                 "max_eval_samples": ctx.max_eval_samples,
                 "data": OmegaConf.to_container(cfg.data, resolve=True)}
    if not ctx.is_main:  # rank 0 tokenizes and fills the cache; the others then read it
        distributed.barrier()
    if encoding["pack"]:  # token shards, read through memory maps
        tokenizer, tokenized = tokenize_to_shards(
            data.splits, data.files, {**selection, "encoding": encoding}, ctx.cache_dir,
            cfg.data.tokenizer, tokenizer=given, add_special_tokens=ctx.add_special_tokens)
    else:  # texts cut to the longest a row may be, held in memory
        tokenizer, tokenized = tokenize_splits(
            data.splits, data.files, selection, ctx.cache_dir, cfg.data.tokenizer,
            encoding["max_length"] + encoding["overlap"], tokenizer=given,
            add_special_tokens=ctx.add_special_tokens)
    if ctx.is_main:
        distributed.barrier()  # a no-op outside torchrun
        tokenizer.save(str(run_dir / "tokenizer.json"))
        write_json(run_dir / "labels.json", data.label_names)
    sep_id = tokenizer.token_to_id(SEP)

    def split_of(split: str, made):
        if encoding["pack"]:
            return packed_split(made, encoding, _max_samples(ctx, split), ctx.seed)
        ids, labels = made
        return to_split(ids, labels, encoding, sep_id, task.needs_labels,
                        _max_samples(ctx, split), ctx.seed)

    splits = {split: split_of(split, made) for split, made in tokenized.items()}
    if encoding["pack"]:
        log.info("packed into blocks of %d tokens: %s",
                 encoding["max_length"] + encoding["overlap"],
                 ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return Prepared(splits=splits, make_batches=_batches_factory(cfg, ctx),
                    model_args={"vocab_size": tokenizer.get_vocab_size(), "padding_idx": 0},
                    label_names=data.label_names, encoding=encoding, source=data.source,
                    folder=data.folder, notes=data.notes)


def eval_batches(trained, data_cfg: DictConfig, split: str | None, batch_size: int,
                 ctx: DataContext) -> EvalData:
    """One split of `data_cfg`, encoded with the run's tokenizer exactly as in training."""
    from bigmodel_cli.data.batching import TextBatches
    from bigmodel_cli.data.sources import load_text_dataset

    data = load_text_dataset(data_cfg, seed=ctx.seed, cache_dir=ctx.cache_dir,
                             max_train_samples=ctx.max_train_samples,
                             max_eval_samples=ctx.max_eval_samples)
    split = choose_split(data.splits, split, data_cfg)
    encoding = encoding_of(trained.meta)
    ds = data.splits[split]
    labels = ds["label"] if trained.task.needs_labels else None
    if trained.task.needs_labels and data.label_names != trained.label_names:
        raise UsageError(f"the labels of the data ({data.label_names}) differ from the run's "
                         f"labels.json ({trained.label_names})")
    encoded, _ = encode(trained.assets, ds["text"], labels, encoding,
                        trained.task.needs_labels, _max_samples(ctx, split), ctx.seed)
    return EvalData(split=split, batches=TextBatches(encoded, batch_size, shuffle=False),
                    label_names=data.label_names)


def encoding_of(meta: dict) -> dict:
    """The checkpoint's encoding settings (runs from before they were recorded: the defaults)."""
    return meta.get("encoding") or {"max_length": meta["max_length"], "pack": False,
                                    "add_special_tokens": False, "overlap": 0}


def choose_split(splits: dict, split: str | None, data_cfg: DictConfig) -> str:
    wanted = split or data_cfg.eval_split
    if wanted in splits:
        if split is None and wanted != "test":
            log.info("note: %s has no labeled test split; evaluating on %s", data_cfg.name, wanted)
        return wanted
    if split is None and "validation" in splits:
        log.warning("note: %s has no %s split; evaluating on validation", data_cfg.name, wanted)
        return "validation"
    raise UsageError(f"split={wanted}: the dataset has no such split (it has {', '.join(splits)})")


def load_assets(run_dir: Path, meta: dict):
    """The run's tokenizer (tokenizer.json)."""
    from bigmodel_cli.data.text import load_tokenizer

    path = Path(run_dir) / "tokenizer.json"
    if not path.is_file():
        raise UsageError(f"run={run_dir}: incomplete run directory, tokenizer.json is missing "
                         f"(looked for {path})")
    try:
        return load_tokenizer(path)
    except Exception as exc:
        raise UsageError(f"run={run_dir}: unreadable tokenizer.json ({exc})") from None


def read_inputs(cfg: DictConfig, stats: dict):
    from bigmodel_cli.data.text_inputs import read_inputs as read_texts

    return read_texts(cfg, stats)


def encode_inputs(trained, texts: list[str], task) -> tuple[dict, list[bool]]:
    """Texts -> {"index", "input_ids", "lengths"}, cut to the run's max length as in
    training, unless the task reads whole inputs (generation slides its window instead)."""
    import torch

    from bigmodel_cli.data.text import cut_to_length, encode_texts, to_tensors

    encoding = encoding_of(trained.meta)
    limit = encoding["max_length"] if task.truncates_inputs else None
    ids, _ = encode_texts(trained.assets, texts, None, encoding["add_special_tokens"])
    ids, truncated = cut_to_length(ids, limit, encoding["add_special_tokens"])
    batch = to_tensors(ids)
    return ({"index": torch.arange(len(texts)), "input_ids": batch.input_ids,
             "lengths": batch.lengths}, truncated)


def request_inputs(trained, inputs: list) -> list[str]:
    """A request's `inputs` (JSON values) -> texts; UsageError naming the first bad item."""
    for i, text in enumerate(inputs):
        if not isinstance(text, str):
            raise UsageError(f"inputs[{i}]: expected a text (a JSON string), got "
                             f"{type(text).__name__}")
        if not text.strip():
            raise UsageError(f"inputs[{i}]: empty text")
    return list(inputs)


def input_schema(trained) -> dict:
    """What a request's `inputs` hold for this run, with an example (for /v1/metadata, /docs)."""
    example = "ROMEO:" if trained.task.generates_text else (
        "The capital of France is [MASK]." if trained.task.name == "mlm" else "央行宣布下调存款准备金率")
    return {"kind": "text", "items": "string",
            "max_length": encoding_of(trained.meta)["max_length"],
            "truncated": bool(trained.task.truncates_inputs), "example": [example]}
