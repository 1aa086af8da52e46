"""Plots written into run directories (matplotlib, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path


def training_curves(metrics_jsonl: Path, path: Path, monitor: str) -> None:
    """Train loss and validation loss / monitor metric against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_jsonl).read_text(encoding="utf-8").splitlines()
               if line.strip()]
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "validation"]
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    ax_loss.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="validation")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_metric.plot([r["step"] for r in val], [r.get(monitor) for r in val], "o-")
    ax_metric.set_xlabel("step")
    ax_metric.set_ylabel(f"validation {monitor}")
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
