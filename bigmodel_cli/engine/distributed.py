"""Distributed data parallel training under `torchrun`.

`torchrun --standalone --nproc_per_node=N -m bigmodel_cli finetune ...` starts N processes.
Each initialises `torch.distributed` (NCCL for CUDA tensors, gloo for CPU ones), wraps the
model in DistributedDataParallel, and trains on its own slice of every global batch
(`trainer.batch_size` is the global batch: rank r takes rows r, r+N, ... of it), so N
processes compute the same update as one process with the same batch size and seed.
Only rank 0 writes the run directory, logs to its file, and saves checkpoints; all ranks
use the run directory rank 0 chose.

Models that do not fit one device: `trainer.strategy=fsdp` shards the parameters, gradients
and optimizer state over the ranks instead of replicating them (FSDP2's `fully_shard`,
engine/fsdp.py), with sharded `last/` checkpoints (torch.distributed.checkpoint) that resume
on any number of ranks, and a full `best/` that every single-process command reads.
"""

from __future__ import annotations

import os
import sys
import time

# Set once this process has created a process group: its gloo worker threads then outlive
# destroy_process_group, and the process must end without interpreter finalization
# (launch.end_process).
group_created = False


def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not launched by it."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return world()[1] > 1


def adopt_submitit_tasks() -> bool:
    """Inside a submitit job of several tasks (`hydra.launcher.nodes`/`tasks_per_node` on
    submitit_slurm or submitit_local), make the tasks one torch.distributed world: export the
    RANK, WORLD_SIZE, MASTER_ADDR/PORT and LOCAL_RANK that torchrun would have set (the
    first task's host is the rendezvous). Ranks above 0 then log warnings only and write no
    log file. A job of one task, or a process started by torchrun, is left alone."""
    if "RANK" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return False
    import submitit

    if submitit.JobEnvironment().num_tasks < 2:
        return False
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if world()[0] > 0:
        import logging

        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
        logging.getLogger("bigmodel").setLevel(logging.WARNING)
    return True


def init() -> None:
    """Initialise the default process group once (CPU tensors on gloo, CUDA ones on NCCL).
    Without torchrun: a group of this process alone (FSDP over one rank)."""
    import torch
    import torch.distributed as dist

    global group_created
    if dist.is_initialized():
        return
    group_created = True
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if is_distributed() or "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend=backend)
    else:
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    if torch.cuda.is_available():
        # Modulo: where the scheduler already shows each task only its own GPU (SLURM's
        # per-task GPU binding), local rank 3 must use device 0, not fail.
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())


def shutdown() -> None:
    """Destroy the process group at the end of a job, on every rank and every ending. This
    does not stop gloo's worker threads (FSDP's device mesh still holds the group); ending
    such a process is launch.end_process's job."""
    dist = sys.modules.get("torch.distributed")  # a job that never imported it has no group
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shared_timestamp() -> str:
    """The date/time of rank 0, given to every rank: one run directory for all of them."""
    import torch.distributed as dist

    init()
    return broadcast(time.strftime("%Y-%m-%d/%H-%M-%S") if dist.get_rank() == 0 else None)


def cli_overrides(command: str, args: list[str]) -> list[str]:
    """Extra Hydra overrides for this rank: the shared run directory; ranks above 0 write no
    .hydra/ files, no log file, and print warnings only."""
    if not is_distributed() or "-m" in args or "--multirun" in args:
        return []
    extra = []
    if not any(a.startswith("hydra.run.dir=") for a in args):
        extra.append(f"hydra.run.dir=outputs/{command}/{shared_timestamp()}")
    if world()[0] > 0:
        extra += ["hydra.output_subdir=null", "hydra.job_logging.root.handlers=[console]",
                  "hydra.job_logging.root.level=WARNING",
                  "hydra.job_logging.loggers.bigmodel.level=WARNING"]
    return extra


def broadcast(value):
    """Rank 0's `value` (any picklable object), on every rank."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(value) -> list:
    """Every rank's `value`, in rank order, on every rank."""
    import torch.distributed as dist

    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def all_reduce_max(values: list[float]) -> list[float]:
    """Element-wise max over ranks (used for stop flags that every rank must agree on)."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def all_reduce_sum(values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
