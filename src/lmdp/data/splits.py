"""Disjoint, label-stratified splits: the experiment's four parts and the shadow model's halves.

Duplicate records (same features and label) are dropped before any split, keeping
the first occurrence. Otherwise a copy of a member could land among the non-members
or the public data, and membership would be mislabelled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from lmdp.data._stratify import stratified_partition
from lmdp.data.dataset import ArrayDataset
from lmdp.errors import ConfigError

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("public", "members", "non_members", "test")


@dataclass(frozen=True, eq=False)
class ExperimentSplits:
    """The four disjoint parts of one experiment's data pool.

    Attributes:
        public: records the defender may treat as public. They train and
            attack the shadow model that sets the layer weights, and the
            target never trains on them.
        members: the target's private training set (D_in).
        non_members: private records from the same distribution that the
            target never trains on (D_out), for the audit.
        test: records for measuring the target's accuracy (D_test).
    """

    public: ArrayDataset
    members: ArrayDataset
    non_members: ArrayDataset
    test: ArrayDataset

    def fingerprints(self) -> dict[str, str]:
        """Return the SHA-256 content fingerprint of each part, keyed by ``SPLIT_NAMES``."""
        return {split: getattr(self, split).fingerprint() for split in SPLIT_NAMES}


def split_experiment(
    dataset: ArrayDataset,
    *,
    seed: int,
    n_public: int,
    n_members: int,
    n_non_members: int,
    n_test: int,
) -> ExperimentSplits:
    """Draw the public, member, non-member and test parts from ``dataset``.

    The parts are disjoint as records, not only as indices, because duplicates
    are dropped first. Each part has the label proportions of the pool up to
    rounding. The same dataset and seed give the same parts.

    Raises:
        ConfigError: for a size below 1, a negative seed, or sizes that add up
            to more than the distinct records of ``dataset``.
    """
    _check_seed(seed)
    sizes = {"n_public": n_public, "n_members": n_members, "n_non_members": n_non_members, "n_test": n_test}
    for parameter, size in sizes.items():
        _check_size(parameter, size)
    distinct = _distinct_record_indices(dataset)
    total = sum(sizes.values())
    if total > distinct.size:
        raise ConfigError(
            f"{' + '.join(sizes)} = {' + '.join(str(size) for size in sizes.values())} = {total} exceeds the "
            f"{_describe_pool(dataset, distinct)}; lower the sizes or load a larger dataset"
        )

    rng = np.random.default_rng(seed)
    parts = stratified_partition(dataset.y[distinct], list(sizes.values()), rng)
    subsets = {
        split: dataset.subset(distinct[part], name=f"{dataset.name}/{split}") for split, part in zip(SPLIT_NAMES, parts)
    }
    return ExperimentSplits(**subsets)


def split_shadow(public: ArrayDataset, *, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Split public data into the shadow model's members and non-members and return ``(members, non_members)``.

    Both halves have ``n // 2`` records, where n counts the distinct records,
    so one record is left out when n is odd. The halves are disjoint, have the
    label proportions of ``public`` up to rounding, and are fixed by ``seed``.

    Raises:
        ConfigError: for a negative seed, or fewer than 2 distinct records.
    """
    _check_seed(seed)
    distinct = _distinct_record_indices(public)
    half = distinct.size // 2
    if half < 1:
        raise ConfigError(
            f"split_shadow needs at least 2 distinct records, but {public.name!r} has {distinct.size}; "
            "raise n_public"
        )

    rng = np.random.default_rng(seed)
    members, non_members = stratified_partition(public.y[distinct], [half, half], rng)
    return (
        public.subset(distinct[members], name=f"{public.name}/shadow_members"),
        public.subset(distinct[non_members], name=f"{public.name}/shadow_non_members"),
    )


def _distinct_record_indices(dataset: ArrayDataset) -> np.ndarray:
    """Return the sorted index of the first occurrence of every distinct record."""
    fingerprints = np.asarray(dataset.record_fingerprints())
    _, first_indices = np.unique(fingerprints, return_index=True)
    duplicates = len(dataset) - first_indices.size
    if duplicates:
        logger.info("dataset %s: dropped %d duplicate records before splitting", dataset.name, duplicates)
    return np.sort(first_indices)


def _describe_pool(dataset: ArrayDataset, distinct: np.ndarray) -> str:
    duplicates = len(dataset) - distinct.size
    description = f"{distinct.size} distinct records of dataset {dataset.name!r}"
    if duplicates:
        description += f" ({len(dataset)} records, of which {duplicates} duplicates were dropped)"
    return description


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


def _check_size(parameter: str, size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ConfigError(f"{parameter} must be a positive integer, got {size!r}")
