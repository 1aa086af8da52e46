"""Next-item prediction: a full softmax over every item at every position of a user's
sequence (cross-entropy; no sampled negatives). Evaluation ranks the held-out item among
ALL items the user has not interacted with (no sampled candidates: sampled metrics
overstate quality) and reports HR@K, NDCG@K (K = task.top_k, default 10) and MRR.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def rank_of_targets(scores: torch.Tensor, target: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's target among the items not in `seen` (0 = padding, never a
    candidate). scores [B, V+1], target [B], seen [B, S]; modifies `scores`."""
    scores = scores.float()
    target_score = scores.gather(1, target[:, None])
    scores.scatter_(1, seen, float("-inf"))
    scores[:, 0] = float("-inf")
    scores.scatter_(1, target[:, None], target_score)
    return 1 + (scores > target_score).sum(1)


def ranking_metrics(ranks: np.ndarray, k: int) -> dict[str, float]:
    """HR@k (target in the top k), NDCG@k (1/log2(rank + 1) within the top k), MRR."""
    ranks = np.asarray(ranks, dtype=float)
    if not len(ranks):
        return {f"hr@{k}": float("nan"), f"ndcg@{k}": float("nan"), "mrr": float("nan")}
    hit = ranks <= k
    return {f"hr@{k}": float(hit.mean()),
            f"ndcg@{k}": float(np.where(hit, 1.0 / np.log2(ranks + 1), 0.0).mean()),
            "mrr": float((1.0 / ranks).mean())}


class NextItemModel(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, batch: dict) -> torch.Tensor:
        return self.encoder(batch["history"])

    def last_scores(self, batch: dict) -> torch.Tensor:
        """Scores of every item after each row's last real position: [B, V+1]."""
        hidden = self.encoder(batch["history"])
        last = hidden[torch.arange(hidden.shape[0]), (batch["lengths"] - 1).clamp(min=0)]
        return self.encoder.logits(last).float()


class NextItemMetrics:
    def __init__(self, k: int) -> None:
        self.k = k
        self.ranks: list[np.ndarray] = []
        self.users: list[np.ndarray] = []
        self.loss_sum, self.count = 0.0, 0

    def update(self, outputs: dict, batch: dict, loss) -> None:
        self.ranks.append(outputs["ranks"].cpu().numpy())
        self.users.append(batch["user"].cpu().numpy())
        n = len(self.ranks[-1])
        self.loss_sum += float(loss) * n
        self.count += n

    def compute(self) -> dict[str, float]:
        ranks = np.concatenate(self.ranks) if self.ranks else np.zeros(0)
        return {"loss": self.loss_sum / max(self.count, 1), **ranking_metrics(ranks, self.k),
                "samples": len(ranks)}


class NextItemTask:
    name = "next_item"
    needs_labels = True
    block_overlap = 0
    truncates_inputs = True
    generates_text = False
    default_top_k = 10

    def __init__(self, top_k: int = 10, monitor: str | None = None,
                 monitor_mode: str = "max", label_smoothing: float = 0.0) -> None:
        self.top_k = top_k
        self.label_smoothing = label_smoothing
        self.monitor = monitor or f"ndcg@{top_k}"
        self.summary_metrics = (f"hr@{top_k}", f"ndcg@{top_k}", "mrr", "loss")

    def build_model(self, encoder: nn.Module, num_labels: int) -> NextItemModel:
        if not hasattr(encoder, "logits") or encoder.inputs != ("history",):
            raise ValueError("next-item prediction needs a sequential model (model=sasrec)")
        return NextItemModel(encoder)

    def forward(self, model: nn.Module, batch: dict):
        if "targets" in batch:      # training: every real position's next item
            # scores only where there is a target: padding would cost a softmax over every
            # item and add nothing to the loss (a third of the training time on MovieLens)
            real = batch["targets"] > 0
            return {"logits": model.encoder.logits(model(batch)[real]),
                    "targets": batch["targets"][real]}
        scores = model.last_scores(batch)
        return {"scores": scores,
                "ranks": rank_of_targets(scores.clone(), batch["target"], batch["seen"])}

    def loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        return F.cross_entropy(outputs["logits"].float(), outputs["targets"],
                               label_smoothing=self.label_smoothing)

    def eval_loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        return F.cross_entropy(outputs["scores"], batch["target"])

    def new_metrics(self, num_labels: int = 0) -> NextItemMetrics:
        return NextItemMetrics(self.top_k)

    def write_reports(self, metrics: NextItemMetrics, run_dir, title: str, label_names) -> None:
        """evaluate's file: ranks.csv, the held-out item's rank for each user."""
        import json

        import pandas as pd

        users = json.loads((run_dir / "vocab.json").read_text(encoding="utf-8"))["users"] \
            if (run_dir / "vocab.json").is_file() else None
        index = np.concatenate(metrics.users)
        names = [users[i - 1] if users and i else str(i) for i in index]
        pd.DataFrame({"user": names, "rank": np.concatenate(metrics.ranks)}).to_csv(
            run_dir / "ranks.csv", index=False)

    def check_predict_options(self, options, label_names):
        return check_top_k(options, self.top_k)

    def predict_records(self, trained, batch: dict, rows, raws, options, device,
                        on_text=None) -> list[dict]:
        return top_items(trained, trained.model.last_scores(batch), batch["seen"], rows,
                         options.top_k)


def check_top_k(options, default: int):
    from dataclasses import replace

    from bigmodel_cli.errors import UsageError

    k = default if options.top_k is None else options.top_k
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise UsageError(f"top_k={k}: must be a whole number, at least 1")
    return replace(options, top_k=k)


def top_items(trained, scores: torch.Tensor, seen: torch.Tensor, rows, k: int) -> list[dict]:
    """{**row, "items": [{"id", "title", "score"}]}: the k best items not in `seen`."""
    vocab = trained.assets
    scores = scores.float().clone()
    scores.scatter_(1, seen, float("-inf"))
    scores[:, 0] = float("-inf")
    k = min(k, scores.shape[1] - 1)
    top_s, top_i = scores.topk(k, dim=-1)
    return [{**row, "items": [{"id": vocab.items[i - 1], "title": vocab.titles[i - 1],
                               "score": round(s, 5)}
                              for s, i in zip(s_row, i_row) if s != float("-inf")]}
            for row, s_row, i_row in zip(rows, top_s.tolist(), top_i.tolist())]
