"""How the model is spread over processes (`trainer.strategy`): one process, DDP under
torchrun, or FSDP (engine/fsdp.py: the model, gradients and optimizer state sharded).

The engine asks the strategy to wrap the model (torch.compile when asked, then DDP when
several processes train), to save and restore checkpoints with the optimizer states, and
whether this process writes files. Saving is collective: every rank calls it, rank 0 writes.
With DDP every rank already holds the full weights; FSDP gathers them, or has each rank
write its own shard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bigmodel_cli.engine import distributed
from bigmodel_cli.engine.checkpoint import load_state, load_weights, save_checkpoint, unwrap
from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel")


@dataclass
class Strategy:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environment(cls, name: str = "auto") -> Strategy:
        """`name` (trainer.strategy): auto and ddp train one process, or DDP over torchrun's
        ranks (DDP over one process would compute the same); fsdp shards over torchrun's
        ranks or a world of one. The process group is started here."""
        rank, world_size = distributed.world()
        if name == "fsdp":
            from bigmodel_cli.engine.fsdp import FSDPStrategy

            distributed.init()
            return FSDPStrategy(rank=rank, world_size=world_size)
        if world_size > 1:
            distributed.init()
        return cls(rank=rank, world_size=world_size)

    @property
    def name(self) -> str:
        return "ddp" if self.distributed else "one process"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """Under torchrun each rank uses its own GPU."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return device

    def wrap(self, model: nn.Module, device: torch.device, compile: bool,
             precision: str = "fp32") -> nn.Module:
        """The module the loop trains: compiled when asked (opt-in: on CPU it was slower),
        then DistributedDataParallel across ranks. Checkpoints come from the unwrapped module."""
        if compile:
            model = torch.compile(model)
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        from bigmodel_cli.engine.optim import sparse_parameters

        if sparse_parameters(model):
            raise UsageError("sparse embedding gradients are not supported under torchrun: "
                             "set model.sparse=false")
        return DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def optimizer_states(self, model: nn.Module, optimizers: list) -> list:
        return [o.state_dict() for o in optimizers]

    def load_optimizer_states(self, model: nn.Module, optimizers: list, states: list) -> None:
        for optimizer, saved in zip(optimizers, states, strict=True):
            optimizer.load_state_dict(saved)

    def save(self, directory: Path, model: nn.Module, meta: dict, state: dict | None) -> None:
        """A checkpoint (with the training state for `last`). Collective: every rank calls
        it, rank 0 writes. Each DDP rank holds a full replica, so nothing needs gathering."""
        if self.is_main:
            save_checkpoint(directory, unwrap(model), meta, state)

    def restore(self, directory: Path, model: nn.Module, optimizers: list) -> dict:
        """The weights of a `last` checkpoint into `model`; returns its training state."""
        load_weights(model, directory)
        return load_state(directory)

    def best_model(self, model: nn.Module, directory: Path, device: torch.device) -> nn.Module:
        """The trained model with the best weights, to score on test in this process alone."""
        load_weights(model, directory)
        return unwrap(model)

    def memory(self, model: nn.Module, optimizers: list) -> list[dict]:
        """What each rank holds (collective): the bytes of its parameters and optimizer state,
        counted from the tensors themselves (a sharded one: its local shard), and its peak RSS."""
        import resource

        from torch.distributed.tensor import DTensor

        def nbytes(t: torch.Tensor) -> int:
            return (t.to_local() if isinstance(t, DTensor) else t).nbytes

        mine = {"rank": self.rank,
                "parameter_bytes": sum(nbytes(p) for p in unwrap(model).parameters()),
                "optimizer_bytes": sum(nbytes(v) for o in optimizers for s in o.state.values()
                                       for v in s.values() if isinstance(v, torch.Tensor)),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
        return distributed.all_gather_object(mine) if self.distributed else [mine]

    def barrier(self) -> None:
        if self.distributed:
            distributed.barrier()
