"""bigmodel pretrain: train a language model (masked or causal) on unlabeled text."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def run(cfg: DictConfig, run_dir: Path) -> dict:
    from bigmodel_cli.commands import train

    return train.run(cfg, run_dir, "pretrain")
