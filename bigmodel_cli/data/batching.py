"""Batches of encoded texts, held in memory as tensors.

With `bucket_by_length`, each epoch shuffles the rows, sorts them by length within pools of
`pool_batches` batches, and shuffles the resulting batches: texts in a batch have similar
lengths, so trimming each batch to its longest text removes most padding. No DataLoader
worker processes: slicing tensors in memory is faster than sending them between processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from bigmodel_cli.data.text import EncodedSplit


class TextBatches:
    def __init__(self, data: EncodedSplit, batch_size: int, *, shuffle: bool, seed: int = 0,
                 bucket_by_length: bool = True, pool_batches: int = 50,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_by_length = bucket_by_length
        self.pool_batches = pool_batches
        self.rank, self.world_size = rank, world_size  # distributed: this rank's slice
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Each epoch gets its own (seeded) order."""
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.data) + self.batch_size - 1) // self.batch_size

    @property
    def num_samples(self) -> int:
        return len(self.data)

    def batch_order(self) -> list[np.ndarray]:
        n = len(self.data)
        if not self.shuffle:
            order = np.arange(n)
            if self.bucket_by_length:  # evaluation: sort by length, keep a stable order
                order = np.argsort(self.data.lengths.numpy(), kind="stable")
            return [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(n)
        if self.bucket_by_length:
            lengths = self.data.lengths.numpy()
            pool = self.batch_size * self.pool_batches
            order = np.concatenate([
                chunk[np.argsort(lengths[chunk], kind="stable")]
                for chunk in (order[i:i + pool] for i in range(0, n, pool))
            ])
        batches = [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.bucket_by_length:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[dict[str, torch.Tensor]]:
        """This epoch's batches from the `start`-th on (a resumed run skips what it trained on)."""
        for index in self.batch_order()[start:]:
            yield self.batch(index[self.rank::self.world_size])

    def batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        idx = torch.from_numpy(index)
        lengths = self.data.lengths[idx]
        width = max(1, int(lengths.max()))
        batch = {"index": idx, "input_ids": self.data.input_ids[idx, :width], "lengths": lengths}
        if self.data.labels is not None:
            batch["labels"] = self.data.labels[idx]
        return batch
