"""Packed language-model data as memory-mapped token shards in the cache.

The first run streams each split through the tokenizer, a chunk of texts at a time, and
appends the ids (each text followed by [SEP], as `pack_blocks` concatenates them) to shard
files of at most SHARD_TOKENS ids: uint16 when the vocabulary fits, else uint32. `index.json`
says which shards hold each split. Neither the corpus nor its ids are ever held whole, and a
run reads its blocks from `np.memmap`s of the shards, so its memory does not grow with the
corpus. The folder is keyed like the Arrow cache (the files, the tokenizer, the data and
block settings) and written atomically (text.fill_cache).

Blocks are windows of the stream (text.block_starts), so the blocks, their order and every
batch are the same as those of the in-memory packing; the read position of a run is its
epoch and the batches done in it, which the training state already holds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from bigmodel_cli.data.batching import TextBatches

log = logging.getLogger("bigmodel.data")

SHARD_TOKENS = 1 << 27  # 128M ids: 256 MB of uint16 per shard


def id_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


class TokenStream:
    """One split's ids, read from its shards through memory maps."""

    def __init__(self, folder: Path, entry: dict) -> None:
        self.tokens = entry["tokens"]  # a single text has no [SEP] after it: one fewer
        self.maps = [np.memmap(folder / name, dtype=entry["dtype"], mode="r", shape=(size,))
                     for name, size in zip(entry["shards"], entry["sizes"])]
        self.offsets = np.cumsum([0, *entry["sizes"]])

    def __len__(self) -> int:
        return self.tokens

    def read(self, start: int, stop: int) -> np.ndarray:
        """Ids start..stop-1 (int64), across shard boundaries where a block spans one."""
        stop = min(stop, self.tokens)
        parts = []
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            end = min(stop, int(self.offsets[shard + 1]))
            base = int(self.offsets[shard])
            parts.append(self.maps[shard][start - base:end - base])
            start, shard = end, shard + 1
        return np.concatenate(parts).astype(np.int64)


class _ShardWriter:
    """Appends ids to `<split>-00000.bin`, `<split>-00001.bin`, ... of at most `shard_tokens`."""

    def __init__(self, folder: Path, split: str, dtype: str, shard_tokens: int) -> None:
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.shards: list[str] = []
        self.sizes: list[int] = []
        self.file = None

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.file is None:
                self.shards.append(f"{self.split}-{len(self.shards):05d}.bin")
                self.sizes.append(0)
                self.file = open(self.folder / self.shards[-1], "wb")
            room = self.shard_tokens - self.sizes[-1]
            part, ids = ids[:room], ids[room:]
            part.astype(self.dtype).tofile(self.file)
            self.sizes[-1] += len(part)
            if self.sizes[-1] == self.shard_tokens:
                self.close()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def write_split(ds, tokenizer, folder: Path, split: str, add_special_tokens: bool,
                shard_tokens: int = SHARD_TOKENS, chunk: int = 10_000) -> dict:
    """Tokenize the `text` column of `ds` chunk by chunk into shards; returns its index entry.
    Empty texts are left out: they teach nothing (as in the in-memory packing)."""
    from bigmodel_cli.data.text import SEP, encode_texts, iter_texts, token_stream

    dtype = id_dtype(tokenizer.get_vocab_size())
    writer = _ShardWriter(folder, split, dtype, shard_tokens)
    texts = 0
    for batch in iter_texts(ds, chunk):
        ids, _ = encode_texts(tokenizer, batch, None, add_special_tokens)
        ids = [i for i in ids if i]
        texts += len(ids)
        writer.write(token_stream(ids, tokenizer.token_to_id(SEP)))
    writer.close()
    total = sum(writer.sizes)
    return {"shards": writer.shards, "sizes": writer.sizes, "dtype": dtype, "texts": texts,
            "tokens": total - 1 if texts == 1 else total}  # one document: no [SEP] after it


def tokenize_to_shards(splits: dict, files: list[Path], settings: dict, cache_dir: Path,
                       tokenizer_cfg, tokenizer=None, add_special_tokens: bool = False,
                       shard_tokens: int = SHARD_TOKENS):
    """Train the tokenizer on train (unless one is given) and write every split into token
    shards, or find both in the cache. Returns (tokenizer, {split: TokenStream})."""
    from bigmodel_cli.data.text import (
        cache_folder,
        cache_settings,
        fill_cache,
        fit_tokenizer,
        load_tokenizer,
    )

    key_settings = cache_settings(settings, tokenizer_cfg, tokenizer, special=add_special_tokens)
    folder = cache_folder(cache_dir, "shards", files, key_settings, always=True)
    if (folder / "done").is_file():
        log.info("token shards: loaded from cache %s (no tokenization)", folder)
        return load_tokenizer(folder / "tokenizer.json"), _open(folder)
    if tokenizer is None:
        tokenizer = fit_tokenizer(splits["train"], tokenizer_cfg, settings["seed"])

    def write(tmp: Path) -> None:
        tokenizer.save(str(tmp / "tokenizer.json"))
        index = {split: write_split(ds, tokenizer, tmp, split, add_special_tokens, shard_tokens)
                 for split, ds in splits.items()}
        (tmp / "index.json").write_text(json.dumps(index, indent=1))
        log.info("token shards: %s", ", ".join(
            f"{split} {e['tokens']:,} ids ({e['dtype']}, {len(e['shards'])} shards)"
            for split, e in index.items()))

    fill_cache(folder, write)
    return tokenizer, _open(folder)


def _open(folder: Path) -> dict[str, TokenStream]:
    index = json.loads((folder / "index.json").read_text())
    return {split: TokenStream(folder, entry) for split, entry in index.items()}


class PackedBlocks:
    """The blocks of one split: `block_size` ids starting every `stride` ids of the stream
    (the last may be shorter), or the kept subset of them (`keep`, sorted block numbers)."""

    def __init__(self, stream: TokenStream, block_size: int, stride: int,
                 keep: np.ndarray | None = None) -> None:
        from bigmodel_cli.data.text import block_starts

        starts = np.asarray(block_starts(len(stream), block_size, stride), dtype=np.int64)
        self.starts = starts if keep is None else starts[keep]
        self.stream, self.block_size = stream, block_size
        self.lengths = torch.from_numpy(np.minimum(block_size, len(stream) - self.starts))

    def __len__(self) -> int:
        return len(self.starts)

    def rows(self, index: np.ndarray) -> torch.Tensor:
        """The blocks `index`, padded with [PAD] (id 0) to the longest of them."""
        width = max(1, int(self.lengths[torch.from_numpy(index)].max()))
        out = np.zeros((len(index), width), dtype=np.int64)
        for row, i in enumerate(index):
            block = self.stream.read(int(self.starts[i]), int(self.starts[i]) + self.block_size)
            out[row, :len(block)] = block
        return torch.from_numpy(out)


class BlockBatches(TextBatches):
    """Batches of packed blocks read from the shards, in the order TextBatches gives the
    same blocks held in memory; under torchrun each rank reads only its own rows."""

    def batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        idx = torch.from_numpy(index)
        return {"index": idx, "input_ids": self.data.rows(index), "lengths": self.data.lengths[idx]}
