"""Unit checks of the pieces the end-to-end tests rely on: models, schedules, checkpoints,
splits, config type checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bigmodel_cli.data import splits
from bigmodel_cli.engine.checkpoint import load_state, resolve_checkpoint, save_checkpoint
from bigmodel_cli.engine.optim import RowSparseAdam
from bigmodel_cli.engine.schedules import cosine, linear_warmup
from bigmodel_cli.errors import UsageError
from bigmodel_cli.models.fasttext import FastTextEncoder
from bigmodel_cli.models.lstm import LSTMEncoder, reverse_valid


@pytest.mark.parametrize("pooling", ["max", "mean", "last"])
def test_lstm_output_does_not_depend_on_padding(pooling):
    torch.manual_seed(0)
    model = LSTMEncoder(100, 0, embedding_dim=16, hidden_size=8, pooling=pooling).eval()
    lengths = torch.tensor([9, 6, 2, 1])
    ids = torch.randint(1, 100, (4, 9))
    for row, n in enumerate(lengths):
        ids[row, n:] = 0
    batched = model(ids, lengths)
    for row, n in enumerate(lengths):
        alone = model(ids[row:row + 1, :n], lengths[row:row + 1])
        torch.testing.assert_close(batched[row], alone[0])


def test_reverse_valid_keeps_padding_in_place():
    x = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]]).unsqueeze(-1)
    out = reverse_valid(x, torch.tensor([3, 2])).squeeze(-1)
    assert out.tolist() == [[3, 2, 1, 0], [5, 4, 0, 0]]


def test_fasttext_bigrams_are_hashed_and_padding_ignored():
    model = FastTextEncoder(vocab_size=10, padding_idx=0, embedding_dim=4, ngram_buckets=7)
    ids = torch.tensor([[1, 2, 3, 0], [1, 2, 3, 4]])
    grams = model.ngram_ids(ids, torch.tensor([3, 4]))
    assert grams.shape == (2, 4 + 3)
    assert grams[0, :3].tolist() == [1, 2, 3] and grams[0, 3] == 0
    bigrams = grams[0, 4:]
    assert bigrams[2] == 0                       # (3, PAD) is not a bigram
    assert ((bigrams[:2] >= 10) & (bigrams[:2] < 17)).all()
    assert grams[0, 4:6].tolist() == grams[1, 4:6].tolist()  # same bigram, same bucket
    emb = model(ids, torch.tensor([3, 4]))
    assert emb.shape == (2, 4)
    # The mean ignores padding: appending padding does not change the embedding.
    padded = torch.cat([ids[:1], torch.zeros(1, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded, torch.tensor([3])), emb[:1])


def test_fasttext_trigrams_hash_each_window_of_three():
    model = FastTextEncoder(vocab_size=10, padding_idx=0, embedding_dim=4, ngram_buckets=7, ngrams=3)
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 0]])
    grams = model.ngram_ids(ids, torch.tensor([4, 3]))
    # 4 unigrams, 3 bigrams, 2 trigrams; an n-gram (a, b[, c]) goes to bucket
    # 10 + (a + b * 116049371 [+ c * 2654435761]) mod 7, worked out by hand.
    assert grams[0].tolist() == [1, 2, 3, 4, 12, 10, 15, 13, 16]
    # The second text ends after 3: no (3, PAD) bigram and no (2, 3, PAD) trigram.
    assert grams[1].tolist() == [1, 2, 3, 0, 12, 10, 0, 13, 0]
    bigram_only = FastTextEncoder(vocab_size=10, padding_idx=0, embedding_dim=4, ngram_buckets=7)
    assert bigram_only.ngram_ids(ids, torch.tensor([4, 3]))[0].tolist() == [1, 2, 3, 4, 12, 10, 15]


def test_row_sparse_adam_matches_sparse_adam_and_loads_its_state():
    torch.manual_seed(0)
    tables = [torch.nn.EmbeddingBag(50, 6, mode="mean", sparse=True) for _ in range(2)]
    tables[1].load_state_dict(tables[0].state_dict())
    theirs = torch.optim.SparseAdam(tables[0].parameters(), lr=0.05)
    ours = RowSparseAdam(tables[1].parameters(), lr=0.05)
    start = tables[0].weight.detach().clone()
    for _ in range(6):
        ids = torch.randint(0, 50, (8, 5))
        ids[0, :2] = 3                            # a row used twice in a bag and by two bags
        ids[1, 0] = 3
        for table, opt in zip(tables, (theirs, ours), strict=True):
            opt.zero_grad()
            table(ids).pow(2).sum().backward()
            opt.step()
        torch.testing.assert_close(tables[1].weight, tables[0].weight)
    assert not torch.equal(tables[1].weight, start)   # the updates did something
    resumed = RowSparseAdam(tables[1].parameters(), lr=0.05)
    resumed.load_state_dict(theirs.state_dict())  # a checkpoint written with SparseAdam
    assert resumed.state[tables[1].weight]["step"] == 6


def test_schedules():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_warmup(opt, total_steps=100, warmup_ratio=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[50] == pytest.approx((100 - 50) / 90) and lrs[-1] < 0.02
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = cosine(opt2, total_steps=10, warmup_ratio=0.0, min_lr_ratio=0.1)
    values = []
    for _ in range(11):
        values.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(0.1)


def test_checkpoint_is_atomic_and_state_loads_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    target = tmp_path / "checkpoints" / "last"
    state = {"step": 3, "rng": {"torch": torch.get_rng_state()}, "python": (3, (1, 2), None)}
    save_checkpoint(target, model, {"step": 3}, state)
    save_checkpoint(target, model, {"step": 4}, state)  # replaces the previous one
    assert sorted(p.name for p in target.parent.iterdir()) == ["last"]
    assert load_state(target)["step"] == 3
    # A crash between the two renames leaves only the previous copy: it is still found.
    (target.parent / "last").rename(target.parent / ".last.old-123")
    assert resolve_checkpoint(tmp_path, "last").name == ".last.old-123"
    with pytest.raises(UsageError, match="no best checkpoint"):
        resolve_checkpoint(tmp_path, "best")


def test_stratified_parts_are_seeded_disjoint_and_balanced():
    labels = np.repeat(np.arange(4), 100)
    a = splits.partition(len(labels), [0.8, 0.1, 0.1], seed=1, labels=labels)
    b = splits.partition(len(labels), [0.8, 0.1, 0.1], seed=1, labels=labels)
    assert all((x == y).all() for x, y in zip(a, b))
    assert [len(p) for p in a] == [320, 40, 40]
    assert len(np.unique(np.concatenate(a))) == 400
    assert np.bincount(labels[a[1]]).tolist() == [10, 10, 10, 10]


def test_subsets_are_exact_stratified_and_unlabeled_rows_split_at_random():
    labels = np.array([0] * 90 + [1] * 10)
    keep = splits.sample(100, 20, seed=3, labels=labels)
    assert len(keep) == 20 and np.bincount(labels[keep]).tolist() == [18, 2]
    assert splits.sample(100, None, seed=3) is None and splits.sample(100, 100, seed=3) is None
    free = splits.partition(100, [0.5, 0.5], seed=3)
    assert sorted(np.concatenate(free).tolist()) == list(range(100))
    assert not (free[0] == np.arange(50)).all()  # shuffled, not the first half


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    from bigmodel_cli import main

    base = str(tmp_path / "outputs" / "finetune" / "2026-01-01" / "12-00-00")
    first = main.unique_dir(base)
    assert first == base and (tmp_path / "outputs" / "finetune" / "2026-01-01" / "12-00-00").is_dir()
    assert main.unique_dir(base) == first        # the same run resolving it again
    main._claimed_dirs.clear()                   # another process, the same second
    assert main.unique_dir(base) == base + "-2"
    main._claimed_dirs.clear()
    assert main.unique_dir(base) == base + "-3"


def test_wordpiece_vocabulary_is_the_same_in_every_process(shared_data):
    """The WordPiece trainer numbers some pieces in hash-map order; we renumber them, so a
    new process (another hash seed) trains the same ids from the same texts."""
    import json
    import os
    import subprocess
    import sys

    script = (
        "import csv, gzip, json, sys\n"
        "from omegaconf import OmegaConf\n"
        "from bigmodel_cli.data.text import train_tokenizer\n"
        f"rows = csv.DictReader(gzip.open({str(shared_data / 'thucnews' / 'train.csv.gz')!r},"
        " 'rt', encoding='utf-8'))\n"
        "texts = [r['text'] for r, _ in zip(rows, range(5000))]\n"
        "cfg = OmegaConf.create({'kind': 'wordpiece', 'vocab_size': 2000, 'min_frequency': 2,"
        " 'lowercase': True})\n"
        "print(json.dumps(train_tokenizer(texts, cfg).get_vocab(), sort_keys=True))\n")
    vocabs = [json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True,
                                        text=True, check=True,
                                        env={**os.environ,
                                             "PYTHONHASHSEED": str(seed)}).stdout)
              for seed in (1, 2)]
    assert len(vocabs[0]) > 1000 and vocabs[0] == vocabs[1]


WRITER = """
import sys
from pathlib import Path
from bigmodel_cli.jsonfiles import write_json
for i in range(300):
    write_json(Path(sys.argv[1]), {"writer": sys.argv[2], "i": i})
"""


def test_two_processes_writing_one_json_file_both_succeed(tmp_path):
    """Ranks of a distributed run ending together once renamed each other's temporary file."""
    import json
    import subprocess
    import sys

    target = tmp_path / "run.json"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(target), name],
                                stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    assert json.loads(target.read_text())["i"] == 299
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temporary file left


def test_only_rank_0_records_how_a_run_ended(tmp_path, monkeypatch):
    from bigmodel_cli.runs import record_status

    monkeypatch.setenv("RANK", "1")
    record_status(tmp_path, "ok")
    assert not (tmp_path / "run.json").exists()
    monkeypatch.setenv("RANK", "0")
    record_status(tmp_path, "paused")
    assert '"paused"' in (tmp_path / "run.json").read_text()


ENDER = """
import logging, sys
from bigmodel_cli.engine import distributed
from bigmodel_cli.launch import end_process
logging.basicConfig(filename=sys.argv[1], level=logging.INFO)
distributed.init()  # a group of this process alone, as FSDP on one process makes
distributed.all_gather_object({"rank": 0})
distributed.shutdown()
logging.getLogger("bigmodel").info("last log line")
print("last output, no newline", end="")
end_process(int(sys.argv[2]))
"""


def test_a_process_with_a_process_group_ends_with_its_code_and_output_flushed(tmp_path):
    """Such a process skips interpreter finalization (gloo's threads abort it there); its
    exit code, its buffered stdout and its log file must survive that."""
    import os
    import subprocess
    import sys

    log = tmp_path / "job.log"
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    for code in (0, 3):
        result = subprocess.run([sys.executable, "-c", ENDER, str(log), str(code)],
                                capture_output=True, text=True, timeout=120, env=buffered)
        assert result.returncode == code, result.stderr
        assert result.stdout == "last output, no newline"
        assert log.read_text().count("last log line") == (1 if code == 0 else 2)


def test_timing_samples_spread_over_lengths_and_keep_no_padding():
    """Speed figures are measured on rows of every length, not the first (shortest) batch."""
    from bigmodel_cli.export.onnx_export import timing_samples

    batches = []
    for length in range(4, 20):  # sorted by length, as evaluation batches come
        lengths = torch.full((8,), length)
        ids = torch.zeros(8, length + 3, dtype=torch.long)  # padded past the longest row
        ids[:, :length] = 7
        batches.append({"input_ids": ids, "lengths": lengths, "labels": torch.zeros(8)})
    single, full = timing_samples(batches, ["input_ids", "lengths"], singles=16, fulls=4)
    assert [int(row["lengths"][0]) for row in single] == list(range(4, 20))
    assert all(row["input_ids"].shape == (1, int(row["lengths"][0])) for row in single)
    assert [int(b["lengths"][0]) for b in full] == [4, 8, 12, 16]
    assert all(set(b) == {"input_ids", "lengths"} for b in full)
