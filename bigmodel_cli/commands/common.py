"""Pieces the commands share: building configured objects, loading a run directory."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel")


def build(node: DictConfig, where: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, with a bad argument reported as a usage error naming the group."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise UsageError(f"{where}: {cause}") from None


def count_parameters(model, trainable: bool = False) -> int:
    """All parameters, or (trainable=True) those the optimizer updates."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


@dataclass
class TrainedRun:
    """What evaluate/predict need from a training run directory."""

    run_dir: Path
    ckpt_dir: Path
    config: DictConfig
    meta: dict
    model: Any
    task: Any
    assets: Any              # what the data kind reads raw inputs with (a tokenizer, ...)
    label_names: list[str]


def load_run(run: str, ckpt: str, device) -> TrainedRun:
    from bigmodel_cli.data import kinds
    from bigmodel_cli.engine.checkpoint import (
        build_model,
        load_weights,
        read_meta,
        resolve_checkpoint,
    )

    ckpt_dir = resolve_checkpoint(Path(run), ckpt)
    run_dir = ckpt_dir.parent.parent if ckpt_dir.parent.name == "checkpoints" else Path(run)
    config_file, labels_file = run_dir / ".hydra" / "config.yaml", run_dir / "labels.json"
    meta = read_meta(ckpt_dir)
    for needed in (config_file, labels_file):
        if not needed.is_file():
            raise UsageError(f"run={run}: incomplete run directory, {needed.name} is missing "
                             f"(looked for {needed})")
    try:
        label_names = json.loads(labels_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"run={run}: unreadable labels.json ({exc})") from None
    assets = kinds.module_named(meta.get("data_kind", "text")).load_assets(run_dir, meta)
    model, task = build_model(meta, run_dir)
    load_weights(model, ckpt_dir)
    model.to(device).eval()
    log.info("loaded %s (step %s, %s)", ckpt_dir, meta.get("step"), meta.get("metrics") and
             f"validation {meta.get('monitor')} {meta['metrics'].get(meta.get('monitor'), float('nan')):.4f}")
    return TrainedRun(run_dir=run_dir, ckpt_dir=ckpt_dir, config=OmegaConf.load(config_file),
                      meta=meta, model=model, task=task, assets=assets,
                      label_names=label_names)
