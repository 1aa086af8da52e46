"""Batches of encoded texts, held in memory as tensors (see BatchSource for the protocol).

With `bucket_by_length`, each epoch shuffles the rows, sorts them by length within pools of
`pool_batches` batches, and shuffles the resulting batches: texts in a batch have similar
lengths, so trimming each batch to its longest text removes most padding.
"""

from __future__ import annotations

import numpy as np
import torch

from bigmodel_cli.data.batch_source import BatchSource
from bigmodel_cli.data.text import EncodedSplit


class TextBatches(BatchSource):
    def __init__(self, data: EncodedSplit, batch_size: int, *, shuffle: bool, seed: int = 0,
                 bucket_by_length: bool = True, pool_batches: int = 50,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__(len(data), batch_size, shuffle=shuffle, seed=seed, rank=rank,
                         world_size=world_size)
        self.data = data
        self.bucket_by_length = bucket_by_length
        self.pool_batches = pool_batches

    def batch_order(self) -> list[np.ndarray]:
        if not self.bucket_by_length:
            return super().batch_order()
        lengths = self.data.lengths.numpy()
        if not self.shuffle:  # evaluation: sort by length, keep a stable order
            return self.cut(np.argsort(lengths, kind="stable"))
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(self.rows)
        pool = self.batch_size * self.pool_batches
        order = np.concatenate([
            chunk[np.argsort(lengths[chunk], kind="stable")]
            for chunk in (order[i:i + pool] for i in range(0, self.rows, pool))
        ])
        batches = self.cut(order)
        return [batches[i] for i in rng.permutation(len(batches))]

    def batch(self, index: np.ndarray) -> dict[str, torch.Tensor]:
        idx = torch.from_numpy(index)
        lengths = self.data.lengths[idx]
        width = max(1, int(lengths.max()))
        batch = {"index": idx, "input_ids": self.data.input_ids[idx, :width], "lengths": lengths}
        if self.data.labels is not None:
            batch["labels"] = self.data.labels[idx]
        return batch
