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
    # The task's own files: per-class scores and a confusion matrix, regression plots, ...
    table = task.write_reports(metrics_acc, run_dir, f"{data_cfg.name} {data.split}",
                               trained.label_names)
    summary = {"command": "evaluate", "run": str(trained.run_dir), "checkpoint": str(trained.ckpt_dir),
               "task": task.name, "data": data_cfg.name, "split": data.split, "metrics": metrics,
               "device": str(device), "versions": versions()}
    write_json(run_dir / "metrics.json", summary)
    _print(summary, table)
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


def _print(summary: dict, task_table) -> None:
    """The metrics, then the task's table (per-class scores), if it has one."""
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
    if task_table is None:
        return
    extra = Table(title="per class" if "label" in task_table.columns else None)
    for col in task_table.columns:
        extra.add_column(str(col), justify="left" if col == "label" else "right")
    for row in task_table.itertuples(index=False):
        extra.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    console.print(extra)
