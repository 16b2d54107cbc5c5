"""Conversions from raw arrays to the record conventions: class codes, [0, 1] images, standardized columns."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lmdp.data.dataset import DatasetError

_IMAGE_CHANNELS = (1, 3)


def encode_labels(values: Sequence[object] | np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map raw labels to class codes ``0 .. K-1`` and return the codes and the class names.

    Rule: integer labels whose distinct values are exactly ``0 .. K-1`` are
    kept as they are. Otherwise the distinct values are sorted (numerically
    when every label is an integer, as text otherwise) and the i-th smallest
    becomes class i. Labels such as ``"3"`` or ``3.0`` count as the integer 3.
    The class names are the original values as text, in code order.

    Raises:
        DatasetError: for non-integer numbers such as 0.5, which are regression
            targets rather than classes, or for missing values.
    """
    raw = np.asarray(values)
    if raw.ndim != 1:
        raise DatasetError(f"labels must be one-dimensional, got shape {raw.shape}")
    if raw.size == 0:
        return np.zeros(0, dtype=np.int64), ()
    integers = _as_integer_labels(raw)
    if integers is not None:
        # Sorted ranks leave labels that are already 0 .. K-1 unchanged.
        distinct = np.unique(integers)
        codes = np.searchsorted(distinct, integers).astype(np.int64)
        return codes, tuple(str(value) for value in distinct.tolist())

    if np.issubdtype(raw.dtype, np.number):
        example = raw[~np.isfinite(raw) | (raw != np.round(raw))][0]
        raise DatasetError(
            f"labels must be integer class labels, got the value {example.item()!r}; "
            "drop records with missing labels, and bin a numeric target into classes first"
        )
    text = np.array([str(value).strip() for value in raw.tolist()], dtype=object)
    if any(value == "" for value in text):
        raise DatasetError(f"labels contain {sum(value == '' for value in text)} empty values; drop or fill those records")
    distinct_text = sorted(set(text.tolist()))
    lookup = {value: code for code, value in enumerate(distinct_text)}
    codes = np.fromiter((lookup[value] for value in text), dtype=np.int64, count=text.size)
    return codes, tuple(distinct_text)


def _as_integer_labels(raw: np.ndarray) -> np.ndarray | None:
    """Return the labels as int64 when every one is an integer value, else None."""
    if np.issubdtype(raw.dtype, np.integer):
        return raw.astype(np.int64)
    if np.issubdtype(raw.dtype, np.bool_):
        return raw.astype(np.int64)
    if np.issubdtype(raw.dtype, np.floating):
        if raw.size and np.isfinite(raw).all() and (raw == np.round(raw)).all():
            return raw.astype(np.int64)
        return None
    parsed = []
    for value in raw.tolist():
        try:
            number = float(str(value).strip())
        except ValueError:
            return None
        if not np.isfinite(number) or number != round(number):
            return None
        parsed.append(int(number))
    return np.asarray(parsed, dtype=np.int64)


def images_to_unit_range(images: np.ndarray, *, source: str) -> np.ndarray:
    """Convert images to float32 ``(n_samples, channels, height, width)`` in [0, 1].

    Accepts ``(n, height, width)`` (one channel added), channels-first
    ``(n, C, H, W)`` and channels-last ``(n, H, W, C)`` with C = 1 or 3. When
    both the second and the last axis could be the channel axis, the second
    one is. Integer images must be in 0..255 and are divided by 255. Float
    images must already be in [0, 1]. ``source`` names the data in error messages.
    """
    if images.ndim == 3:
        images = images[:, np.newaxis]
    elif images.ndim == 4:
        if images.shape[1] not in _IMAGE_CHANNELS:
            if images.shape[3] not in _IMAGE_CHANNELS:
                raise DatasetError(
                    f"{source}: cannot find the channel axis of images with shape {images.shape}; "
                    f"store them as (n, C, H, W) or (n, H, W, C) with C in {_IMAGE_CHANNELS}"
                )
            images = images.transpose(0, 3, 1, 2)
    else:
        raise DatasetError(
            f"{source}: images must have shape (n, H, W), (n, C, H, W) or (n, H, W, C), got shape {images.shape}"
        )

    if np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.bool_):
        if images.size and (images.min() < 0 or images.max() > 255):
            raise DatasetError(
                f"{source}: integer images must be in 0..255, got values from {images.min()} to {images.max()}"
            )
        return np.ascontiguousarray(images, dtype=np.float32) / np.float32(255.0)
    if not np.issubdtype(images.dtype, np.floating):
        raise DatasetError(f"{source}: images must be numeric, got dtype {images.dtype}")
    finite = images[np.isfinite(images)]
    if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
        raise DatasetError(
            f"{source}: float images must be scaled to [0, 1], got values from {finite.min():g} to {finite.max():g}; "
            "divide by the maximum pixel value (e.g. 255) before saving"
        )
    return np.ascontiguousarray(images, dtype=np.float32)


def standardize_columns(features: np.ndarray, *, source: str) -> np.ndarray:
    """Return float32 columns shifted to mean 0 and scaled to standard deviation 1.

    Constant columns are only shifted. The statistics come from all rows given,
    so call this on the whole pool before splitting. ``source`` names the data in
    error messages.
    """
    if not (np.issubdtype(features.dtype, np.number) or np.issubdtype(features.dtype, np.bool_)):
        raise DatasetError(f"{source}: features must be numeric, got dtype {features.dtype}")
    columns = np.asarray(features, dtype=np.float64)
    # Checked here because one NaN would turn its whole column into NaN.
    bad_rows = np.flatnonzero(~np.isfinite(columns).all(axis=1))
    if bad_rows.size:
        raise DatasetError(
            f"{source}: features have NaN or infinite values in {bad_rows.size} records "
            f"(first record index {bad_rows[0]}); remove or impute them before loading"
        )

    # NOTE: the mean and standard deviation use every record, private members
    # included, so they fall outside the DP guarantee. Standardize with
    # statistics of public data before loading where that matters.
    mean = columns.mean(axis=0)
    scale = columns.std(axis=0)
    scale[scale == 0.0] = 1.0
    return ((columns - mean) / scale).astype(np.float32)


def one_hot(values: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Encode text values as float32 one-hot columns, one per distinct value in sorted order.

    Returns the ``(n_samples, n_categories)`` matrix and the categories.
    """
    categories = tuple(sorted(set(values)))
    lookup = {category: index for index, category in enumerate(categories)}
    matrix = np.zeros((len(values), len(categories)), dtype=np.float32)
    matrix[np.arange(len(values)), [lookup[value] for value in values]] = 1.0
    return matrix, categories
