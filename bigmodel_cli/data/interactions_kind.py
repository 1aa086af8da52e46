"""data.kind=interactions: user-item interactions, for task=rating and task=next_item.

prepare() loads and splits the interactions (bigmodel_cli.data.interactions), indexes
users and items (index 0: padding / unknown), computes the baselines on the same splits
(global mean and user+item biases for ratings, most-popular for next-item), and writes
vocab.json (users, items, titles, every user's interactions in time order) beside
labels.json; evaluate and predict read the same file.

Batches (tensor columns):
  rating     users, items, ratings
  next_item  train: windows of each user's sequence, history [N, L] (right-padded), targets [N, L] (the next item at each
             position, 0 at padding), lengths; evaluation: history (the interactions before
             the held-out one, the last L), lengths, target, seen [N, S] (every item before
             the held-out one, 0-padded: excluded from the ranking)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from bigmodel_cli.data.kinds import DataContext, EvalData, Prepared
from bigmodel_cli.data.tensor_batches import batches_factory
from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel.data")

VOCAB = "vocab.json"
TASKS = ("rating", "next_item")


@dataclass
class Vocab:
    users: list[str]
    items: list[str]
    titles: list[str]
    histories: dict[str, list[str]]     # user -> every interaction's item, in time order

    def __post_init__(self) -> None:
        self.user_index = {u: i + 1 for i, u in enumerate(self.users)}
        self.item_index = {t: i + 1 for i, t in enumerate(self.items)}

    def item_ids(self, items) -> list[int]:
        return [self.item_index.get(str(t), 0) for t in items]


@dataclass
class Columns:
    tensors: dict

    def __len__(self) -> int:
        return int(next(iter(self.tensors.values())).shape[0])

    def columns(self) -> dict:
        return self.tensors


def _check_task(task) -> None:
    if task.name not in TASKS:
        raise UsageError(f"data.kind=interactions supports task=rating or task=next_item, "
                         f"not task={task.name}")


def _load(data_cfg, task_name: str, ctx: DataContext):
    """(interactions, raw splits): rating -> DataFrames; next_item -> leave-last-out dicts."""
    from bigmodel_cli.data import interactions as ia

    data = ia.load_interactions(data_cfg, ctx.cache_dir)
    if task_name == "rating":
        return data, ia.rating_splits(data.frame, data_cfg.split_fractions, ctx.seed)
    frame = ia.implicit(data.frame, data_cfg.min_rating)
    return data, ia.leave_last_out(ia.sequences(frame))


def _subset(users: list[str], limit: int | None, seed: int) -> list[str]:
    if limit is None or limit >= len(users):
        return users
    pick = np.random.default_rng(seed).choice(len(users), size=limit, replace=False)
    return [users[i] for i in sorted(pick)]


def prepare(cfg: DictConfig, run_dir: Path, ctx: DataContext, task) -> Prepared:
    from bigmodel_cli.data import interactions as ia
    from bigmodel_cli.jsonfiles import write_json

    _check_task(task)
    data, raw = _load(cfg.data, task.name, ctx)
    if task.name == "rating":
        raw = _limit_rows(raw, ctx)
        train = raw["train"]
        vocab = Vocab(sorted(set(train["user"])), sorted(set(train["item"])), [], {})
        mean = float(train["rating"].mean())
        task.set_rating_scale(mean, float(data.frame["rating"].min()),
                              float(data.frame["rating"].max()))
        splits = {s: rating_columns(f, vocab) for s, f in raw.items()}
        model_args = {"num_users": len(vocab.users), "num_items": len(vocab.items)}
        baselines = rating_baselines(raw)
        label_names = ["rating"]
    else:
        raw = _limit_users(raw, ctx)
        items = sorted(set(ia.implicit(data.frame, cfg.data.min_rating)["item"]))
        vocab = Vocab(sorted(raw["train"]), items, [], {})
        L = cfg.data.max_length
        splits = {"train": train_columns(raw["train"], vocab, L),
                  **{s: eval_columns(raw[s], vocab, L) for s in ("validation", "test")}}
        model_args = {"num_items": len(items), "max_len": L}
        train_items = [i for u in sorted(raw["train"]) for i in vocab.item_ids(raw["train"][u])]
        baselines = popularity_baseline(splits, train_items, len(items), task.top_k)
        label_names = items
    vocab.titles = [data.titles.get(t, "") for t in vocab.items]
    vocab.histories = ia.sequences(data.frame)
    log.info("data: %s", data.source)
    log.info("splits: %s; %d users, %d items", ", ".join(f"{k} {len(v)}" for k, v in splits.items()),
             len(vocab.users), len(vocab.items))
    log.info("baselines (test): %s", baselines["test"])
    if ctx.is_main:
        write_json(run_dir / "labels.json", label_names)
        write_json(run_dir / VOCAB, {"users": vocab.users, "items": vocab.items,
                                     "titles": vocab.titles, "histories": vocab.histories})
    return Prepared(splits=splits, make_batches=batches_factory(ctx), model_args=model_args,
                    label_names=label_names, encoding={"vocab": VOCAB, "task": task.name},
                    source=data.source, folder=data.folder, notes=data.notes,
                    baselines=baselines)


def _limit_rows(raw: dict, ctx: DataContext) -> dict:
    """max_train/eval_samples: seeded random subsets of the rating rows."""
    out = {}
    for split, frame in raw.items():
        limit = ctx.max_train_samples if split == "train" else ctx.max_eval_samples
        if limit is not None and limit < len(frame):
            frame = frame.sample(n=limit, random_state=ctx.seed).sort_index().reset_index(drop=True)
        out[split] = frame
    return out


def _limit_users(raw: dict, ctx: DataContext) -> dict:
    """max_train/eval_samples: seeded subsets of the users (whole sequences)."""
    out = {}
    for split, seqs in raw.items():
        limit = ctx.max_train_samples if split == "train" else ctx.max_eval_samples
        out[split] = {u: seqs[u] for u in _subset(sorted(seqs), limit, ctx.seed)}
    return out


# -- tensors --------------------------------------------------------------------------------
def rating_columns(frame, vocab: Vocab) -> Columns:
    import torch

    users = [vocab.user_index.get(u, 0) for u in frame["user"]]
    return Columns({"users": torch.tensor(users, dtype=torch.long),
                    "items": torch.tensor(vocab.item_ids(frame["item"]), dtype=torch.long),
                    "ratings": torch.tensor(frame["rating"].to_numpy(), dtype=torch.float32)})


def pad(rows: list[list[int]], width: int | None = None):
    import torch

    width = max([len(r) for r in rows] + [1]) if width is None else width
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, :len(r)] = torch.tensor(r[:width], dtype=torch.long)
    return out


def train_columns(seqs: dict[str, list[str]], vocab: Vocab, max_len: int) -> Columns:
    """Each user's train sequence, cut from its end into windows of max_len + 1 items (so a
    long history is all trained on): position t of a window sees its items[:t+1] and learns
    items[t+1]."""
    import torch

    windows = []
    for user in sorted(seqs):
        ids = vocab.item_ids(seqs[user])
        for end in range(len(ids), 1, -max_len):
            windows.append(ids[max(0, end - max_len - 1):end])
    return Columns({"history": pad([w[:-1] for w in windows], max_len),
                    "targets": pad([w[1:] for w in windows], max_len),
                    "lengths": torch.tensor([len(w) - 1 for w in windows], dtype=torch.long)})


def eval_columns(held_out: dict[str, tuple], vocab: Vocab, max_len: int) -> Columns:
    import torch

    users = sorted(held_out)
    histories = [vocab.item_ids(held_out[u][0]) for u in users]
    return Columns({"history": pad([h[-max_len:] for h in histories], max_len),
                    "lengths": torch.tensor([min(len(h), max_len) for h in histories]),
                    "target": torch.tensor(vocab.item_ids([held_out[u][1] for u in users])),
                    "seen": pad(histories),
                    "user": torch.tensor([vocab.user_index.get(u, 0) for u in users])})


# -- baselines ------------------------------------------------------------------------------
def rating_baselines(raw: dict, rounds: int = 10, reg_item: float = 10.0,
                     reg_user: float = 15.0) -> dict:
    """Global mean, and regularised user+item biases fitted on train by alternating least
    squares (the BaselineOnly estimate of the Surprise library: 10 rounds, reg 10 / 15)."""
    train = raw["train"]
    mu = float(train["rating"].mean())
    resid = train["rating"] - mu
    n_i, n_u = train.groupby("item").size(), train.groupby("user").size()
    b_u = pd.Series(0.0, index=n_u.index)
    for _ in range(rounds):
        b_i = (resid - train["user"].map(b_u)).groupby(train["item"]).sum() / (reg_item + n_i)
        b_u = (resid - train["item"].map(b_i)).groupby(train["user"]).sum() / (reg_user + n_u)
    out = {}
    for split in ("validation", "test"):
        frame = raw[split]
        y = frame["rating"].to_numpy()
        biased = (mu + frame["item"].map(b_i).fillna(0) + frame["user"].map(b_u).fillna(0)).to_numpy()
        out[split] = {"global_mean": _errors(y, np.full_like(y, mu)),
                      "user_item_bias": _errors(y, np.clip(biased, y.min(), y.max()))}
    return out


def _errors(y: np.ndarray, p: np.ndarray) -> dict:
    mse = float(np.mean((y - p) ** 2))
    return {"rmse": float(np.sqrt(mse)), "mae": float(np.mean(np.abs(y - p))), "mse": mse}


def popularity_baseline(splits: dict, train_items: list[int], num_items: int, k: int) -> dict:
    """Most-popular (train interaction counts), ranked over the same candidates as the model:
    every item the user has not interacted with; ties go to the lower item index."""
    import torch

    from bigmodel_cli.tasks.next_item import rank_of_targets, ranking_metrics

    counts = torch.bincount(torch.tensor(train_items, dtype=torch.long), minlength=num_items + 1)
    # strictly decreasing in the item index among equal counts: a deterministic order
    scores = counts.double() - torch.arange(num_items + 1).double() / (num_items + 2)
    out = {}
    for split in ("validation", "test"):
        t = splits[split].tensors
        ranks = rank_of_targets(scores.expand(len(t["target"]), -1).clone(), t["target"], t["seen"])
        out[split] = {"most_popular": ranking_metrics(ranks.numpy(), k)}
    return out


# -- evaluate and predict -------------------------------------------------------------------
def load_assets(run_dir: Path, meta: dict) -> Vocab:
    import json

    path = Path(run_dir) / VOCAB
    if not path.is_file():
        raise UsageError(f"run={run_dir}: incomplete run directory, {VOCAB} is missing")
    saved = json.loads(path.read_text(encoding="utf-8"))
    return Vocab(saved["users"], saved["items"], saved["titles"], saved["histories"])


def eval_batches(trained, data_cfg: DictConfig, split: str | None, batch_size: int,
                 ctx: DataContext) -> EvalData:
    from bigmodel_cli.data.tensor_batches import TensorBatches
    from bigmodel_cli.data.text_kind import choose_split

    task = trained.task
    _check_task(task)
    _, raw = _load(data_cfg, task.name, ctx)
    split = choose_split(raw, split, data_cfg)
    vocab = trained.assets
    if task.name == "rating":
        part = rating_columns(_limit_rows(raw, ctx)[split], vocab)
    else:
        part = eval_columns(_limit_users(raw, ctx)[split], vocab, data_cfg.max_length)
    return EvalData(split=split, batches=TensorBatches(part.columns(), batch_size, shuffle=False),
                    label_names=trained.label_names)


def read_inputs(cfg: DictConfig, stats: dict) -> Iterator[tuple[dict, dict]]:
    """`user=ID` (or a list), `input=users.txt` (one user id a line), or `history=[ITEM,...]`
    (sequential runs: items in time order, for a user the run has not seen)."""
    given = [k for k in ("user", "input", "history") if cfg[k] is not None]
    if len(given) != 1 or cfg.text is not None:
        raise UsageError("this run recommends items: give one of user=ID (or user=[ID,ID]), "
                         "input=users.txt (one user id a line) or history=[ITEM,ITEM,...]")
    if cfg.history is not None:
        items = list(cfg.history) if not isinstance(cfg.history, (str, int)) else [cfg.history]
        yield {"index": 0}, {"history": [str(i) for i in items]}
        return
    if cfg.user is not None:
        users = [cfg.user] if isinstance(cfg.user, (str, int)) else list(cfg.user)
    else:
        path = Path(str(cfg.input)).expanduser()
        if not path.is_file():
            raise UsageError(f"input={cfg.input}: no such file")
        users = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        stats["empty"] += sum(1 for u in users if not u)
        users = [u for u in users if u]
    for index, user in enumerate(users):
        yield {"index": index, "user": str(user)}, {"user": str(user)}


def encode_inputs(trained, raws: list[dict], task) -> tuple[dict, list[bool]]:
    """-> {"index", "users", "history", "lengths", "seen"}: the user's (or given) history,
    the last max_length items of it as the model's input, all of it excluded from the top-k."""
    import torch

    vocab: Vocab = trained.assets
    users, histories = [], []
    for raw in raws:
        if "user" in raw:
            if raw["user"] not in vocab.histories:
                raise UsageError(f"user={raw['user']}: unknown user id (the run knows "
                                 f"{len(vocab.histories)} users, e.g. {next(iter(vocab.histories))})")
            users.append(vocab.user_index.get(raw["user"], 0))
            histories.append(vocab.item_ids(vocab.histories[raw["user"]]))
        else:
            unknown = [t for t in raw["history"] if t not in vocab.item_index]
            if unknown:
                raise UsageError(f"history: unknown item id(s) {', '.join(unknown[:5])}")
            users.append(0)
            histories.append(vocab.item_ids(raw["history"]))
    max_len = trained.meta["model_args"].get("max_len", 1)
    truncated = [len(h) > max_len for h in histories]
    return {"index": torch.arange(len(raws)), "users": torch.tensor(users),
            "history": pad([h[-max_len:] for h in histories], max_len),
            "lengths": torch.tensor([max(1, min(len(h), max_len)) for h in histories]),
            "seen": pad(histories)}, truncated
