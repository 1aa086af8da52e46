"""Splitting rows, the same way for every data kind: seeded partitions (stratified by label
when there are labels), validation hold-outs, and exact-size subsets.

Every function works on row positions, so each kind applies the result to its own storage
(a `datasets.Dataset`, a pandas frame, arrays of images). Labels are any array of hashable
keys (class ids or names); `labels=None` means unlabeled (or regression) rows, split at random.
"""

from __future__ import annotations

import numpy as np


def partition(rows: int, fractions: list[float], seed: int,
              labels: np.ndarray | None = None) -> list[np.ndarray]:
    """Row positions cut into len(fractions) sorted parts in those proportions, seeded.
    With labels, each class is cut separately (stratified), so every part keeps the
    class balance of the whole."""
    rng = np.random.default_rng(seed)
    bounds = np.cumsum(fractions) / sum(fractions)
    if labels is None:
        order = rng.permutation(rows)
        cuts = np.round(bounds * rows).astype(int)
        return [np.sort(order[a:b]) for a, b in zip([0, *cuts[:-1]], cuts)]
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cuts = np.round(bounds * len(idx)).astype(int)
        for i, (start, stop) in enumerate(zip([0, *cuts[:-1]], cuts)):
            parts[i].append(idx[start:stop])
    return [np.sort(np.concatenate(p)) for p in parts]


def holdout(rows: int, fraction: float, seed: int,
            labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out): `fraction` of the rows held out (as validation), seeded."""
    keep, held = partition(rows, [1 - fraction, fraction], seed, labels)
    return keep, held


def sample(rows: int, n: int | None, seed: int, labels: np.ndarray | None = None) -> np.ndarray | None:
    """Exactly n sorted row positions, seeded; None when n is None or covers every row.
    With labels, each class gets its share (largest remainders), so a subset of a
    balanced dataset stays balanced."""
    if n is None or n >= rows:
        return None
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.permutation(rows)[:n])
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / rows
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k]
                                   for c, k in zip(classes, take)]))
