"""Regression: what the task adds to an encoder (a linear head, MSE loss, metrics).

The model learns standardised targets, (y - train mean) / train std, so one learning rate
suits targets of any scale; the train mean and std are buffers of the model (saved with its
weights), so its outputs and every reported metric are in the target's original units.
The loss (train and validation) is the MSE of the standardised targets; the metrics are
MSE, RMSE, MAE and R² in original units, computed with scikit-learn.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Regressor(nn.Module):
    """An encoder + a linear head predicting `num_targets` numbers."""

    def __init__(self, encoder: nn.Module, num_targets: int, head_dropout: float = 0.0,
                 target_mean: list[float] | None = None,
                 target_std: list[float] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(encoder.output_dim, num_targets)
        mean = torch.zeros(num_targets) if target_mean is None else torch.tensor(target_mean)
        std = torch.ones(num_targets) if target_std is None else torch.tensor(target_std)
        self.register_buffer("target_mean", mean.float().view(num_targets))
        self.register_buffer("target_std", std.float().view(num_targets))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """{"scaled": standardised predictions, "value": in original units,
        "target_scaled": the batch's standardised targets, when it has targets}."""
        z = self.head(self.dropout(self.encoder(*(batch[k] for k in self.encoder.inputs)))).float()
        out = {"scaled": z, "value": z * self.target_std + self.target_mean}
        if "targets" in batch:
            out["target_scaled"] = (batch["targets"].float() - self.target_mean) / self.target_std
        return out


class RegressionMetrics:
    def __init__(self) -> None:
        self.preds: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.loss_sum = 0.0
        self.count = 0

    def update(self, outputs: dict, batch: dict, loss: torch.Tensor) -> None:
        n = int(outputs["value"].shape[0])
        self.preds.append(outputs["value"].detach().float().cpu().numpy())
        self.targets.append(batch["targets"].float().cpu().numpy())
        self.loss_sum += float(loss.detach()) * n
        self.count += n

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(true, predicted), both [N, T], original units."""
        return np.concatenate(self.targets), np.concatenate(self.preds)

    def compute(self) -> dict[str, float]:
        from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

        y_true, y_pred = self.arrays()
        mse = float(mean_squared_error(y_true, y_pred))
        r2 = float(r2_score(y_true, y_pred)) if len(y_true) > 1 else float("nan")
        return {"loss": self.loss_sum / max(self.count, 1), "mse": mse,
                "rmse": float(np.sqrt(mse)), "mae": float(mean_absolute_error(y_true, y_pred)),
                "r2": r2, "samples": self.count}


class RegressionTask:
    """Builds the model around an encoder and owns the loss and metrics. The data sets the
    target scale (`set_target_scale`, from train) before the model is built."""

    name = "regression"
    needs_labels = True
    block_overlap = 0
    truncates_inputs = True
    generates_text = False
    default_top_k = None   # a regression prediction has no ranking

    summary_metrics = ("r2", "rmse", "mae", "mse", "loss")

    def __init__(self, head_dropout: float = 0.0, monitor: str = "r2") -> None:
        self.head_dropout = head_dropout
        self.monitor = monitor  # the default trainer.monitor (higher R² is better)
        self.target_mean: list[float] | None = None
        self.target_std: list[float] | None = None

    def set_target_scale(self, mean: list[float], std: list[float]) -> None:
        self.target_mean, self.target_std = list(mean), list(std)

    def build_model(self, encoder: nn.Module, num_targets: int) -> Regressor:
        return Regressor(encoder, num_targets, self.head_dropout, self.target_mean,
                         self.target_std)

    def forward(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return model(batch)

    def loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        return F.mse_loss(outputs["scaled"], outputs["target_scaled"])

    def eval_loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        return self.loss(outputs, batch)

    def new_metrics(self, num_targets: int = 1) -> RegressionMetrics:
        return RegressionMetrics()

    def write_reports(self, metrics: RegressionMetrics, run_dir, title: str,
                      label_names: list[str]) -> None:
        """evaluate's files: predictions.csv (true and predicted values, original units) and
        plots/predicted_vs_true.png (a scatter plot with the y = x line)."""
        import pandas as pd

        y_true, y_pred = metrics.arrays()
        scores = metrics.compute()
        columns = {}
        for j in range(y_true.shape[1]):
            suffix = f"_{j}" if y_true.shape[1] > 1 else ""
            columns[f"true{suffix}"] = y_true[:, j]
            columns[f"predicted{suffix}"] = y_pred[:, j]
        pd.DataFrame(columns).to_csv(run_dir / "predictions.csv", index=False)
        plot_scatter(y_true, y_pred, run_dir / "plots" / "predicted_vs_true.png",
                     f"{title}: R² {scores['r2']:.4f}, RMSE {scores['rmse']:.4g}")

    def check_predict_options(self, options, label_names: list[str]):
        return options

    def predict_records(self, trained, batch: dict, rows: list[dict], raws: list, options,
                        device, on_text=None) -> list[dict]:
        """{**row, "prediction": value} per input, in the target's original units (several
        targets: a mapping of target name -> value)."""
        values = self.forward(trained.model, batch)["value"].float().cpu().tolist()
        names = trained.label_names
        return [{**row, "prediction": v[0] if len(v) == 1 else dict(zip(names, v))}
                for row, v in zip(rows, values)]


def plot_scatter(y_true: np.ndarray, y_pred: np.ndarray, path, title: str) -> None:
    """Predicted against true values (one panel per target), with the y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    n = y_true.shape[1]
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 5), squeeze=False)
    for j, ax in enumerate(axes[0]):
        t, p = y_true[:, j], y_pred[:, j]
        low, high = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.scatter(t, p, s=12, alpha=0.6)
        ax.plot([low, high], [low, high], color="grey", linewidth=1)
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
    axes[0][0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
