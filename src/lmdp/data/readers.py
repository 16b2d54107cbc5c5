"""Parsers for on-disk dataset formats: IDX, CIFAR python batches, CSV (generic and UCI Adult) and npz.

Each reader returns plain numpy arrays and raises ``DatasetError`` naming the
file and what is wrong with it. Turning arrays into an ``ArrayDataset`` is left
to ``lmdp.data.loading``.
"""

from __future__ import annotations

import csv
import gzip
import math
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmdp.data.dataset import DatasetError

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type codes (third byte of the magic number), from the format description
# published with MNIST. Multi-byte values are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed, detected from its first bytes) into an array.

    Returns an array in native byte order with the shape stored in the header.
    """
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(
            f"{path} is not an IDX file: its magic number {raw[:4].hex() or '(empty file)'} should be "
            "two zero bytes, a type code in " + ", ".join(f"0x{code:02x}" for code in _IDX_DTYPES) + " and the rank"
        )
    dtype = _IDX_DTYPES[raw[2]]
    rank = raw[3]
    header_size = 4 + 4 * rank
    if len(raw) < header_size:
        raise DatasetError(f"{path}: the IDX header declares {rank} dimensions but the file ends after {len(raw)} bytes")
    shape = struct.unpack(f">{rank}I", raw[4:header_size])
    count = math.prod(shape)
    expected_size = header_size + count * dtype.itemsize
    if len(raw) != expected_size:
        raise DatasetError(
            f"{path}: the IDX header declares shape {shape}, which needs {expected_size} bytes, "
            f"but the file has {len(raw)}; the file is truncated or not an IDX file"
        )
    values = np.frombuffer(raw, dtype=dtype, count=count, offset=header_size).reshape(shape)
    return values.astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise DatasetError(f"{path}: cannot decompress the gzip data ({error}); the file is probably truncated") from error


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds only plain Python data (dicts, lists, strings, numbers) and numpy arrays.

    A pickle can run any code while it loads. The CIFAR batches need nothing
    but the numpy array constructors below, so every other global is rejected.
    """

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"the pickle refers to {module}.{name}, which a CIFAR batch never contains, so it was rejected"
            )
        return super().find_class(module, name)


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch and return ``(images, labels)``.

    Images have shape ``(n_samples, 3, 32, 32)`` and the dtype of the stored
    pixel values, and labels are int64. The batch is a pickled dict with a
    ``data`` array of shape ``(n_samples, 3072)`` (1024 red, then green, then
    blue values, each row-major) and a list of integer labels under
    ``label_key`` (``labels`` for CIFAR-10, ``fine_labels`` for CIFAR-100).
    """
    batch = read_cifar_pickle(path)
    data = np.asarray(_get_key(batch, "data", path))
    labels = np.asarray(_get_key(batch, label_key, path))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: 'data' must have shape (n_samples, 3072), got shape {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DatasetError(
            f"{path}: {label_key!r} must have one label per row of 'data' ({data.shape[0]}), got shape {labels.shape}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{path}: {label_key!r} must contain integer labels, got dtype {labels.dtype}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar_pickle(path: Path) -> dict:
    """Unpickle a CIFAR batch or meta file, allowing only plain data and numpy arrays."""
    try:
        with path.open("rb") as stream:
            # latin1 reads the Python 2 pickles of the original archives, as numpy advises.
            content = _ArrayUnpickler(stream, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise DatasetError(f"{path} is not a readable CIFAR python batch: {error}") from error
    if not isinstance(content, dict):
        raise DatasetError(f"{path} is not a CIFAR python batch: it contains a {type(content).__name__}, not a dict")
    return content


def _get_key(batch: dict, key: str, path: Path) -> object:
    for candidate in (key, key.encode("ascii")):
        if candidate in batch:
            return batch[candidate]
    found = ", ".join(sorted(repr(name) for name in batch))
    raise DatasetError(f"{path}: key {key!r} not found; the batch has keys {found}")


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read arrays ``x`` and ``y`` from an ``.npz`` file, rejecting pickled object arrays."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, pickle.UnpicklingError) as error:
        raise DatasetError(f"{path} is not a readable .npz file: {error}") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetError(
            f"{path} contains a single array, not an .npz archive; save features and labels together "
            "with np.savez(path, x=features, y=labels)"
        )
    with archive:
        missing = [key for key in ("x", "y") if key not in archive.files]
        if missing:
            found = ", ".join(repr(key) for key in archive.files) or "no arrays"
            raise DatasetError(
                f"{path}: array {' and '.join(repr(key) for key in missing)} not found; the file has {found}. "
                "Save features as x and labels as y, e.g. np.savez(path, x=features, y=labels)"
            )
        try:
            return archive["x"], archive["y"]
        except ValueError as error:
            raise DatasetError(
                f"{path}: x and y must be numeric or string arrays, not pickled objects ({error})"
            ) from error


@dataclass(frozen=True)
class CsvTable:
    """Numeric feature columns and raw label values read from a CSV file."""

    features: np.ndarray  # float64, (n_samples, n_features)
    labels: list[str]
    feature_names: tuple[str, ...]


def read_labelled_csv(path: Path, label_column: str) -> CsvTable:
    """Read a CSV file with a header row, numeric feature columns and the label column ``label_column``.

    Blank lines are skipped. Every other column must parse as a finite number.
    """
    rows = _read_csv_rows(path)
    if not rows:
        raise DatasetError(f"{path} is empty; it needs a header row and at least one data row")
    header = [name.strip() for name in rows[0][1]]
    if label_column not in header:
        raise DatasetError(
            f"label_column {label_column!r} is not a column of {path}; its columns are: {', '.join(header)}"
        )
    label_index = header.index(label_column)
    feature_indices = [index for index in range(len(header)) if index != label_index]
    if not feature_indices:
        raise DatasetError(f"{path} has only the label column {label_column!r}; it needs at least one feature column")

    features = np.empty((len(rows) - 1, len(feature_indices)), dtype=np.float64)
    labels = []
    for row_number, (line, row) in enumerate(rows[1:]):
        if len(row) != len(header):
            raise DatasetError(f"{path}, line {line}: expected {len(header)} values as in the header, got {len(row)}")
        labels.append(row[label_index].strip())
        for column, index in enumerate(feature_indices):
            features[row_number, column] = _parse_number(row[index], path, line, header[index])
    return CsvTable(features=features, labels=labels, feature_names=tuple(header[index] for index in feature_indices))


def _read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Return the non-blank rows of a CSV file with their line numbers (counted from 1)."""
    # utf-8-sig drops the byte order mark that spreadsheet programs write.
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.reader(stream)
        return [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]


def _parse_number(cell: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise DatasetError(
            f"{path}, line {line}: column {column!r} must be numeric, got {cell!r}; "
            "encode categorical features as numbers (e.g. one-hot) before loading"
        ) from None
    if not math.isfinite(value):
        raise DatasetError(
            f"{path}, line {line}: column {column!r} has the non-finite value {cell!r}; "
            "remove or impute missing values before loading"
        )
    return value


# UCI Adult columns in file order, with '-' written as '_'. The last one is the label.
ADULT_COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education_num",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
    "income",
)
ADULT_NUMERIC_COLUMNS = ("age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week")
ADULT_CATEGORICAL_COLUMNS = tuple(
    column for column in ADULT_COLUMNS[:-1] if column not in ADULT_NUMERIC_COLUMNS
)
# Names that other copies of Adult use for the label column.
_ADULT_LABEL_ALIASES = ("income", "income_per_year", "class", "salary", "label")
ADULT_CLASSES = ("<=50K", ">50K")


@dataclass(frozen=True)
class AdultRows:
    """Adult rows split into numeric columns, categorical text columns and 0/1 income labels."""

    numeric: np.ndarray  # float64, (n_samples, len(ADULT_NUMERIC_COLUMNS))
    categorical: dict[str, list[str]]  # one list of stripped cells per column of ADULT_CATEGORICAL_COLUMNS
    labels: np.ndarray  # int64, 1 for income >50K


def read_adult_rows(paths: list[Path]) -> AdultRows:
    """Read Adult rows from UCI ``adult.data``/``adult.test`` files or CSV copies with a header.

    A file whose first row starts with ``age`` is read by column name, and
    otherwise its rows must have the 15 UCI columns in order. Lines starting
    with ``|`` (the note at the top of ``adult.test``) and blank lines are
    skipped. Labels may end with ``.``, as in ``adult.test``. Missing
    categorical values (``?`` in the UCI files) are kept as a category of their own.
    """
    numeric: list[list[float]] = []
    categorical: dict[str, list[str]] = {column: [] for column in ADULT_CATEGORICAL_COLUMNS}
    labels: list[int] = []
    for path in paths:
        rows = [(line, row) for line, row in _read_csv_rows(path) if not row[0].lstrip().startswith("|")]
        if not rows:
            raise DatasetError(f"{path} has no Adult rows")
        positions, first_data_row = _adult_column_positions(rows[0][1], path)
        width = len(rows[0][1])
        for line, row in rows[first_data_row:]:
            if len(row) != width:
                raise DatasetError(f"{path}, line {line}: expected {width} values, got {len(row)}")
            numeric.append([_parse_number(row[positions[column]], path, line, column) for column in ADULT_NUMERIC_COLUMNS])
            for column in ADULT_CATEGORICAL_COLUMNS:
                categorical[column].append(row[positions[column]].strip())
            labels.append(_adult_label(row[positions["income"]], path, line))
    return AdultRows(
        numeric=np.asarray(numeric, dtype=np.float64).reshape(len(numeric), len(ADULT_NUMERIC_COLUMNS)),
        categorical=categorical,
        labels=np.asarray(labels, dtype=np.int64),
    )


def _adult_column_positions(first_row: list[str], path: Path) -> tuple[dict[str, int], int]:
    """Return the position of each Adult column and the index of the first data row (1 after a header)."""
    first = [_normalize_column_name(cell) for cell in first_row]
    if first[0] != "age":
        if len(first_row) != len(ADULT_COLUMNS):
            raise DatasetError(
                f"{path}: a file without a header must have the {len(ADULT_COLUMNS)} UCI Adult columns "
                f"({', '.join(ADULT_COLUMNS)}), but its first row has {len(first_row)} values"
            )
        return {column: index for index, column in enumerate(ADULT_COLUMNS)}, 0

    label_names = [name for name in _ADULT_LABEL_ALIASES if name in first]
    missing = [column for column in ADULT_COLUMNS[:-1] if column not in first]
    if missing or not label_names:
        if not label_names:
            missing.append(" or ".join(_ADULT_LABEL_ALIASES))
        raise DatasetError(f"{path}: the header lacks the Adult columns {', '.join(missing)}")
    positions = {column: first.index(column) for column in ADULT_COLUMNS[:-1]}
    positions["income"] = first.index(label_names[0])
    return positions, 1


def _normalize_column_name(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_").replace(".", "_")


def _adult_label(value: str, path: Path, line: int) -> int:
    income = value.strip().rstrip(".").replace(" ", "")
    if income not in ADULT_CLASSES:
        raise DatasetError(
            f"{path}, line {line}: the income label must be one of {', '.join(ADULT_CLASSES)}, got {value!r}"
        )
    return ADULT_CLASSES.index(income)
