"""Files `bigmodel evaluate` writes for classification: per-class scores and a confusion
matrix (CSV and PNG)."""

from __future__ import annotations

from pathlib import Path


def classification_reports(y_true, y_pred, label_names: list[str]):
    """(per-class precision/recall/F1/support, confusion matrix) as pandas frames."""
    import pandas as pd
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(label_names)))
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                       zero_division=0)
    per_class = pd.DataFrame({"label": label_names, "precision": p, "recall": r, "f1": f,
                              "support": support})
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    confusion = pd.DataFrame(matrix, index=pd.Index(label_names, name="true \\ predicted"),
                             columns=label_names)
    return per_class, confusion


def plot_confusion(confusion, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(confusion.columns)
    # Label names may be Chinese; use a CJK-capable font when one is installed.
    cjk = [f.name for f in font_manager.fontManager.ttflist
           if any(k in f.name for k in ("Noto Sans CJK", "WenQuanYi", "SimHei", "Source Han"))]
    size = max(5.0, 0.6 * len(names) + 2)
    with plt.rc_context({"font.sans-serif": cjk + ["DejaVu Sans"]} if cjk else {}):
        fig, ax = plt.subplots(figsize=(size + 1, size))
        values = confusion.to_numpy()
        image = ax.imshow(values, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        if len(names) <= 20:
            limit = values.max() / 2 if values.size else 0
            for i in range(values.shape[0]):
                for j in range(values.shape[1]):
                    ax.text(j, i, str(values[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if values[i, j] > limit else "black")
        fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
