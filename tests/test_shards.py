"""Packed corpora as memory-mapped token shards: the same blocks and batches as the
in-memory packing, the id type, globs and .gz files, the cache, resume, bad globs."""

from __future__ import annotations

import gzip

import datasets
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bigmodel_cli.data.batching import TextBatches
from bigmodel_cli.data.shards import BlockBatches, PackedBlocks, TokenStream, id_dtype, write_split
from bigmodel_cli.data.text import (
    SEP,
    encode_texts,
    fill_cache,
    pack_blocks,
    to_tensors,
    train_tokenizer,
)
from tests.conftest import run_dir_of
from tests.test_resume import weights_equal

TOKENIZER = OmegaConf.create({"kind": "bpe", "vocab_size": 400, "min_frequency": 2,
                              "lowercase": False})


@pytest.fixture(scope="module")
def lines(shared_data) -> list[str]:
    """The first 3,000 lines of Tiny Shakespeare, blank lines included."""
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    return text.splitlines()[:3000]


def shards_of(texts, tokenizer, folder, shard_tokens):
    entry = write_split(datasets.Dataset.from_dict({"text": texts}), tokenizer, folder, "train",
                        add_special_tokens=False, shard_tokens=shard_tokens, chunk=500)
    return entry, TokenStream(folder, entry)


@pytest.mark.parametrize("overlap", [1, 0])  # causal LM blocks overlap by one id; masked LM
def test_shard_blocks_equal_in_memory_packed_blocks(lines, tmp_path, overlap):
    tokenizer = train_tokenizer(lines, TOKENIZER)
    # Shards of 2,000 ids: many blocks span two shards.
    entry, stream = shards_of(lines, tokenizer, tmp_path, shard_tokens=2000)
    assert len(entry["shards"]) > 5 and entry["dtype"] == "uint16"
    ids = [i for i in encode_texts(tokenizer, lines, None)[0] if i]  # empty lines dropped
    length, sep = 64, tokenizer.token_to_id(SEP)
    in_memory = to_tensors(pack_blocks(ids, length + overlap, sep, stride=length))
    blocks = PackedBlocks(stream, length + overlap, stride=length)
    assert len(blocks) == len(in_memory) and entry["texts"] == len(ids)
    assert torch.equal(blocks.lengths, in_memory.lengths)
    # One shuffled epoch, batch by batch: the same rows, ids and lengths.
    for epoch in (0, 1):
        a = TextBatches(in_memory, 16, shuffle=True, seed=3)
        b = BlockBatches(blocks, 16, shuffle=True, seed=3)
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        pairs = list(zip(a, b, strict=True))
        assert len(pairs) == len(a)
        for x, y in pairs:
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_one_document_has_no_separator_after_it(lines, tmp_path):
    document = "\n".join(lines[:200])
    tokenizer = train_tokenizer([document], TOKENIZER)
    _, stream = shards_of([document], tokenizer, tmp_path, shard_tokens=1000)
    ids = encode_texts(tokenizer, [document], None)[0]
    expected = pack_blocks(ids, 65, tokenizer.token_to_id(SEP), stride=64)
    blocks = PackedBlocks(stream, 65, stride=64)
    got = blocks.rows(np.arange(len(blocks)))
    assert [row[:n].tolist() for row, n in zip(got, blocks.lengths)] == expected


def test_ranks_read_disjoint_blocks_that_make_up_the_batch(lines, tmp_path):
    tokenizer = train_tokenizer(lines, TOKENIZER)
    _, stream = shards_of(lines, tokenizer, tmp_path, shard_tokens=5000)
    blocks = PackedBlocks(stream, 65, stride=64)
    whole = next(iter(BlockBatches(blocks, 8, shuffle=True, seed=1)))
    parts = [next(iter(BlockBatches(blocks, 8, shuffle=True, seed=1, rank=r, world_size=2)))
             for r in (0, 1)]
    assert set(parts[0]["index"].tolist()).isdisjoint(parts[1]["index"].tolist())
    rows = {int(i): row for p in parts for i, row in zip(p["index"], p["input_ids"])}
    for i, row in zip(whole["index"], whole["input_ids"]):
        assert torch.equal(rows[int(i)], row)


def test_ids_are_uint16_when_the_vocabulary_fits_else_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    assert id_dtype(65536) == "uint16" and id_dtype(65537) == "uint32"
    # A word-level vocabulary of 70,000 words: ids above 65,535 must survive the shards.
    words = [f"w{i}" for i in range(70_000)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    texts = ["w0 w69999 w65535", "w12345 w66000"]
    entry, stream = shards_of(texts, tokenizer, tmp_path, shard_tokens=4)
    assert entry["dtype"] == "uint32"
    assert (tmp_path / entry["shards"][0]).stat().st_size == 4 * 4
    expected = [5, 70_004, 65_540, 3, 12_350, 66_005, 3]
    assert stream.read(0, len(stream)).tolist() == expected


def test_an_interrupted_cache_write_leaves_no_cache(tmp_path):
    folder = tmp_path / "shards" / "key"

    def write(tmp):
        (tmp / "train-00000.bin").write_bytes(b"\0" * 10)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fill_cache(folder, write)
    assert not (tmp_path / "shards").exists() or not any((tmp_path / "shards").iterdir())


def _corpus(folder, lines):
    """corpus/a.txt and corpus/b.txt.gz: two halves of the lines."""
    (folder / "corpus").mkdir()
    (folder / "corpus" / "a.txt").write_text("\n".join(lines[:1500]) + "\n", encoding="utf-8")
    with gzip.open(folder / "corpus" / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines[1500:]) + "\n")


GPT = ("pretrain", "model=gpt_tiny", "data=text", "data.files.train=corpus/*.txt*",
       "data.max_length=32", "model.max_len=33", "data.tokenizer.vocab_size=300",
       "trainer.batch_size=16", "trainer.log_every_steps=2", "device.threads=1")


def test_globbed_gz_corpus_is_sharded_once_and_keyed(cli, lines):
    _corpus(cli.cwd, lines)
    first = cli(*GPT, "trainer.max_steps=2", "data.tokenizer.sample_texts=500")
    run_dir_of(first, cli.cwd)
    # 3,000 lines (blank ones too), 5% held out as validation.
    assert "splits: train 2850, validation 150" in first.stderr, first.stderr
    assert "tokenizer: trained bpe on 500 train texts (a sample of 2850)" in first.stderr
    assert "token shards: train" in first.stderr and "uint16" in first.stderr
    again = cli(*GPT, "trainer.max_steps=2", "data.tokenizer.sample_texts=500")
    assert "token shards: loaded from cache" in again.stderr and "tokenizer:" not in again.stderr
    # Other block settings, or a changed corpus file: tokenized again.
    longer = cli(*GPT, "trainer.max_steps=2", "data.tokenizer.sample_texts=500",
                 "data.max_length=16")
    assert "token shards: train" in longer.stderr, longer.stderr
    with gzip.open(cli.cwd / "corpus" / "b.txt.gz", "at", encoding="utf-8") as f:
        f.write("One more line.\n")
    changed = cli(*GPT, "trainer.max_steps=2", "data.tokenizer.sample_texts=500")
    assert "token shards: train" in changed.stderr and "splits: train 2851" in changed.stderr


def test_resume_from_shards_is_bitwise_exact(cli, lines):
    _corpus(cli.cwd, lines)
    args = (*GPT, "model.dropout=0.1", "trainer.max_steps=6", "trainer.eval_every_steps=3")
    straight = run_dir_of(cli(*args, "hydra.run.dir=outputs/straight"), cli.cwd)
    paused = run_dir_of(cli(*args, "trainer.pause_after_steps=3"), cli.cwd)
    resumed = cli("pretrain", "trainer.resume=auto")
    assert run_dir_of(resumed, cli.cwd) == paused
    assert "token shards: loaded from cache" in resumed.stderr
    assert "resumed at step 3" in resumed.stderr
    for ckpt in ("best", "last"):
        assert weights_equal(straight / "checkpoints" / ckpt, paused / "checkpoints" / ckpt)


def test_a_glob_matching_nothing_is_a_usage_error(cli):
    result = cli("pretrain", "model=gpt_tiny", "data=text", "data.files.train=corpus/*.txt")
    assert result.returncode == 2, result.stderr
    assert "files matching corpus/*.txt" in result.stderr
    assert "Traceback" not in result.stderr
