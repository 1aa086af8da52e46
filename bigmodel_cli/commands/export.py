"""bigmodel export: a self-contained ONNX folder from a trained run (see bigmodel_cli.export)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def run(cfg: DictConfig, run_dir: Path) -> dict:
    from bigmodel_cli.export.onnx_export import export_run

    return export_run(cfg)
