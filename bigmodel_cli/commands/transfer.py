"""Starting a run from another run's weights: `model.init_from=<run dir | checkpoint dir>`.

- The encoder is built as in the source run (its saved model config): the sizes must match
  for the weights to load. Only `dropout`, `pooling` and the transfer keys come from this run.
- The source run's tokenizer is reused (its token ids are what the embeddings learned);
  overriding data.tokenizer.* on the command line then is an error.
- Every tensor whose name and shape match is loaded. The report names what was loaded,
  what is new (initialised here, e.g. a classifier head) and what was dropped (e.g. the
  MLM head). An encoder tensor of another shape is an error; a head tensor of another shape
  (a finetune run for another label set) is initialised anew and reported, and so is a
  head of the same shape trained on other labels (Fashion-MNIST's 10 classes -> digits).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel")

# model/ keys that are not encoder arguments: how to start and train it (LoRA included), its
# suggested lr, epochs and batch size.
TRANSFER_KEYS = ("init_from", "freeze_encoder", "head_lr_mult", "lr", "weight_decay", "epochs",
                 "sgd_lr", "batch_size", "lora")
PER_RUN_KEYS = ("dropout", "pooling", "activation_checkpointing")  # may differ from the source's


@dataclass
class Source:
    ckpt_dir: Path
    run_dir: Path | None
    meta: dict


def source_run(cfg: DictConfig) -> Source:
    from bigmodel_cli.engine.checkpoint import read_meta, resolve_checkpoint

    path = Path(str(cfg.model.init_from)).expanduser()
    try:
        ckpt_dir = resolve_checkpoint(path, "best")
    except UsageError as exc:
        raise UsageError(f"model.init_from: {exc}") from None
    run_dir = ckpt_dir.parent.parent if ckpt_dir.parent.name == "checkpoints" else None
    return Source(ckpt_dir=ckpt_dir, run_dir=run_dir, meta=read_meta(ckpt_dir))


def model_config(cfg: DictConfig, source: Source | None) -> DictConfig:
    """The encoder's config without the transfer keys; with a source run, its architecture."""
    own = OmegaConf.to_container(cfg.model, resolve=True)
    for key in TRANSFER_KEYS:
        own.pop(key, None)
    if source is None:
        return OmegaConf.create(own)
    saved = dict(source.meta["model"])
    for key in TRANSFER_KEYS:
        saved.pop(key, None)
    if saved.get("_target_") != own.get("_target_"):
        raise UsageError(
            f"model.init_from={cfg.model.init_from} holds a {saved.get('_target_', '?').rsplit('.', 1)[-1]} "
            f"model, but this run's model is {own['_target_'].rsplit('.', 1)[-1]}: choose the "
            "same model group as the source run")
    ignored = sorted(k for k in own if k not in PER_RUN_KEYS and k in saved and own[k] != saved[k])
    if ignored:
        log.warning("model.init_from: the encoder is built as in the source run; ignored: %s",
                    ", ".join(f"model.{k}={own[k]} (source: {saved[k]})" for k in ignored))
    saved.update({k: own[k] for k in PER_RUN_KEYS if k in own})
    return OmegaConf.create(saved)


def choose_tokenizer(cfg: DictConfig, model_cfg: DictConfig, source: Source | None, ctx,
                     run_dir: Path) -> None:
    """Set ctx.tokenizer_file: the source run's tokenizer, a pretrained model's own, or none
    (train one on the data)."""
    from hydra.utils import get_class

    encoder_class = get_class(model_cfg._target_)
    if source is not None and source.run_dir is not None \
            and (source.run_dir / "tokenizer.json").is_file():
        given = _tokenizer_overrides()
        if given:
            raise UsageError(
                f"model.init_from reuses the tokenizer of {source.run_dir} (its token ids are "
                f"what the pretrained embeddings learned); remove {', '.join(given)}")
        ctx.tokenizer_file = source.run_dir / "tokenizer.json"
        ctx.add_special_tokens = bool((source.meta.get("encoding") or {}).get("add_special_tokens"))
        log.info("tokenizer: reused from %s", ctx.tokenizer_file)
    elif hasattr(encoder_class, "export_tokenizer"):  # a pretrained model brings its own
        ctx.tokenizer_file = encoder_class.export_tokenizer(model_cfg, run_dir)
        ctx.add_special_tokens = True
    elif source is not None:
        raise UsageError(f"model.init_from={cfg.model.init_from}: no tokenizer.json beside the "
                         "checkpoint; give the run directory, not a copied checkpoint")


def _tokenizer_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
    except ValueError:  # not under Hydra (tests calling run() directly)
        return []
    return [o.split("=", 1)[0] for o in overrides
            if o.lstrip("+~").startswith("data.tokenizer")]


def load_matching(model, source: Source, label_names: list[str] | None = None) -> dict:
    """Load every tensor of the source checkpoint whose name and shape match; report the rest.
    A classifier head trained on other labels than `label_names` is not loaded: it is new."""
    from safetensors import safe_open

    from bigmodel_cli.engine.checkpoint import WEIGHTS, unwrap

    model = unwrap(model)
    own = model.state_dict()
    path = source.ckpt_dir / WEIGHTS
    loaded, dropped, mismatched, reshaped = {}, [], [], []
    other_labels = label_names is not None and source.meta.get("label_names") != label_names
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            if name not in own or (other_labels and name.startswith("head.")):
                dropped.append(name)
                continue
            tensor = f.get_tensor(name)
            if tuple(tensor.shape) != tuple(own[name].shape):
                if name.startswith("encoder."):
                    mismatched.append(f"{name}: checkpoint {tuple(tensor.shape)}, model "
                                      f"{tuple(own[name].shape)}")
                else:  # a task head for another label set: initialised anew
                    reshaped.append(name)
                continue
            loaded[name] = tensor
    if mismatched:
        raise UsageError(f"model.init_from={source.ckpt_dir}: shapes differ, so these weights "
                         "cannot be loaded:\n    " + "\n    ".join(mismatched[:10])
                         + ("\n  (vocabulary sizes differ when the tokenizer is not the source "
                            "run's)" if any("tok_emb" in m for m in mismatched) else ""))
    # Tied weights (an LM head sharing the embedding matrix) are stored once: not "new".
    aliases = _aliases(model)
    new = sorted(n for n in own if n not in loaded and aliases.get(n, n) not in loaded)
    if not loaded:
        raise UsageError(f"model.init_from={source.ckpt_dir}: no weight matches this model "
                         "(different model families?)")
    model.load_state_dict(loaded, strict=False)
    report = {"source": str(source.ckpt_dir), "loaded": len(loaded), "new": new,
              "dropped": sorted(dropped), "reinitialised_other_shape": sorted(reshaped)}
    log.info("model.init_from: loaded %d tensors from %s; new: %s; dropped: %s", len(loaded),
             source.ckpt_dir, _grouped(new) or "none", _grouped(dropped) or "none")
    if reshaped:
        log.info("model.init_from: initialised anew (another shape in the source): %s",
                 ", ".join(reshaped))
    return report


def _aliases(model) -> dict[str, str]:
    """name -> the first name of the same parameter (tied weights)."""
    first: dict[int, str] = {}
    out = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        out[name] = first.setdefault(id(tensor), name)
    return out


def _grouped(names: list[str]) -> str:
    """'lm_head.*' for several names under one prefix, the name itself for one."""
    prefixes = Counter(n.split(".", 1)[0] for n in names)
    parts = []
    for prefix, count in prefixes.items():
        members = [n for n in names if n.split(".", 1)[0] == prefix]
        parts.append(f"{prefix}.*" if count > 2 else ", ".join(members))
    return ", ".join(parts)
