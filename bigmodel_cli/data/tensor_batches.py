"""Batches of rows of in-memory tensors (images, tabular features), with the batch-source
protocol of the engine: a seeded order per epoch (`set_epoch`), `iter_from(start)`,
`__len__` (batches per epoch), `num_samples`, and rank slicing under torchrun.

Every batch is a dict with "index" (the rows it holds) and the same rows of each column.
No DataLoader worker processes: indexing tensors in memory is faster than sending them
between processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class TensorBatches:
    def __init__(self, columns: dict[str, torch.Tensor], batch_size: int, *, shuffle: bool,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        sizes = {name: int(t.shape[0]) for name, t in columns.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"columns of different lengths: {sizes}")
        self.columns = columns
        self.rows = next(iter(sizes.values()), 0)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = rank, world_size  # distributed: this rank's slice
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Each epoch gets its own (seeded) order."""
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.rows + self.batch_size - 1) // self.batch_size

    @property
    def num_samples(self) -> int:
        return self.rows

    def batch_order(self) -> list[np.ndarray]:
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.rows)
        else:
            order = np.arange(self.rows)
        return [order[i:i + self.batch_size] for i in range(0, self.rows, self.batch_size)]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[dict[str, torch.Tensor]]:
        """This epoch's batches from the `start`-th on (a resumed run skips what it trained on)."""
        for index in self.batch_order()[start:]:
            yield self.batch(index[self.rank::self.world_size])

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
