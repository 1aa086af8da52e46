"""FSDP2 (`trainer.strategy=fsdp`): each rank holds a 1/N shard of the parameters, gradients
and optimizer state; a block's full parameters exist only while it computes.

Sharding: `fully_shard` on each transformer block and on each embedding table, then on the
root (the head, final norms, and anything left). An embedding whose weight is also read
outside its own forward (an output projection tied to it: model=gpt/bert's LM head, SASRec's
item scores) stays in the root's unit, which is gathered for the whole forward. Families with
no transformer blocks are refused: sharding them would gather the whole model at every step.

Checkpoints: `last/` holds `sharded/` (torch.distributed.checkpoint: every rank writes its own
shard of the weights and optimizer tensors; loading reshards to any number of ranks), plus
`state.pt` (the rest of the training state, written by rank 0) and `meta.json`. `best/` is one
full `model.safetensors`, gathered from every rank and written by rank 0, so that evaluate,
predict, serve and export read it on one process as for any run. Both are written under a
temporary name and renamed into place.

Without torchrun this runs over a world of one process (a 1-rank process group): the same
code path, and how a checkpoint sharded over N ranks is resumed in one process.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from bigmodel_cli.engine import distributed
from bigmodel_cli.engine.checkpoint import (
    META,
    SHARDED,
    STATE,
    build_model,
    load_state,
    load_weights,
    publish,
    read_meta,
    save_checkpoint,
    staging_dir,
)
from bigmodel_cli.engine.strategy import Strategy
from bigmodel_cli.errors import UsageError
from bigmodel_cli.jsonfiles import write_json

log = logging.getLogger("bigmodel")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks to shard one by one: ours (TransformerBlock) and, for model=hf, the layers
    that transformers names in `_no_split_modules`."""
    from bigmodel_cli.models.transformer import TransformerBlock

    names = {n for m in model.modules() for n in getattr(m, "_no_split_modules", None) or ()}
    return [m for m in model.modules()
            if isinstance(m, TransformerBlock) or type(m).__name__ in names]


def tied_modules(model: nn.Module) -> set[int]:
    """Modules whose weight another module reads directly (`tied_embeddings` names them)."""
    return {id(m.get_submodule(name)) for m in model.modules()
            for name in getattr(m, "tied_embeddings", ())}


def check_shardable(model: nn.Module) -> None:
    from bigmodel_cli.engine.optim import sparse_parameters

    name = type(getattr(model, "encoder", model)).__name__
    if sparse_parameters(model):
        raise UsageError(f"trainer.strategy=fsdp: {name} has embedding tables with sparse "
                         "gradients, which FSDP cannot shard (it reduce-scatters dense "
                         "gradients); use trainer.strategy=ddp with model.sparse=false")
    if any("lora_" in key for key, _ in model.named_parameters()):
        # Its checkpoints hold only the adapters and head, which the gathered full state of
        # a sharded model does not separate; and with a frozen base DDP's replicas cost
        # little optimizer memory.
        raise UsageError("trainer.strategy=fsdp with model.lora.enabled=true is not supported: "
                         "use trainer.strategy=ddp or auto")
    if not transformer_blocks(model):
        raise UsageError(f"trainer.strategy=fsdp: {name} has no transformer blocks to shard "
                         "one at a time, so every rank would gather the whole model at every "
                         "step (no saving over DDP); use trainer.strategy=ddp or auto")


class FSDPStrategy(Strategy):
    name = "fsdp"

    def wrap(self, model: nn.Module, device: torch.device, compile: bool,
             precision: str = "fp32") -> nn.Module:
        """Shard blocks, embeddings, then the root (optimizers are built on the result: its
        parameters are DTensors). On CUDA, device.precision=bf16/fp16 gathers parameters in
        that dtype and reduces gradients in fp32; on CPU parameters stay fp32 (autocast still
        computes in bf16 when asked)."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        check_shardable(model)
        policy = MixedPrecisionPolicy()
        if device.type == "cuda" and precision in DTYPES:
            policy = MixedPrecisionPolicy(param_dtype=DTYPES[precision], reduce_dtype=torch.float32)
        tied = tied_modules(model)
        embeddings = [m for m in model.modules()
                      if isinstance(m, nn.Embedding) and id(m) not in tied]
        for unit in (*embeddings, *transformer_blocks(model)):
            fully_shard(unit, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        log.info("FSDP over %d rank(s): %d transformer blocks and %d embedding tables sharded "
                 "apart, the rest with the root", self.world_size, len(transformer_blocks(model)),
                 len(embeddings))
        return torch.compile(model) if compile else model

    def optimizer_states(self, model: nn.Module, optimizers: list) -> dict:
        """This rank's shard of every optimizer's state, keyed by parameter name."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        reshard(model)
        return get_optimizer_state_dict(model, optimizers)

    def load_optimizer_states(self, model: nn.Module, optimizers: list, states: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizers, states)

    def save(self, directory: Path, model: nn.Module, meta: dict, state: dict | None) -> None:
        """Collective. `best/` (no state): the full weights, gathered to rank 0. `last/`: every
        rank writes its shards into one shared temporary directory, then rank 0 adds the rest
        of the state and renames it into place (a kill before that leaves the old `last/`)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        reshard(model)
        if state is None:
            full = get_model_state_dict(model, options=StateDictOptions(
                full_state_dict=True, cpu_offload=True))  # only rank 0 receives the tensors
            if self.is_main:
                save_checkpoint(directory, full, meta)
            return
        import torch.distributed.checkpoint as dcp

        tmp = Path(distributed.broadcast(str(staging_dir(directory)) if self.is_main else None))
        tensors, plain = split_tensors(state["optimizers"])
        dcp.save({"model": get_model_state_dict(model), "optimizers": tensors},
                 checkpoint_id=tmp / SHARDED)  # returns once rank 0 wrote the metadata
        if self.is_main:
            write_json(tmp / META, {**meta, "sharded": True, "world_size": self.world_size})
            torch.save({**state, "optimizers": plain}, tmp / STATE)
            publish(tmp, directory)
        self.barrier()

    def restore(self, directory: Path, model: nn.Module, optimizers: list) -> dict:
        """Weights into the (sharded) model and the training state, optimizers included; DCP
        reads whichever saved shards overlap this rank's, whatever the saving world size."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_model_state_dict

        if not (directory / SHARDED).is_dir():
            raise UsageError(f"{directory}: no sharded training state ({SHARDED}/); it was not "
                             "saved with trainer.strategy=fsdp")
        state = load_state(directory)
        weights, optimizer_states = get_state_dict(model, optimizers)  # the shapes to fill
        tensors, plain = split_tensors(optimizer_states)
        saved = {"model": weights, "optimizers": tensors}
        dcp.load(saved, checkpoint_id=directory / SHARDED)
        set_model_state_dict(model, saved["model"])
        state["optimizers"] = join_tensors(saved["optimizers"], state["optimizers"])
        return state

    def memory(self, model: nn.Module, optimizers: list) -> list[dict]:
        reshard(model)  # count the shards, not the root's gathered parameters
        return super().memory(model, optimizers)

    def best_model(self, model: nn.Module, directory: Path, device: torch.device) -> nn.Module:
        """A plain copy of the model with the best weights (the sharded one needs every rank)."""
        plain, _ = build_model(read_meta(directory), directory.parent.parent)
        load_weights(plain, directory)
        return plain.to(device)


def reshard(model: nn.Module) -> None:
    """Back to the sharded parameters the optimizers hold. The root unit keeps its gathered
    parameters after a forward (for the backward that usually follows); after a validation
    no backward comes, and the state-dict functions would see the gathered ones."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def split_tensors(optimizer_states: dict) -> tuple[dict, dict]:
    """(tensors, everything else) of an optimizer state dict: the tensors go through DCP, the
    plain values (hyperparameters, step counts kept as numbers) into state.pt, which loads
    with weights_only=True."""
    tensors = {name: {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
               for name, values in optimizer_states["state"].items()}
    rest = {name: {k: v for k, v in values.items() if not isinstance(v, torch.Tensor)}
            for name, values in optimizer_states["state"].items()}
    return tensors, {"state": rest, "param_groups": optimizer_states["param_groups"]}


def join_tensors(tensors: dict, plain: dict) -> dict:
    names = set(tensors) | set(plain["state"])
    return {"state": {n: {**plain["state"].get(n, {}), **tensors.get(n, {})} for n in names},
            "param_groups": plain["param_groups"]}
