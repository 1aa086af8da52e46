"""trainer=debug is "a few steps on a few hundred examples" for every data config: each
conf/data/*.yaml that works offline (those that need files get tiny ones here) trains with
trainer=debug and a tiny model in a bounded number of optimizer steps (read from
metrics.json). A new data config without a case below fails test_every_data_config_has_a_case.

Configs bounded by rows, whose trainer=debug runs the other end-to-end tests already make,
are marked slow here (`make test-slow`); the packed corpora, where a few long documents once
trained for hundreds of steps, and image_folder run in `make test`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import read_json, run_dir_of

from bigmodel_cli.config import conf_dir

# debug: at most 400 train examples (rows, or packed blocks), batch 32, 2 epochs: 26 steps.
MAX_STEPS = 26

FASTTEXT = ("finetune", "model=fasttext", "model.ngram_buckets=2000")
GPT = ("pretrain", "model=gpt_tiny", "model.d_model=32", "model.d_ff=64", "model.n_layers=1",
       "data.max_length=64", "model.max_len=65")
CNN = ("finetune", "model=cnn", "model.widths=[8]")
MLP = ("finetune", "model=mlp")


def _text_csv(shared: Path, tmp: Path) -> tuple[str, ...]:
    rows = pd.read_csv(shared / "sst2" / "train.csv.gz").head(600)
    rows.to_csv(tmp / "train.csv", index=False)
    return (f"data.files.train={tmp / 'train.csv'}",)


def _one_document(shared: Path, tmp: Path) -> tuple[str, ...]:
    # A user's corpus that is one long text (200k characters, ~3,000 blocks of 64 tokens):
    # bounded by blocks, not by documents.
    text = (shared / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:200_000]
    (tmp / "corpus.txt").write_text(text, encoding="utf-8")
    return (f"data.files.train={tmp / 'corpus.txt'}", "data.sample_by=document",
            "data.validation_from=tail", "data.tokenizer.vocab_size=300")


def _image_folder(shared: Path, tmp: Path) -> tuple[str, ...]:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp / "images" / cls).mkdir(parents=True)
        for i in range(300):
            Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(
                tmp / "images" / cls / f"{i}.png")
    return (f"data.path={tmp / 'images'}", "data.image_size=8")


def _table(shared: Path, tmp: Path) -> tuple[str, ...]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3))
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": x @ [1.0, -2.0, 0.5]}) \
        .to_csv(tmp / "table.csv", index=False)
    return (f"data.files.train={tmp / 'table.csv'}", "data.target=y", "task=regression")


def _interactions(shared: Path, tmp: Path) -> tuple[str, ...]:
    rng = np.random.default_rng(0)
    pd.DataFrame({"user_id": rng.integers(1, 40, 1500), "item_id": rng.integers(1, 80, 1500),
                  "rating": rng.integers(1, 6, 1500)}).to_csv(tmp / "ratings.csv", index=False)
    return (f"data.file={tmp / 'ratings.csv'}", "data.rating_column=rating")


MF = ("finetune", "model=mf", "task=rating")
CTC = ("finetune", "model=speech_ctc", "model.hidden_size=16", "model.num_layers=1",
       "model.channels=4")


def _audio_folder(shared: Path, tmp: Path) -> tuple[str, ...]:
    for word in ("yes", "no"):  # 2 x 140 train clips, linked
        (tmp / "clips" / word).mkdir(parents=True)
        for clip in sorted((shared / "spoken_words" / "audio" / "train" / word).iterdir()):
            (tmp / "clips" / word / clip.name).symlink_to(clip)
    return (f"data.path={tmp / 'clips'}", "data.validation_fraction=0.3")


def _audio_csv(shared: Path, tmp: Path) -> tuple[str, ...]:
    rows = pd.read_csv(shared / "spoken_numbers" / "train.csv").head(600)
    rows["path"] = [str(shared / "spoken_numbers" / p) for p in rows["path"]]
    rows.to_csv(tmp / "utterances.csv", index=False)
    return (f"data.path={tmp / 'utterances.csv'}", "data.transcript_column=transcript",
            "task=ctc")


CASES = {
    "news": (FASTTEXT, None), "sst2": (FASTTEXT, None), "ag_news": (FASTTEXT, None),
    "csv": (FASTTEXT, _text_csv),
    "news_corpus": (GPT, None), "wikitext2": (GPT, None), "tinyshakespeare": (GPT, None),
    "text": (GPT, _one_document),
    "fashion_mnist": (CNN, None), "digits": (CNN, None), "image_folder": (CNN, _image_folder),
    "diabetes": (MLP, None), "tabular": (MLP, _table),
    "movielens": (MF, None), "interactions": (MF, _interactions),
    "spoken_words": (CNN, None), "spoken_numbers": (CTC, None),
    "audio_folder": (CNN, _audio_folder), "audio_csv": (CTC, _audio_csv),
}
IN_MAKE_TEST = {"wikitext2", "tinyshakespeare", "text", "image_folder"}


def test_every_data_config_has_a_case():
    assert {p.stem for p in (Path(conf_dir()) / "data").glob("*.yaml")} == set(CASES)


@pytest.mark.parametrize("data", [
    name if name in IN_MAKE_TEST else pytest.param(name, marks=pytest.mark.slow)
    for name in sorted(CASES)])
def test_debug_preset_is_bounded(cli, shared_data, tmp_path, data):
    command, files = CASES[data]
    extra = files(shared_data, tmp_path) if files else ()
    result = cli(*command, f"data={data}", *extra, "trainer=debug", "trainer.log_every_steps=50")
    metrics = read_json(run_dir_of(result, cli.cwd) / "metrics.json")
    assert 0 < metrics["steps"] <= MAX_STEPS, (data, metrics["steps"])
