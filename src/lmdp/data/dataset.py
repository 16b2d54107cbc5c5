"""The immutable in-memory dataset record and its content fingerprints."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Fixed byte orders for hashing, so that fingerprints agree across machines.
_X_HASH_DTYPE = np.dtype("<f4")
_Y_HASH_DTYPE = np.dtype("<i8")
_RECORD_DIGEST_SIZE = 8  # bytes, so 16 hex characters per record


class DatasetError(ValueError):
    """Dataset contents that break the record's contract: labels, shapes, non-finite values, file formats."""


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A labelled dataset held in memory, validated once when it is built.

    Attributes:
        name: short name used in logs and result files, e.g. ``"fashion-mnist-builtin/members"``.
        x: float32 features of shape ``(n_samples, *input_shape)``. Images are
            ``(channels, height, width)`` scaled to [0, 1]; tabular features are
            standardized columns.
        y: int64 class labels of shape ``(n_samples,)``, each in ``0 .. num_classes - 1``.
        num_classes: number of classes of the task. A subset keeps the number
            of its parent, even when some classes have no record in it.
        source: where the records were read from (a path or a package name).
        class_names: the name of each class label, or ``()`` when unknown.

    Both arrays are stored read-only. The record copies an input array only to
    change its dtype or memory layout and otherwise keeps a read-only view of it,
    so callers must not modify an array after passing it in.
    Equality is identity; compare contents with ``fingerprint()``.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int
    source: str
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DatasetError(f"name must be a non-empty string, got {self.name!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, (int, np.integer)):
            raise DatasetError(f"num_classes must be an integer, got {self.num_classes!r}")
        if self.num_classes < 2:
            raise DatasetError(
                f"dataset {self.name!r} has num_classes={self.num_classes}; a classification task needs at least 2 classes"
            )
        x = _as_features(self.x, self.name)
        y = _as_labels(self.y, self.name)
        _check_lengths(x, y, self.name)
        _check_finite(x, self.name)
        _check_label_range(y, int(self.num_classes), self.name)
        class_names = tuple(str(class_name) for class_name in self.class_names)
        if class_names and len(class_names) != self.num_classes:
            raise DatasetError(
                f"dataset {self.name!r} has {len(class_names)} class names for num_classes={self.num_classes}; "
                "give one name per class or none"
            )

        object.__setattr__(self, "x", _read_only(x))
        object.__setattr__(self, "y", _read_only(y))
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "class_names", class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one record, e.g. ``(1, 28, 28)`` for Fashion-MNIST."""
        return tuple(int(size) for size in self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray, *, name: str | None = None) -> ArrayDataset:
        """Return the records at ``indices``, in that order, as a new dataset.

        The subset keeps ``num_classes``, ``source`` and ``class_names``, and
        takes the parent's name unless ``name`` is given.
        """
        index_array = np.asarray(indices)
        if index_array.ndim != 1 or not (index_array.size == 0 or np.issubdtype(index_array.dtype, np.integer)):
            raise DatasetError(
                f"subset indices must be a 1-D sequence of integers, got an array of dtype {index_array.dtype} "
                f"and shape {index_array.shape}; convert a boolean mask with np.flatnonzero(mask)"
            )
        index_array = index_array.astype(np.int64, copy=False)
        if index_array.size and (index_array.min() < 0 or index_array.max() >= len(self)):
            raise DatasetError(
                f"subset indices must be in 0 .. {len(self) - 1} for dataset {self.name!r}, "
                f"got values from {index_array.min()} to {index_array.max()}"
            )
        return ArrayDataset(
            name=self.name if name is None else name,
            x=self.x[index_array],
            y=self.y[index_array],
            num_classes=self.num_classes,
            source=self.source,
            class_names=self.class_names,
        )

    def fingerprint(self) -> str:
        """Return the SHA-256 hex digest of the record shape, ``num_classes``, ``x`` and ``y``.

        The name and source are left out, so the same records read from two
        places have the same fingerprint. Record order is included.
        """
        digest = hashlib.sha256()
        digest.update(b"lmdp.ArrayDataset.v1")
        digest.update(repr((self.input_shape, self.num_classes, len(self))).encode("ascii"))
        digest.update(np.ascontiguousarray(self.x, dtype=_X_HASH_DTYPE).tobytes())
        digest.update(np.ascontiguousarray(self.y, dtype=_Y_HASH_DTYPE).tobytes())
        return digest.hexdigest()

    def record_fingerprints(self) -> tuple[str, ...]:
        """Return one 16-hex-character BLAKE2b digest per record, over its features and label.

        The digest depends only on the record shape, the float32 feature bytes
        and the label, so it is the same in every process and on every machine.
        Two records collide only if they are identical (or, with probability
        about n² / 2⁶⁵, by chance), which makes the digests a test for overlap
        between datasets, e.g. public shadow data and private members.
        """
        shape_prefix = repr(self.input_shape).encode("ascii")
        features = np.ascontiguousarray(self.x, dtype=_X_HASH_DTYPE).reshape(len(self), -1)
        labels = np.ascontiguousarray(self.y, dtype=_Y_HASH_DTYPE)
        fingerprints = []
        for row, label in zip(features, labels):
            digest = hashlib.blake2b(shape_prefix, digest_size=_RECORD_DIGEST_SIZE)
            digest.update(label.tobytes())
            digest.update(row.tobytes())
            fingerprints.append(digest.hexdigest())
        return tuple(fingerprints)


def count_shared_records(first: ArrayDataset, second: ArrayDataset) -> int:
    """Count the distinct records (features and label) that occur in both datasets."""
    return len(set(first.record_fingerprints()) & set(second.record_fingerprints()))


def _as_features(x: object, name: str) -> np.ndarray:
    array = np.asarray(x)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DatasetError(f"dataset {name!r}: x must be numeric, got dtype {array.dtype}")
    if array.ndim < 2:
        raise DatasetError(
            f"dataset {name!r}: x must have shape (n_samples, *input_shape), got shape {array.shape}; "
            "reshape a single feature column to (n_samples, 1)"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def _as_labels(y: object, name: str) -> np.ndarray:
    array = np.asarray(y)
    if array.ndim != 1:
        raise DatasetError(f"dataset {name!r}: y must have shape (n_samples,), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise DatasetError(
            f"dataset {name!r}: y must hold integer class labels, got dtype {array.dtype}; "
            "map other labels with lmdp.data.encode_labels"
        )
    return np.ascontiguousarray(array, dtype=np.int64)


def _check_lengths(x: np.ndarray, y: np.ndarray, name: str) -> None:
    if x.shape[0] != y.shape[0]:
        raise DatasetError(
            f"dataset {name!r}: x has {x.shape[0]} records but y has {y.shape[0]} labels; they must have the same length"
        )
    if x.shape[0] == 0:
        raise DatasetError(f"dataset {name!r} is empty; it needs at least one record")


def _check_finite(x: np.ndarray, name: str) -> None:
    finite = np.isfinite(x)
    if finite.all():
        return
    bad_records = np.flatnonzero(~finite.reshape(x.shape[0], -1).all(axis=1))
    raise DatasetError(
        f"dataset {name!r}: x has {int((~finite).sum())} NaN or infinite values in {bad_records.size} records "
        f"(first record index {bad_records[0]}); remove or impute them before loading"
    )


def _check_label_range(y: np.ndarray, num_classes: int, name: str) -> None:
    outside = (y < 0) | (y >= num_classes)
    if not outside.any():
        return
    bad_values = np.unique(y[outside])[:5].tolist()
    raise DatasetError(
        f"dataset {name!r}: labels must be in 0 .. {num_classes - 1} for num_classes={num_classes}, "
        f"got {int(outside.sum())} labels outside that range, e.g. {bad_values}; "
        "map other labels with lmdp.data.encode_labels"
    )


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view
