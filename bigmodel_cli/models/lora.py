"""LoRA: low-rank adapters (through `peft`) inside a frozen encoder, for model=bert, gpt, hf.

`model.lora.enabled=true` injects adapters into the encoder's `target_modules` (nn.Linear
layers, peft's name matching) with peft's `inject_adapter_in_model`: the module tree stays
ours, each targeted layer becomes a peft LoRA layer around its frozen `base_layer`. Only
the adapters and the task's head (everything outside `model.encoder`) train.

A LoRA checkpoint's `model.safetensors` holds exactly the trainable tensors (adapters and
head); `meta.json["lora"]` holds the settings and names the base the rest comes from:

    {"kind": "hf", "name_or_path": ..., "path": ..., "sha256": ...}   a pretrained model=hf
    {"kind": "checkpoint", "path": <init_from checkpoint dir>, "sha256": ...}   model.init_from
    {"kind": "inside"}    no separate base (random initialisation): the checkpoint holds all

Loading builds the plain model, loads the base (checking its sha256), injects the adapters,
then loads the checkpoint's tensors. `merge` folds the adapters into the base weights
(W + B A * alpha / r), giving a plain model again (what `bigmodel export` writes).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from torch import nn

from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel")

INSTALL_HINT = "pip install 'bigmodel[hf]'"
# Encoder class -> the modules adapters go on when model.lora.target_modules is null: the
# attention projections (our fused qkv and its output; BERT-style query, key, value).
DEFAULT_TARGETS = {"TextTransformer": ["qkv", "proj"], "HFEncoder": ["query", "key", "value"]}


def _peft():
    try:
        import peft
    except ImportError:
        raise UsageError(f"model.lora needs the `peft` package: {INSTALL_HINT}") from None
    return peft


def settings(lora_cfg: Any, encoder: nn.Module) -> dict:
    """The adapters' settings (target_modules filled in from the family's default)."""
    family = type(encoder).__name__
    if family not in DEFAULT_TARGETS:
        raise UsageError(f"model.lora.enabled=true: LoRA is available for model=bert, gpt and "
                         f"hf, not for this model ({family})")
    targets = lora_cfg.target_modules
    return {"r": int(lora_cfg.r), "alpha": float(lora_cfg.alpha),
            "dropout": float(lora_cfg.dropout),
            "target_modules": list(targets) if targets is not None else DEFAULT_TARGETS[family]}


def add_adapters(model: nn.Module, lora: dict) -> None:
    """Adapters into `model.encoder` (frozen but for them); the head stays trainable."""
    peft = _peft()
    config = peft.LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                             target_modules=lora["target_modules"], bias="none")
    try:
        peft.inject_adapter_in_model(config, model.encoder)
    except ValueError as exc:  # no module matched, or one of a type LoRA does not wrap
        raise UsageError(f"model.lora.target_modules={lora['target_modules']}: "
                         f"{str(exc).splitlines()[0]}") from None


def enable(model: nn.Module, model_cfg: Any, lora_cfg: Any, source: Any) -> dict:
    """Add adapters to a freshly built (and init_from-loaded) model; the record meta.json keeps."""
    if source is not None and source.meta.get("lora"):
        raise UsageError(f"model.init_from={source.ckpt_dir}: a LoRA checkpoint holds only its "
                         "adapters and head; start from its base, or from a merged export")
    record = {**settings(lora_cfg, model.encoder), "base": describe_base(model_cfg, source)}
    add_adapters(model, record)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("model.lora: r=%d alpha=%g on %s; base: %s; %s of %s parameters train (%.2f%%)",
             record["r"], record["alpha"], ", ".join(record["target_modules"]),
             record["base"]["kind"], f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return record


def describe_base(model_cfg: Any, source: Any) -> dict:
    from bigmodel_cli.export.backend import sha256

    if source is not None:
        path = source.ckpt_dir.resolve()
        return {"kind": "checkpoint", "path": str(path), "sha256": sha256(path / "model.safetensors")}
    if "name_or_path" in model_cfg and model_cfg.pretrained:
        from bigmodel_cli.models.hf import resolve

        path = Path(resolve(model_cfg.name_or_path))
        weights = _hf_weights(path)
        return {"kind": "hf", "name_or_path": model_cfg.name_or_path, "path": str(path),
                "sha256": sha256(weights) if weights else None}
    return {"kind": "inside"}


def _hf_weights(folder: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None  # a Hub id: transformers keeps the files in its own cache


def base_is_pretrained(meta: dict) -> bool:
    """A LoRA run on a pretrained model=hf: its encoder is rebuilt from the pretrained model."""
    return bool(meta.get("lora")) and meta["lora"]["base"]["kind"] == "hf"


def restore(model: nn.Module, record: dict) -> None:
    """The base weights (checked against their sha256), then the adapters, into a model built
    from a LoRA checkpoint's meta.json; the checkpoint's own tensors load after this."""
    from bigmodel_cli.export.backend import sha256

    base = record["base"]
    if base["kind"] == "checkpoint":
        path = Path(base["path"]) / "model.safetensors"
        if not path.is_file() or sha256(path) != base["sha256"]:
            raise UsageError(f"this LoRA checkpoint's base {path} is "
                             f"{'changed' if path.is_file() else 'missing'} (sha256 "
                             f"{base['sha256'][:12]}... expected): restore it, or retrain")
        _load_encoder(model, path)
    elif base["kind"] == "hf" and base["sha256"]:
        from bigmodel_cli.models.hf import resolve

        weights = _hf_weights(Path(resolve(base["name_or_path"])))
        if weights is None or sha256(weights) != base["sha256"]:
            raise UsageError(f"this LoRA checkpoint's base model {base['name_or_path']} is not "
                             f"the one it was trained on (sha256 {base['sha256'][:12]}... "
                             f"expected, found {weights or 'no weights file'})")
    add_adapters(model, record)


def _load_encoder(model: nn.Module, path: Path) -> None:
    from safetensors import safe_open

    own = model.state_dict()
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith("encoder.") and k in own}
    missing = sorted(k for k in own if k.startswith("encoder.") and k not in tensors)
    if missing:
        raise UsageError(f"this LoRA checkpoint's base {path} does not fit the model "
                         f"(missing {missing[:5]})")
    model.load_state_dict(tensors, strict=False)


def has_adapters(model: nn.Module) -> bool:
    return any(".lora_A." in name for name, _ in model.named_parameters())


def tensors_to_save(model: nn.Module, meta: dict) -> dict | None:
    """A LoRA checkpoint with a separate base saves its trainable tensors only; else None
    (the whole model)."""
    if not meta.get("lora") or meta["lora"]["base"]["kind"] == "inside":
        return None
    return {name: p.detach().contiguous() for name, p in model.named_parameters()
            if p.requires_grad}


def base_names(model: nn.Module) -> set[str]:
    """State-dict names that come from the base, not from a LoRA checkpoint's own file."""
    if not has_adapters(model):
        return set()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return set(model.state_dict()) - trainable


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with every adapter folded into its base layer (plain nn.Linear)."""
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(model)
    for name, module in list(merged.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent), child, module.get_base_layer())
    return merged
