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
CACHE_VERSION = 1  # bump when the encoding below changes


def train_tokenizer(texts, vocab_size: int, min_frequency: int, lowercase: bool):
    """Train a WordPiece tokenizer on `texts` (an iterable of str)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


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


def encode_texts(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of each text, truncated to max_length. Returns (ids, number truncated)."""
    tokenizer.no_padding()
    tokenizer.no_truncation()
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    ids = [e.ids for e in encodings]
    truncated = sum(1 for i in ids if len(i) > max_length)
    return [i[:max_length] for i in ids], truncated


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


def _cache_key(files: list[Path], settings: dict) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        st = path.stat()
        h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def tokenize_splits(splits: dict, files: list[Path], settings: dict, cache_dir: Path,
                    tokenizer_cfg, max_length: int):
    """Train the tokenizer on train and encode every split, or load both from the cache.

    `settings` must describe everything that changes the result besides the files (split
    selection, seed, tokenizer settings). Returns (tokenizer, {split: EncodedSplit}).
    """
    import datasets

    key = _cache_key(files, {**settings, "max_length": max_length, "version": CACHE_VERSION,
                             "tokenizer": dict(tokenizer_cfg)}) if files else None
    folder = cache_dir / "tokenized" / key if key else None
    if folder is not None and (folder / "done").is_file():
        log.info("tokenized splits: loaded from cache %s (no tokenization)", folder)
        tokenizer = load_tokenizer(folder / "tokenizer.json")
        encoded = {}
        for split in splits:
            table = datasets.load_from_disk(str(folder / split)).data.table
            ids = table.column("input_ids").to_pylist()
            encoded[split] = to_tensors(ids, table.column("label").to_numpy())
        return tokenizer, encoded

    tokenizer = train_tokenizer(
        splits["train"]["text"], tokenizer_cfg.vocab_size, tokenizer_cfg.min_frequency,
        tokenizer_cfg.lowercase,
    )
    log.info("tokenizer: trained WordPiece on %d train texts, vocabulary %d",
             len(splits["train"]), tokenizer.get_vocab_size())
    encoded, columns = {}, {}
    for split, ds in splits.items():
        ids, truncated = encode_texts(tokenizer, ds["text"], max_length)
        if truncated:
            log.info("%s: %d of %d texts truncated to data.max_length=%d tokens",
                     split, truncated, len(ids), max_length)
        columns[split] = (ids, ds["label"])
        encoded[split] = to_tensors(ids, ds["label"])
    if folder is not None:
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tokenizer.save(str(tmp / "tokenizer.json"))
        features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32")),
                                      "label": datasets.Value("int64")})
        for split, (ids, labels) in columns.items():
            datasets.Dataset.from_dict({"input_ids": ids, "label": labels}, features=features) \
                .save_to_disk(str(tmp / split))
        (tmp / "done").write_text("ok\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        log.info("tokenized splits: cached in %s", folder)
    return tokenizer, encoded
