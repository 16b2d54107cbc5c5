"""Label-stratified partitions of record indices, shared by the splits and ``max_records``."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def allocate_per_class(class_counts: np.ndarray, n_draws: int) -> np.ndarray:
    """Split ``n_draws`` over classes in proportion to ``class_counts`` by the largest-remainder method.

    Requires ``n_draws <= class_counts.sum()``. No class gets more than its count,
    and ties in the remainders go to the lower class index.
    """
    total = int(class_counts.sum())
    if total == 0:
        return np.zeros_like(class_counts)
    scaled = class_counts.astype(np.int64) * n_draws
    counts = scaled // total
    remainders = scaled % total
    shortfall = n_draws - int(counts.sum())
    counts[np.argsort(-remainders, kind="stable")[:shortfall]] += 1
    return counts


def stratified_partition(labels: np.ndarray, sizes: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Draw disjoint index sets of the given sizes, each with the label proportions of ``labels``.

    Requires ``sum(sizes) <= len(labels)``. Each part takes from every class in
    proportion to what the earlier parts left, rounded by the largest-remainder
    method, so its label proportions match the pool's up to rounding. Indices
    in each part are sorted.
    """
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == label)) for label in classes]
    remaining = np.array([pool.size for pool in pools], dtype=np.int64)
    drawn = np.zeros_like(remaining)

    parts = []
    for size in sizes:
        per_class = allocate_per_class(remaining, size)
        chosen = [pool[start : start + count] for pool, start, count in zip(pools, drawn, per_class)]
        parts.append(np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64))
        drawn += per_class
        remaining -= per_class
    return parts
