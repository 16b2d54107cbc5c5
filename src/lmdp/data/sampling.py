"""Batch sampling: Poisson sampling for DP training, shuffled batches otherwise."""

from __future__ import annotations

from typing import Iterator

import torch


def poisson_batches(
    n_samples: int, *, sample_rate: float, steps: int, generator: torch.Generator, start_step: int = 0
) -> Iterator[torch.Tensor]:
    """Yield ``steps - start_step`` index tensors, each record included independently with probability q.

    Poisson sampling is what the subsampled-Gaussian accountants assume: a
    batch may be empty, and it still counts as a step. ``start_step`` skips
    nothing by itself; a resumed run restores ``generator``'s state instead.
    """
    for _ in range(start_step, steps):
        mask = torch.rand(n_samples, generator=generator) < sample_rate
        yield torch.nonzero(mask, as_tuple=False).flatten()


def shuffled_batches(
    n_samples: int, *, batch_size: int, steps: int, generator: torch.Generator, start_step: int = 0
) -> Iterator[torch.Tensor]:
    """Yield fixed-size batches from successive random permutations (non-private training)."""
    permutation = torch.randperm(n_samples, generator=generator)
    position = 0
    for _ in range(start_step, steps):
        if position + batch_size > n_samples:
            permutation = torch.randperm(n_samples, generator=generator)
            position = 0
        yield permutation[position : position + batch_size]
        position += batch_size


def physical_batches(indices: torch.Tensor, max_physical_batch_size: int) -> list[torch.Tensor]:
    """Split one logical batch into chunks of at most ``max_physical_batch_size`` records."""
    return list(torch.split(indices, max_physical_batch_size)) if len(indices) else []
