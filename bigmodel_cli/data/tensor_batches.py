"""Batches of rows of in-memory tensors (images, tabular features): every batch has
"index" and the same rows of each column (see BatchSource for the protocol)."""

from __future__ import annotations

import numpy as np
import torch

from bigmodel_cli.data.batch_source import BatchSource


class TensorBatches(BatchSource):
    def __init__(self, columns: dict[str, torch.Tensor], batch_size: int, *, shuffle: bool,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        sizes = {name: int(t.shape[0]) for name, t in columns.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"columns of different lengths: {sizes}")
        super().__init__(next(iter(sizes.values()), 0), batch_size, shuffle=shuffle, seed=seed,
                         rank=rank, world_size=world_size)
        self.columns = columns

    def batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        idx = torch.from_numpy(np.ascontiguousarray(index))
        return {"index": idx, **{name: t[idx] for name, t in self.columns.items()}}


def batches_factory(ctx):
    """Prepared.make_batches for data held as named tensor columns (`data.columns()`):
    shuffled per epoch (seeded) and sliced per rank in training, in order for evaluation."""
    def make(data, batch_size: int, train: bool):
        return TensorBatches(data.columns(), batch_size, shuffle=train, seed=ctx.seed,
                             rank=ctx.rank if train else 0,
                             world_size=ctx.world_size if train else 1)
    return make
