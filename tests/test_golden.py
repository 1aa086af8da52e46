"""Golden values: for seed 42 and a fixed slice of real data (trainer=debug: 400 seeded train
rows), the first five training losses of four model families equal the stored ones.

Any change to what a run computes fails these: the engine (loss, accumulation, clipping,
optimizer and schedule), the data (loading, the seeded subset, tokenizer, batch order) or the
model's initialisation. A change that is meant to alter the numbers (or a torch upgrade,
whose CPU kernels round differently) regenerates them on purpose:

    BIGMODEL_REGENERATE_GOLDEN=1 python -m pytest tests/test_golden.py

which rewrites tests/golden_losses.json (each test then reports "skipped: regenerated");
commit the new file with a message that says why the numbers changed.

The text runs use the character tokenizer (for these Chinese headlines nearly what WordPiece
gives): the WordPiece trainer of `tokenizers` numbers its "##" pieces in hash-map order, so
its vocabulary differs from one process to the next (huggingface/tokenizers#1794), which
would make these values differ too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import TINY_FASTTEXT, run_dir_of

GOLDEN = Path(__file__).with_name("golden_losses.json")
REGENERATE = os.environ.get("BIGMODEL_REGENERATE_GOLDEN") == "1"
STEPS = 5
# Tight: a run is deterministic on CPU, so only a change in what it computes moves these.
REL = 1e-5

CHARS = "data.tokenizer.kind=char"
COMMON = ("trainer=debug", f"trainer.max_steps={STEPS}", "trainer.log_every_steps=1",
          "device=cpu", "seed=42")
RUNS = {
    "lstm": ("finetune", "model=lstm", "model.embedding_dim=32", "model.hidden_size=32",
             "data=news", CHARS),
    "fasttext": ("finetune", *TINY_FASTTEXT, "data=news", CHARS),
    "bert_tiny": ("pretrain", "model=bert_tiny", "data=news_corpus", CHARS),
    "cnn": ("finetune", "model=cnn", "model.widths=[8,16]", "data=fashion_mnist"),
}


def first_losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))  # one record per step
    return [r["loss"] for r in train]


@pytest.mark.parametrize("name", RUNS)
def test_first_training_losses_equal_the_stored_ones(cli, name):
    losses = first_losses(run_dir_of(cli(*RUNS[name], *COMMON), cli.cwd))
    if REGENERATE:
        stored = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        stored[name] = {"command": " ".join(("bigmodel", *RUNS[name], *COMMON)),
                        "losses": losses}
        GOLDEN.write_text(json.dumps(dict(sorted(stored.items())), indent=2) + "\n")
        pytest.skip(f"regenerated {GOLDEN.name}[{name}]")
    expected = json.loads(GOLDEN.read_text())[name]
    assert expected["command"] == " ".join(("bigmodel", *RUNS[name], *COMMON))
    assert losses == pytest.approx(expected["losses"], rel=REL), (name, losses)
