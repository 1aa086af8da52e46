"""Rating prediction: MSE on explicit ratings; reports RMSE, MAE and MSE.

The model adds the train ratings' global mean to the encoder's score (model=mf: user and
item biases plus a dot product); evaluation clips predictions to the dataset's rating
range. predict ranks every item the user has not rated by predicted rating.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class RatingModel(nn.Module):
    def __init__(self, encoder: nn.Module, global_mean: float = 0.0, low: float = -1e9,
                 high: float = 1e9) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        self.register_buffer("bounds", torch.tensor([float(low), float(high)]))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        raw = self.encoder(batch["users"], batch["items"]).float() + self.global_mean
        out = {"raw": raw, "value": raw.clamp(self.bounds[0], self.bounds[1])}
        if self.training and hasattr(self.encoder, "penalty"):  # regularisation, train only
            out["penalty"] = self.encoder.penalty(batch["users"], batch["items"])
        return out

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.encoder.score_all(users).float() + self.global_mean


class RatingMetrics:
    def __init__(self) -> None:
        self.preds: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []

    def update(self, outputs: dict, batch: dict, loss) -> None:
        self.preds.append(outputs["value"].detach().float().cpu().numpy())
        self.targets.append(batch["ratings"].float().cpu().numpy())

    def compute(self) -> dict[str, float]:
        y = np.concatenate(self.targets) if self.targets else np.zeros(0)
        p = np.concatenate(self.preds) if self.preds else np.zeros(0)
        mse = float(np.mean((y - p) ** 2)) if len(y) else float("nan")
        return {"loss": mse, "mse": mse, "rmse": float(np.sqrt(mse)),
                "mae": float(np.mean(np.abs(y - p))) if len(y) else float("nan"),
                "samples": len(y)}


class RatingTask:
    name = "rating"
    needs_labels = True
    block_overlap = 0
    truncates_inputs = False
    generates_text = False
    default_top_k = 10
    summary_metrics = ("rmse", "mae", "mse", "loss")

    def __init__(self, monitor: str = "rmse", monitor_mode: str = "min", top_k: int = 10) -> None:
        self.monitor = monitor   # the default trainer.monitor (with trainer.monitor_mode=min)
        self.top_k = top_k
        self.scale = (0.0, -1e9, 1e9)

    def set_rating_scale(self, mean: float, low: float, high: float) -> None:
        self.scale = (mean, low, high)

    def build_model(self, encoder: nn.Module, num_labels: int) -> RatingModel:
        if not hasattr(encoder, "score_all") or "users" not in encoder.inputs:
            raise ValueError("rating prediction needs a user-item model (model=mf)")
        return RatingModel(encoder, *self.scale)

    def forward(self, model: nn.Module, batch: dict) -> dict:
        return model(batch)

    def loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        loss = F.mse_loss(outputs["raw"], batch["ratings"].float())
        return loss + outputs["penalty"] if "penalty" in outputs else loss

    def eval_loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        return F.mse_loss(outputs["value"], batch["ratings"].float())

    def new_metrics(self, num_labels: int = 1) -> RatingMetrics:
        return RatingMetrics()

    def write_reports(self, metrics: RatingMetrics, run_dir, title: str, label_names) -> None:
        """evaluate's file: predictions.csv (true and predicted rating per test rating)."""
        import pandas as pd

        pd.DataFrame({"true": np.concatenate(metrics.targets),
                      "predicted": np.concatenate(metrics.preds)}).to_csv(
            run_dir / "predictions.csv", index=False)

    def check_predict_options(self, options, label_names):
        from bigmodel_cli.tasks.next_item import check_top_k

        return check_top_k(options, self.top_k)

    def predict_records(self, trained, batch: dict, rows, raws, options, device,
                        on_text=None) -> list[dict]:
        from bigmodel_cli.tasks.next_item import top_items

        scores = trained.model.score_all(batch["users"])
        return top_items(trained, scores, batch["seen"], rows, options.top_k)
