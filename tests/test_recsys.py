"""Recommendation: MovieLens-100k (the recbole==1.2.1 wheel's copy) through the same
commands: tiny rating and next-item runs, leak-free splits, ranking metrics on hand-made
ranks, predict excluding seen items, and bad input giving exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from bigmodel_cli.cli import run_hydra_command
from bigmodel_cli.data import interactions as ia

pytestmark = pytest.mark.skipif(ia._bundled() is None,
                                reason="needs MovieLens-100k: pip install --no-deps recbole==1.2.1")
CONF = Path(__file__).resolve().parents[1] / "bigmodel_cli" / "conf"


def _movielens() -> pd.DataFrame:
    return ia.read_movielens(ia._bundled()).frame


@pytest.fixture
def env(tmp_path, monkeypatch, shared_data):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIGMODEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BIGMODEL_DATA_DIR", str(shared_data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def _run(command: str, *args: str) -> int:
    try:
        run_hydra_command(command, list(args))
    except SystemExit as exit_:
        return exit_.code or 0
    return 0


def _latest(root: Path, command: str) -> Path:
    runs = sorted((root / "outputs" / command).glob("*/*"), key=lambda p: p.stat().st_mtime)
    return runs[-1]


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


# -- splits ---------------------------------------------------------------------------------
def test_rating_split_is_a_seeded_partition():
    frame = _movielens()
    fractions = OmegaConf.create({"train": 0.8, "validation": 0.1, "test": 0.1})
    splits = ia.rating_splits(frame, fractions, seed=1)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [80000, 10000, 10000]
    keys = {s: set(zip(f["user"], f["item"])) for s, f in splits.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]
    assert ia.rating_splits(frame, fractions, seed=1)["test"].equals(splits["test"])


def test_leave_last_out_respects_time_and_leaks_nothing():
    frame = _movielens()
    seqs = ia.sequences(frame)
    parts = ia.leave_last_out(seqs)
    assert len(parts["test"]) == 943
    times = {(u, i): t for u, i, t in zip(frame["user"], frame["item"], frame["time"])}
    for user, (history, held_out) in parts["test"].items():
        val_history, val_item = parts["validation"][user]
        train = parts["train"][user]
        assert held_out not in train and val_item not in train      # no test item in train
        assert history == train + [val_item] and val_history == train
        assert max(times[user, i] for i in train) <= times[user, val_item] <= times[user, held_out]


def test_test_rows_see_the_validation_item_and_rank_without_it():
    """The SASRec protocol (train + validation item as the test history): the model's input
    ends with the validation item, which is no test candidate, and most-popular ranks over
    the same candidates (checked against a plain count-and-sort on a few users)."""
    from bigmodel_cli.data.interactions_kind import Vocab, eval_columns, popularity_baseline

    parts = ia.leave_last_out(ia.sequences(_movielens()))
    users = sorted(parts["test"])[:40]
    raw = {s: {u: parts[s][u] for u in users} for s in ("validation", "test")}
    items = sorted({i for u in users for i in parts["test"][u][0] + [parts["test"][u][1]]})
    vocab = Vocab(users, items, [], {})
    cols = {s: eval_columns(raw[s], vocab, 10) for s in raw}
    t = cols["test"].tensors
    for row, user in enumerate(users):
        val_item = vocab.item_ids([parts["validation"][user][1]])[0]
        length = int(t["lengths"][row])
        assert int(t["history"][row, length - 1]) == val_item
        assert val_item in t["seen"][row].tolist()
    train = [i for u in users for i in vocab.item_ids(parts["train"][u])]
    got = popularity_baseline(cols, train, len(items), 10)["test"]["most_popular"]
    counts = np.bincount(train, minlength=len(items) + 1)
    ranks = []
    for row in range(len(users)):
        seen = set(t["seen"][row].tolist()) | {0}
        order = sorted((i for i in range(len(items) + 1) if i not in seen),
                       key=lambda i: (-counts[i], i))
        ranks.append(order.index(int(t["target"][row])) + 1)
    assert got["hr@10"] == pytest.approx(np.mean(np.array(ranks) <= 10))
    assert got["mrr"] == pytest.approx(np.mean(1 / np.array(ranks)))


def test_min_rating_keeps_only_liked_items():
    frame = _movielens()
    liked = ia.implicit(frame, 4)
    assert len(liked) == int((frame["rating"] >= 4).sum()) and liked["rating"].min() == 4


# -- ranking metrics ------------------------------------------------------------------------
def test_ranking_metrics_on_hand_made_ranks():
    import torch

    from bigmodel_cli.tasks.next_item import rank_of_targets, ranking_metrics

    m = ranking_metrics(np.array([1, 2, 11, 4]), k=10)
    assert m["hr@10"] == pytest.approx(0.75)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(5)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 11 + 1 / 4) / 4)
    # items 1..5; item 5 scores best but the user has it: it is no candidate
    scores = torch.tensor([[9.0, 0.1, 0.5, 0.3, 0.2, 0.9]])
    assert rank_of_targets(scores.clone(), torch.tensor([3]), torch.tensor([[5, 0]])).item() == 2
    assert rank_of_targets(scores.clone(), torch.tensor([3]), torch.tensor([[0, 0]])).item() == 3


def test_next_item_loss_is_the_cross_entropy_over_every_real_position():
    import torch
    from torch.nn import functional as F

    from bigmodel_cli.models.sasrec import SASRec
    from bigmodel_cli.tasks.next_item import NextItemTask

    torch.manual_seed(0)
    task = NextItemTask()
    model = task.build_model(SASRec(num_items=7, max_len=4, d_model=8, n_heads=2, d_ff=16,
                                    dropout=0.0), 0)
    batch = {"history": torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]]),
             "targets": torch.tensor([[2, 3, 4, 5], [6, 7, 0, 0]])}
    full = model.encoder.logits(model(batch))
    expected = F.cross_entropy(full.flatten(0, 1), batch["targets"].flatten(), ignore_index=0)
    assert task.loss(task.forward(model, batch), batch).item() == pytest.approx(expected.item())


def test_mf_trains_with_sgd_unless_the_command_line_names_an_optimizer():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "conf"), version_base=None):
        mf = compose("finetune", ["model=mf", "data=movielens", "task=rating"])
        adam = compose("finetune", ["model=mf", "data=movielens", "task=rating", "optimizer=adam"])
        lstm = compose("finetune", ["model=lstm"])
    assert mf.optimizer._target_ == "torch.optim.SGD" and mf.optimizer.lr == mf.model.sgd_lr
    assert mf.trainer.batch_size == mf.model.batch_size
    assert adam.optimizer._target_ == "torch.optim.Adam" and adam.optimizer.lr == adam.model.lr
    assert lstm.optimizer._target_ == "torch.optim.AdamW" and lstm.trainer.batch_size == 128


# -- end to end -----------------------------------------------------------------------------
def test_rating_run_evaluate_predict(env, capsys):
    assert _run("finetune", "model=mf", "data=movielens", "task=rating", "trainer=debug",
                "trainer.max_train_samples=5000", "trainer.max_eval_samples=1000") == 0
    run = _latest(env, "finetune")
    metrics = _read(run / "metrics.json")
    assert metrics["task"] == "rating" and set(metrics["test"]) >= {"rmse", "mae", "mse"}
    assert set(metrics["baselines"]["test"]) == {"global_mean", "user_item_bias"}
    assert 0.5 < metrics["test"]["rmse"] < 1.5
    assert _run("evaluate", f"run={run}") == 0
    evaluated = _read(_latest(env, "evaluate") / "metrics.json")["metrics"]
    assert evaluated["rmse"] == pytest.approx(metrics["test"]["rmse"], rel=1e-5)
    capsys.readouterr()
    assert _run("predict", f"run={run}", "user=[196,186]", "top_k=5") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    _check_excludes_seen(records, ["196", "186"], 5)


def _check_excludes_seen(records: list[dict], users: list[str], k: int) -> None:
    frame = _movielens()
    assert [r["user"] for r in records] == users
    for record in records:
        seen = set(frame.loc[frame["user"] == record["user"], "item"])
        ids = [item["id"] for item in record["items"]]
        assert len(ids) == k and not set(ids) & seen
        assert all(item["title"] for item in record["items"])
        scores = [item["score"] for item in record["items"]]
        assert scores == sorted(scores, reverse=True)


def test_next_item_run_evaluate_predict(env, capsys):
    assert _run("finetune", "model=sasrec", "data=movielens", "task=next_item",
                "trainer=debug", "trainer.max_train_samples=200", "trainer.max_eval_samples=100",
                "data.max_length=20", "model.d_model=16", "model.d_ff=32") == 0
    run = _latest(env, "finetune")
    metrics = _read(run / "metrics.json")
    assert set(metrics["test"]) >= {"hr@10", "ndcg@10", "mrr"} and metrics["test"]["samples"] == 100
    assert "most_popular" in metrics["baselines"]["test"]
    assert _run("evaluate", f"run={run}") == 0
    eval_dir = _latest(env, "evaluate")
    ranks = pd.read_csv(eval_dir / "ranks.csv", dtype={"user": str})
    assert len(ranks) == 100 and ranks["rank"].min() >= 1 and ranks["rank"].max() <= 1682
    assert _read(eval_dir / "metrics.json")["metrics"]["mrr"] == pytest.approx(
        metrics["test"]["mrr"], rel=1e-5)
    capsys.readouterr()
    (env / "users.txt").write_text("196\n\n186\n", encoding="utf-8")
    assert _run("predict", f"run={run}", "input=users.txt", "top_k=10") == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    _check_excludes_seen(records, ["196", "186"], 10)
    assert _run("predict", f"run={run}", "history=[50,172,133]", "top_k=3") == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["items"]) == 3 and not {"50", "172", "133"} & {i["id"] for i in record["items"]}


# -- bad input ------------------------------------------------------------------------------
def test_unknown_user_is_a_usage_error(env, capsys):
    assert _run("finetune", "model=mf", "data=movielens", "task=rating", "trainer=debug",
                "trainer.max_train_samples=500", "trainer.max_eval_samples=100",
                "trainer.epochs=1") == 0
    run = _latest(env, "finetune")
    capsys.readouterr()
    assert _run("predict", f"run={run}", "user=no-such-user") == 2
    assert "user=no-such-user: unknown user id" in capsys.readouterr().err


def _own_csv(env: Path, rows: str) -> list[str]:
    (env / "clicks.csv").write_text(rows, encoding="utf-8")
    return ["model=mf", "data=interactions", "task=rating", "data.file=clicks.csv",
            "trainer=debug", "trainer.epochs=1"]


def test_own_csv_without_the_named_columns(env, capsys):
    args = _own_csv(env, "uid,iid,stars\n1,2,4\n")
    assert _run("finetune", *args, "data.rating_column=stars") == 2
    err = capsys.readouterr().err
    assert "no column data.user_column='user_id'" in err and "uid, iid, stars" in err
    assert "Traceback" not in err


def test_own_csv_with_a_non_numeric_rating(env, capsys):
    args = _own_csv(env, "user_id,item_id,stars\n1,2,4\n1,3,good\n")
    assert _run("finetune", *args, "data.rating_column=stars") == 2
    err = capsys.readouterr().err
    assert "column 'stars' must be numeric; row 2 has 'good'" in err


def test_cli_subprocess_rating_debug_run(cli):
    result = cli("finetune", "model=mf", "data=movielens", "task=rating", "trainer=debug",
                 "trainer.epochs=1")
    assert result.returncode == 0, result.stderr
    run = Path(result.stdout.strip().splitlines()[-1])
    run = run if run.is_absolute() else cli.cwd / run
    assert {"vocab.json", "labels.json", "metrics.json"} <= {p.name for p in run.iterdir()}
