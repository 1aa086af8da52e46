"""Single-label classification: what the task adds to an encoder (head, loss, metrics)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Classifier(nn.Module):
    """An encoder + a linear head. An encoder has `output_dim` (the size of the one vector
    it returns per input) and `inputs`, the batch keys it takes, in order (text encoders
    take ("input_ids", "lengths"))."""

    def __init__(self, encoder: nn.Module, num_labels: int, head_dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(encoder.output_dim, num_labels)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(*(batch[k] for k in self.encoder.inputs))))


class ClassificationMetrics:
    """Collects predictions over an evaluation, then scores them with scikit-learn. With
    row groups (`group_names`; batches carry "group" ids), accuracy per group as well."""

    def __init__(self, num_labels: int, group_names: list[str] | None = None) -> None:
        self.num_labels = num_labels
        self.group_names = group_names
        self.preds: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.groups: list[np.ndarray] = []
        self.loss_sum = 0.0
        self.count = 0

    def update(self, logits: torch.Tensor, batch: dict, loss: torch.Tensor) -> None:
        n = logits.shape[0]
        self.preds.append(logits.argmax(-1).cpu().numpy())
        self.labels.append(batch["labels"].cpu().numpy())
        if "group" in batch:
            self.groups.append(batch["group"].cpu().numpy())
        self.loss_sum += float(loss) * n
        self.count += n

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.labels), np.concatenate(self.preds)

    def compute(self) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, precision_recall_fscore_support

        y_true, y_pred = self.arrays()
        labels = list(range(self.num_labels))
        out = {"loss": self.loss_sum / max(self.count, 1),
               "accuracy": float(accuracy_score(y_true, y_pred))}
        for average in ("macro", "weighted"):
            p, r, f, _ = precision_recall_fscore_support(
                y_true, y_pred, labels=labels, average=average, zero_division=0)
            out.update({f"precision_{average}": float(p), f"recall_{average}": float(r),
                        f"f1_{average}": float(f)})
        if self.group_names and len(self.group_names) > 1 and self.groups:
            from bigmodel_cli.tasks.ctc import group_key

            groups = np.concatenate(self.groups)
            for g, name in enumerate(self.group_names):
                rows = groups == g
                if rows.any():
                    out[f"accuracy_{group_key(name)}"] = float((y_true[rows] == y_pred[rows]).mean())
                    out[f"samples_{group_key(name)}"] = int(rows.sum())
        out["samples"] = self.count
        return out


class ClassificationTask:
    """Builds the model around an encoder and owns the loss and metrics."""

    name = "classification"
    needs_labels = True
    block_overlap = 0
    truncates_inputs = True    # texts longer than the run's max length are cut, as in training
    generates_text = False     # predictions are records (a generating task streams text)
    default_top_k = 3
    summary_metrics = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "loss")

    def __init__(self, head_dropout: float = 0.0, label_smoothing: float = 0.0) -> None:
        self.head_dropout = head_dropout
        self.label_smoothing = label_smoothing
        self.group_names: list[str] | None = None

    def set_groups(self, names: list[str]) -> None:
        """Row groups (an audio manifest's group column): accuracy is reported per group too."""
        from bigmodel_cli.tasks.ctc import group_key

        self.group_names = list(names)
        if len(names) > 1:
            self.summary_metrics = (*type(self).summary_metrics,
                                    *(f"accuracy_{group_key(n)}" for n in names))

    def build_model(self, encoder: nn.Module, num_labels: int) -> Classifier:
        if getattr(encoder, "frame_outputs", False):
            raise ValueError("this encoder gives one output per frame; use task=ctc")
        return Classifier(encoder, num_labels, self.head_dropout)

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch)

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch["labels"], label_smoothing=self.label_smoothing)

    def eval_loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """Plain cross-entropy (no smoothing): the loss reported on validation/test."""
        return F.cross_entropy(logits.float(), batch["labels"])

    def new_metrics(self, num_labels: int) -> ClassificationMetrics:
        return ClassificationMetrics(num_labels, self.group_names)

    # -- evaluate and predict ----------------------------------------------------------------
    def write_reports(self, metrics: ClassificationMetrics, run_dir, title: str,
                      label_names: list[str]):
        """evaluate's files: per_class.csv, confusion_matrix.csv and its plot. Returns the
        per-class table, to show."""
        from bigmodel_cli.tasks.reports import classification_reports, plot_confusion

        y_true, y_pred = metrics.arrays()
        per_class, confusion = classification_reports(y_true, y_pred, label_names)
        per_class.to_csv(run_dir / "per_class.csv", index=False)
        confusion.to_csv(run_dir / "confusion_matrix.csv")
        accuracy = float((y_true == y_pred).mean()) if len(y_true) else float("nan")
        plot_confusion(confusion, run_dir / "plots" / "confusion_matrix.png",
                       f"{title}: accuracy {accuracy:.4f}")
        return per_class

    def check_predict_options(self, options, label_names: list[str]):
        from dataclasses import replace

        k = self.default_top_k if options.top_k is None else options.top_k
        _check_top_k(k, minimum=1)
        return replace(options, top_k=min(k, len(label_names)))

    def predict_records(self, trained, batch: dict, rows: list[dict], raws: list, options,
                        device, on_text=None) -> list[dict]:
        """{**row, "label", "label_id", "top_k": [{"label", "prob"}, ...]} per input."""
        names = trained.label_names
        probs = torch.softmax(self.forward(trained.model, batch).float(), dim=-1).cpu()
        top_p, top_i = probs.topk(options.top_k, dim=-1)
        return [{**row, "label": names[i_row[0]], "label_id": i_row[0],
                 "top_k": [{"label": names[i], "prob": round(p, 6)} for p, i in zip(p_row, i_row)]}
                for row, p_row, i_row in zip(rows, top_p.tolist(), top_i.tolist())]


def _check_top_k(k, minimum: int) -> None:
    from bigmodel_cli.errors import UsageError

    if not isinstance(k, int) or isinstance(k, bool) or k < minimum:
        raise UsageError(f"top_k={k}: must be a whole number, at least {minimum}")
