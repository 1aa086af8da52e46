"""bigmodel evaluate: score a trained run's checkpoint on a split of its dataset."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("bigmodel")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    from bigmodel_cli.commands.common import load_run
    from bigmodel_cli.data import kinds
    from bigmodel_cli.engine.runtime import select_device, versions
    from bigmodel_cli.engine.trainer import evaluate
    from bigmodel_cli.jsonfiles import write_json

    device = select_device(cfg.device.name, cfg.device.threads)
    trained = load_run(cfg.run, cfg.ckpt, device)
    train_cfg = trained.config
    data_cfg = train_cfg.data
    data_path = cfg.data_path or _training_data_dir(trained.run_dir)
    if data_path is not None:
        data_cfg = OmegaConf.merge(data_cfg, {"path": data_path})
    # The same data selection as at training time, so a debug run's test subset is the same.
    ctx = kinds.DataContext(seed=train_cfg.seed, cache_dir=Path(cfg.cache_dir).expanduser(),
                            max_train_samples=train_cfg.trainer.max_train_samples,
                            max_eval_samples=train_cfg.trainer.max_eval_samples)
    data = kinds.module(data_cfg).eval_batches(trained, data_cfg, cfg.split, cfg.batch_size, ctx)
    task = trained.task
    metrics_acc = task.new_metrics(len(trained.label_names))
    metrics = evaluate(trained.model, task, data.batches, device, metrics_acc,
                       precision=cfg.device.precision)
    per_class = None
    if task.name == "classification":
        y_true, y_pred = metrics_acc.arrays()
        per_class, confusion = _reports(y_true, y_pred, trained.label_names)
        per_class.to_csv(run_dir / "per_class.csv", index=False)
        confusion.to_csv(run_dir / "confusion_matrix.csv")
        plot_confusion(confusion, run_dir / "plots" / "confusion_matrix.png",
                       f"{data_cfg.name} {data.split}: accuracy {metrics['accuracy']:.4f}")
    elif hasattr(task, "write_reports"):  # a task's own files (e.g. regression plots)
        task.write_reports(metrics_acc, run_dir, f"{data_cfg.name} {data.split}")
    summary = {"command": "evaluate", "run": str(trained.run_dir), "checkpoint": str(trained.ckpt_dir),
               "task": task.name, "data": data_cfg.name, "split": data.split, "metrics": metrics,
               "device": str(device), "versions": versions()}
    write_json(run_dir / "metrics.json", summary)
    _print(summary, per_class)
    print(run_dir, flush=True)
    return metrics


def _training_data_dir(run_dir: Path) -> str | None:
    """Where the run found its data, if that directory is still there: the same files as
    at training time, whatever $BIGMODEL_DATA_DIR or the working directory are now."""
    import json

    try:
        folder = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")).get("data_dir")
    except (OSError, ValueError):
        return None
    return folder if folder and Path(folder).is_dir() else None


def _reports(y_true, y_pred, label_names: list[str]):
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


def _print(summary: dict, per_class) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    m = summary["metrics"]
    table = Table(title=f"{summary['data']} {summary['split']}: {m['samples']} samples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in m.items():
        if key != "samples":
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    if per_class is None:
        return
    classes = Table(title="per class")
    for col in per_class.columns:
        classes.add_column(col, justify="left" if col == "label" else "right")
    for row in per_class.itertuples(index=False):
        classes.add_row(str(row.label), f"{row.precision:.4f}", f"{row.recall:.4f}",
                        f"{row.f1:.4f}", str(row.support))
    console.print(classes)
