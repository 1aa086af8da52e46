"""The batch-source protocol of the engine, shared by every kind of in-memory data.

A batch source has a seeded order per epoch (`set_epoch`), `iter_from(start)` (a resumed
run skips the batches it already trained on), `__len__` (batches per epoch), `num_samples`,
and slices every batch by rank under torchrun. Subclasses say how rows are ordered
(`batch_order`, shuffled or in order by default) and how a batch is cut from the rows
(`batch`). Every batch is a dict of tensors with "index": the rows it holds.
No DataLoader worker processes: indexing tensors in memory is faster than sending them
between processes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import torch


class BatchSource(ABC):
    def __init__(self, rows: int, batch_size: int, *, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.rows = rows
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
        return self.cut(order)

    def cut(self, order: np.ndarray) -> list[np.ndarray]:
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[dict[str, torch.Tensor]]:
        """This epoch's batches from the `start`-th on."""
        for index in self.batch_order()[start:]:
            yield self.batch(index[self.rank::self.world_size])

    @abstractmethod
    def batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch holding these rows (the subclass knows how its rows are stored)."""
