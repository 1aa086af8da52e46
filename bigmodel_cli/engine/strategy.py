"""How the model is spread over processes: one process, or DDP under torchrun.

The engine asks the strategy to wrap the model (torch.compile when asked, then DDP when
several processes train), to give the full weights for a checkpoint, and whether this
process writes files. Getting the full weights is collective: every rank calls it, rank 0
writes what it returns. With DDP every rank already holds them all; a sharded strategy
(FSDP) gathers them there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from bigmodel_cli.engine import distributed
from bigmodel_cli.engine.checkpoint import unwrap
from bigmodel_cli.errors import UsageError

log = logging.getLogger("bigmodel")


@dataclass
class Strategy:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environment(cls) -> Strategy:
        """One process, or torchrun's ranks (the process group is started here)."""
        rank, world_size = distributed.world()
        if world_size > 1:
            distributed.init()
        return cls(rank=rank, world_size=world_size)

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

    def wrap(self, model: nn.Module, device: torch.device, compile: bool) -> nn.Module:
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

    def full_model(self, model: nn.Module) -> nn.Module:
        """The plain module with the full weights, for rank 0 to save. Collective: every
        rank calls it. Each DDP rank holds a full replica, so nothing needs gathering."""
        return unwrap(model)

    def barrier(self) -> None:
        if self.distributed:
            distributed.barrier()
