"""Checkpoints: `model.safetensors` + `meta.json` (+ `state.pt`), written atomically.

A checkpoint is a directory. It is written under a temporary name and renamed into place,
so an interrupted write never leaves a half-written `last/` or `best/`. Weights come from
the unwrapped module (no `module.` / `_orig_mod.` prefixes). `state.pt` holds only tensors
and plain Python values, so it loads with `torch.load(weights_only=True)`. Under
trainer.strategy=fsdp, `last/` keeps the weights and optimizer tensors in `sharded/`
(torch.distributed.checkpoint, one file per rank; engine/fsdp.py) instead of
`model.safetensors`; `load_weights` reads either into a plain module.

A LoRA run's checkpoint holds only its trainable tensors (adapters and head) and names its
base in meta.json (see bigmodel_cli/models/lora.py); loading it loads the base first.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigmodel_cli.errors import UsageError
from bigmodel_cli.jsonfiles import write_json

WEIGHTS, META, STATE = "model.safetensors", "meta.json", "state.pt"
SHARDED = "sharded"  # trainer.strategy=fsdp: last/'s weights and optimizer state (DCP)
ALLOWED_TARGET_PREFIXES = ("bigmodel_cli.",)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(directory: Path, model: nn.Module | dict, meta: dict,
                    state: dict | None = None) -> None:
    """`model`: a module, or its full state dict (gathered from shards). A LoRA module
    saves only its adapters and head."""
    from safetensors.torch import save_file, save_model

    from bigmodel_cli.models import lora

    tmp = staging_dir(directory)
    only = lora.tensors_to_save(unwrap(model), meta) if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module) and only is None:
        save_model(unwrap(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
    else:
        tensors = only if only is not None else model
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS),
                  metadata={"format": "pt"})
    write_json(tmp / META, meta)
    if state is not None:
        torch.save(state, tmp / STATE)
    publish(tmp, directory)


def staging_dir(directory: Path) -> Path:
    """An empty temporary sibling of `directory` to write a checkpoint into."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def publish(tmp: Path, directory: Path) -> None:
    """Make the finished `tmp` the checkpoint `directory`: its data on disk first, then two
    renames (a crash between them leaves the previous copy as `.NAME.old-PID`)."""
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(run_or_ckpt: Path, ckpt: str = "best") -> Path:
    """A checkpoint directory from a run dir (+ `best`/`last`) or a checkpoint dir itself."""
    from bigmodel_cli.runs import has_weights, is_checkpoint

    path = Path(run_or_ckpt).expanduser()
    if not path.exists():
        raise UsageError(f"run={path}: no such directory")
    if has_weights(path):
        return path
    if ckpt not in ("best", "last"):
        candidate = Path(ckpt).expanduser()
        if has_weights(candidate):
            return candidate
        raise UsageError(f"ckpt={ckpt}: not a checkpoint directory (no {WEIGHTS}); "
                         "use best, last or a checkpoint directory")
    folder = path / "checkpoints"
    if not folder.is_dir():
        raise UsageError(f"run={path}: not a run directory (no checkpoints/ in it); give the "
                         "directory a finetune run printed at its end, e.g. outputs/finetune/<date>/<time>")
    target = folder / ckpt
    if has_weights(target):
        return target
    # A crash between the two renames of save_checkpoint leaves only the previous copy.
    for leftover in sorted(folder.glob(f".{ckpt}.old-*")):
        if is_checkpoint(leftover):
            return leftover
    raise UsageError(f"run={path}: no {ckpt} checkpoint in {folder} "
                     f"(found: {', '.join(p.name for p in folder.iterdir()) or 'nothing'})")


def read_meta(directory: Path) -> dict:
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{directory}: not a checkpoint (no {META})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{directory / META}: corrupt checkpoint metadata ({exc})") from None
    for key in ("model", "task", "model_args", "num_labels"):
        if key not in meta:
            raise UsageError(f"{directory / META}: corrupt checkpoint metadata (no {key!r})")
    return meta


def build_model(meta: dict, run_dir: Path | None = None) -> tuple[nn.Module, Any]:
    """Rebuild (model, task) from checkpoint metadata; only bigmodel classes are allowed.
    An encoder class with `rebuild_args(run_dir)` (model=hf) is rebuilt from files its run
    directory keeps."""
    from hydra.utils import get_class, instantiate

    from bigmodel_cli.models import lora

    for part in ("model", "task"):
        target = str(meta[part].get("_target_", ""))
        if not target.startswith(ALLOWED_TARGET_PREFIXES):
            raise UsageError(f"checkpoint {part} target {target!r} is not a bigmodel class")
    args = dict(meta["model_args"])
    encoder_class = get_class(meta["model"]["_target_"])
    if hasattr(encoder_class, "rebuild_args") and run_dir is not None \
            and not lora.base_is_pretrained(meta):
        args.update(encoder_class.rebuild_args(run_dir))
    encoder = instantiate(meta["model"], **args)
    task = instantiate(meta["task"])
    model = task.build_model(encoder, meta["num_labels"])
    if meta.get("lora"):
        lora.restore(model, meta["lora"])
    return model, task


def load_weights(model: nn.Module, directory: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    from bigmodel_cli.models import lora

    if not (directory / WEIGHTS).is_file() and (directory / SHARDED).is_dir():
        load_sharded_weights(unwrap(model), directory)
        return
    try:
        missing, unexpected = load_model(unwrap(model), str(directory / WEIGHTS), strict=False)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UsageError(f"{directory / WEIGHTS}: corrupt or incompatible weights ({exc})") from None
    base = lora.base_names(unwrap(model))  # a LoRA checkpoint: the base was loaded already
    missing = [name for name in missing if name not in base]
    if missing or unexpected:
        raise UsageError(f"{directory / WEIGHTS}: weights do not fit the model "
                         f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")


def load_sharded_weights(model: nn.Module, directory: Path) -> None:
    """The full weights of an FSDP `last/` checkpoint into a plain module, on one process
    (DCP reads every rank's shard)."""
    import torch.distributed.checkpoint as dcp

    state = {"model": model.state_dict()}
    try:
        with warnings.catch_warnings():  # that one process reads it all is the intent here
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=directory / SHARDED, no_dist=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise UsageError(f"{directory / SHARDED}: corrupt or incompatible weights ({exc})") from None
    model.load_state_dict(state["model"])


def load_state(directory: Path) -> dict | None:
    path = directory / STATE
    return torch.load(path, weights_only=True) if path.is_file() else None
