"""Tokenizers (HF `tokenizers`) and tokenized splits, cached as Arrow.

The tokenizer is a WordPiece model trained on the train split. Its normalizer puts spaces
around CJK characters, so Chinese text splits into single characters while English splits
into word pieces. It is saved as `tokenizer.json` in every run directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("bigmodel.data")

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]
CACHE_VERSION = 2  # bump when the encoding below changes


TOKENIZER_KINDS = ("wordpiece", "bpe", "char", "word")


def train_tokenizer(texts, cfg):
    """Train a tokenizer on `texts` (an iterable of str) as the data.tokenizer config says.

    kind: wordpiece (BERT-style word pieces; CJK text splits into characters), bpe
    (byte-level BPE: any text, whitespace kept), char (one token per character, whitespace
    kept: character-level language models), word (whitespace-separated words, e.g. the
    pre-tokenized WikiText). The special tokens always take ids 0-4, in SPECIAL_TOKENS order.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    kind = cfg.kind
    common = dict(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                  special_tokens=SPECIAL_TOKENS, show_progress=False)
    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=cfg.lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(**common)
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(**common, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind in ("char", "word"):
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        if kind == "char":
            tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
            tokenizer.decoder = decoders.Fuse()
        else:
            tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = trainers.WordLevelTrainer(**common)
    else:
        from bigmodel_cli.errors import UsageError

        raise UsageError(f"data.tokenizer.kind={kind!r}: choose one of {', '.join(TOKENIZER_KINDS)}")
    if cfg.lowercase and kind != "wordpiece":
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if kind == "wordpiece":  # the same ids in every process (see _stable_wordpiece)
        tokenizer.model = _stable_wordpiece(tokenizer.get_vocab())
    return tokenizer


def _stable_wordpiece(vocab: dict[str, int]):
    """A WordPiece model over the same tokens, numbered in a fixed order: the special tokens
    first (ids 0-4), then every other token sorted. The WordPiece trainer of `tokenizers`
    numbers some "##" pieces in hash-map order, which differs from one process to the next.
    Its choice of tokens is not fixed either (it breaks ties between equally frequent pairs
    in that order: 8-22 of ~11,300 tokens differ between two trainings on THUCNews), which
    only the tokenized-splits cache makes repeatable; this fixes the numbering."""
    from tokenizers import models

    rest = sorted(t for t in vocab if t not in SPECIAL_TOKENS)
    ordered = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *rest])}
    return models.WordPiece(ordered, unk_token=UNK, continuing_subword_prefix="##")


def load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


@dataclass
class EncodedSplit:
    """Token ids padded to the longest text, with lengths and (optional) labels, as tensors."""

    input_ids: "torch.Tensor"   # noqa: F821  int64 [N, T]
    lengths: "torch.Tensor"     # noqa: F821  int64 [N]
    labels: "torch.Tensor | None"  # noqa: F821  int64 [N]

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


def encode_texts(tokenizer, texts: list[str], max_length: int | None,
                 add_special_tokens: bool = False) -> tuple[list[list[int]], int]:
    """Token ids of each text, truncated to max_length (None: not truncated).
    Returns (ids, number truncated). A pretrained (Hugging Face) tokenizer adds its own
    special tokens ([CLS] ... [SEP]) with `add_special_tokens`; ours add none."""
    tokenizer.no_padding()
    tokenizer.no_truncation()
    encodings = tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
    ids, truncated = cut_to_length([e.ids for e in encodings], max_length, add_special_tokens)
    return ids, sum(truncated)


def cut_to_length(ids: list[list[int]], max_length: int | None,
                  add_special_tokens: bool = False) -> tuple[list[list[int]], list[bool]]:
    """Each row cut to max_length tokens (None: left whole), and which rows were cut.
    A pretrained tokenizer's closing special token ([SEP]) is kept at the end of a cut row."""
    if max_length is None:
        return ids, [False] * len(ids)
    truncated = [len(i) > max_length for i in ids]
    if add_special_tokens:
        return [i if len(i) <= max_length else i[:max_length - 1] + i[-1:] for i in ids], truncated
    return [i[:max_length] for i in ids], truncated


def token_stream(ids: list[list[int]], separator: int) -> np.ndarray:
    """The texts' ids concatenated, each text followed by `separator` (int64)."""
    return np.fromiter((t for seq in ids for t in (*seq, separator)), dtype=np.int64)


def block_starts(tokens: int, block_size: int, stride: int) -> range:
    """Where the packed blocks of a stream of `tokens` ids start (see pack_blocks)."""
    return range(0, max(tokens - (block_size - stride), 1), stride)


def pack_blocks(ids: list[list[int]], block_size: int, separator: int, stride: int) -> list[list[int]]:
    """Concatenate the texts, each followed by `separator`, and cut the stream into blocks
    of `block_size` tokens that start every `stride` tokens (the last one may be shorter).
    A causal LM uses stride = block_size - 1, so the token that ends one block starts the
    next and every token is predicted exactly once."""
    stream = token_stream(ids, separator)
    if len(ids) == 1:  # one document (a whole book): no separator after it
        stream = stream[:-1]
    return [stream[s:s + block_size].tolist()
            for s in block_starts(len(stream), block_size, stride)]


def to_tensors(ids: list[list[int]] | "pyarrow.ListArray", labels=None) -> EncodedSplit:  # noqa: F821
    import torch

    lengths = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
    width = max(1, int(lengths.max()) if len(lengths) else 1)
    padded = np.zeros((len(ids), width), dtype=np.int64)  # [PAD] is id 0
    for row, seq in enumerate(ids):
        padded[row, : len(seq)] = seq
    return EncodedSplit(
        input_ids=torch.from_numpy(padded),
        lengths=torch.from_numpy(lengths),
        labels=None if labels is None else torch.tensor(np.asarray(labels), dtype=torch.long),
    )


def fit_tokenizer(train, cfg, seed: int):
    """The tokenizer trained on the `text` column of the train split (a `datasets.Dataset`),
    streamed in chunks rather than held as one list. With data.tokenizer.sample_texts, on a
    seeded random sample of that many texts: a corpus too large to hold needs no more to
    learn its vocabulary."""
    from bigmodel_cli.data import splits as splitting

    keep = splitting.sample(len(train), cfg.sample_texts, seed)
    sample = train if keep is None else train.select(keep)
    tokenizer = train_tokenizer(iter_texts(sample), cfg)
    log.info("tokenizer: trained %s on %d train texts%s, vocabulary %d", cfg.kind, len(sample),
             "" if keep is None else f" (a sample of {len(train)})", tokenizer.get_vocab_size())
    return tokenizer


def iter_texts(ds, chunk: int = 10_000):
    """The `text` column of a `datasets.Dataset`, chunk by chunk (lists of str)."""
    for batch in ds.iter(batch_size=chunk):
        yield batch["text"]


def cache_folder(cache_dir: Path, what: str, files: list[Path], settings: dict,
                 always: bool = False) -> Path | None:
    """The cache folder of data made from `files` with `settings`. Without local files (the
    Hub), None, unless `always`: then it is keyed by the settings alone."""
    return cache_dir / what / _cache_key(files, settings) if files or always else None


def fill_cache(folder: Path, write) -> None:
    """Write a cache folder atomically: `write(tmp)` fills a temporary folder, which is then
    renamed into place with a `done` marker, so an interrupted run never leaves a half
    cache that a later one would use."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / "done").write_text("ok\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    log.info("%s: cached in %s", folder.parent.name, folder)


def cache_settings(settings: dict, tokenizer_cfg, tokenizer, **more) -> dict:
    """The cache key's settings: `settings` and the tokenizer (its config when it is trained
    here, else a hash of the given one), besides what `more` adds."""
    return {**settings, "version": CACHE_VERSION, **more,
            "tokenizer": dict(tokenizer_cfg) if tokenizer is None else
            hashlib.sha256(tokenizer.to_str().encode()).hexdigest()}


def _cache_key(files: list[Path], settings: dict) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        st = path.stat()
        h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def tokenize_splits(splits: dict, files: list[Path], settings: dict, cache_dir: Path,
                    tokenizer_cfg, max_length: int | None, tokenizer=None,
                    add_special_tokens: bool = False):
    """Train the tokenizer on train (unless one is given) and encode every split, or load
    both from the cache. Splits are `datasets.Dataset`s with `text` (and, when labeled,
    `label`). `settings` must describe everything that changes the result besides the files
    (split selection, seed, tokenizer settings). Returns (tokenizer, {split: (ids, labels)}),
    ids a list of token-id lists, labels an array or None.
    """
    import datasets

    key_settings = cache_settings(settings, tokenizer_cfg, tokenizer, max_length=max_length,
                                  special=add_special_tokens)
    folder = cache_folder(cache_dir, "tokenized", files, key_settings)
    if folder is not None and (folder / "done").is_file():
        log.info("tokenized splits: loaded from cache %s (no tokenization)", folder)
        tokenizer = load_tokenizer(folder / "tokenizer.json")
        encoded = {}
        for split in splits:
            table = datasets.load_from_disk(str(folder / split)).data.table
            labels = table.column("label").to_numpy() if "label" in table.column_names else None
            encoded[split] = (table.column("input_ids").to_pylist(), labels)
        return tokenizer, encoded

    if tokenizer is None:
        tokenizer = fit_tokenizer(splits["train"], tokenizer_cfg, settings["seed"])
    encoded = {}
    for split, ds in splits.items():
        ids, truncated = encode_texts(tokenizer, ds["text"], max_length, add_special_tokens)
        if truncated:
            log.info("%s: %d of %d texts truncated to data.max_length=%d tokens",
                     split, truncated, len(ids), max_length)
        labels = np.asarray(ds["label"]) if "label" in ds.column_names else None
        encoded[split] = (ids, labels)

    def write(tmp: Path) -> None:
        tokenizer.save(str(tmp / "tokenizer.json"))
        for split, (ids, labels) in encoded.items():
            columns = {"input_ids": ids}
            features = {"input_ids": datasets.Sequence(datasets.Value("int32"))}
            if labels is not None:
                columns["label"] = labels
                features["label"] = datasets.Value("int64")
            datasets.Dataset.from_dict(columns, features=datasets.Features(features)) \
                .save_to_disk(str(tmp / split))

    if folder is not None:
        fill_cache(folder, write)
    return tokenizer, encoded
