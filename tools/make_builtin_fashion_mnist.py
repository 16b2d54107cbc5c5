"""Build the Fashion-MNIST subset that ships in src/lmdp/data/builtin/.

Reads the four IDX files of the Debian package ``dataset-fashion-mnist``,
pools the 60,000 train and 10,000 test images (train first), drops exact
duplicate images, and draws the same number of images from every class with
``numpy.random.default_rng(seed)``. It writes two files:

- ``fashion_mnist_subset.npz`` with ``images`` (uint8, n × 28 × 28), ``labels``
  (uint8) and ``pool_index`` (int32, the position of each image in the pool),
  sorted by ``pool_index``. Zip entries get a fixed timestamp, so a rerun with
  the same numpy and zlib versions writes the same bytes.
- ``FASHION_MNIST_LICENSE.txt`` with the MIT licence of Fashion-MNIST and a
  paragraph on how the subset was made.

Usage: python tools/make_builtin_fashion_mnist.py [--source DIR] [--per-class N] [--seed S]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np

from lmdp.data import readers, sources

OUTPUT_DIR = Path(__file__).resolve().parent.parent / "src" / "lmdp" / "data" / "builtin"
SUBSET_FILE = "fashion_mnist_subset.npz"
LICENSE_FILE = "FASHION_MNIST_LICENSE.txt"
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold
MAX_FILE_BYTES = 4 * 1024 * 1024

MIT_LICENSE = """\
The MIT License (MIT)

Copyright (c) 2017 Zalando SE

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=sources.DEBIAN_FASHION_MNIST_DIR, help="folder with the IDX files")
    parser.add_argument("--per-class", type=int, default=800, help="images drawn from each of the 10 classes")
    parser.add_argument("--seed", type=int, default=2017, help="seed of numpy.random.default_rng for the draw")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR, help="folder to write the two files to")
    args = parser.parse_args(argv)

    images, labels, train_count = read_pool(args.source)
    pool_index = draw_per_class(images, labels, per_class=args.per_class, seed=args.seed)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    subset_path = args.output_dir / SUBSET_FILE
    write_npz(
        subset_path,
        images=images[pool_index],
        labels=labels[pool_index].astype(np.uint8),
        pool_index=pool_index.astype(np.int32),
    )
    size = subset_path.stat().st_size
    (args.output_dir / LICENSE_FILE).write_text(
        license_text(args.source, pool_size=len(images), train_count=train_count, count=len(pool_index),
                     per_class=args.per_class, seed=args.seed),
        encoding="utf-8",
    )

    print(f"wrote {subset_path}: {len(pool_index)} images, {size} bytes")
    if size > MAX_FILE_BYTES:
        print(f"error: {subset_path} is over {MAX_FILE_BYTES} bytes; lower --per-class", file=sys.stderr)
        return 1
    return 0


def read_pool(folder: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Return the train then test images (uint8, n × 28 × 28), their labels and the number of train images."""
    files = sources.find_idx_files(folder, "Install them with `apt-get install dataset-fashion-mnist`.")
    train_images = readers.read_idx(files["train_images"])
    images = np.concatenate([train_images, readers.read_idx(files["test_images"])])
    labels = np.concatenate([readers.read_idx(files["train_labels"]), readers.read_idx(files["test_labels"])])
    return images, labels, len(train_images)


def draw_per_class(images: np.ndarray, labels: np.ndarray, *, per_class: int, seed: int) -> np.ndarray:
    """Return the sorted pool positions of ``per_class`` distinct images per class, drawn without replacement."""
    _, first_occurrences = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    distinct = np.zeros(len(images), dtype=bool)
    distinct[first_occurrences] = True

    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(int(labels.max()) + 1):
        candidates = np.flatnonzero((labels == label) & distinct)
        if candidates.size < per_class:
            raise SystemExit(f"class {label} has only {candidates.size} distinct images, fewer than --per-class {per_class}")
        chosen.append(rng.choice(candidates, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` as a compressed .npz whose zip entries have a fixed timestamp."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_TIMESTAMP)
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)


def license_text(source: Path, *, pool_size: int, train_count: int, count: int, per_class: int, seed: int) -> str:
    """Return the licence notice, preceded by a paragraph on how the subset was made."""
    provenance = (
        f"{SUBSET_FILE} contains {count:,} images of Fashion-MNIST "
        "(https://github.com/zalandoresearch/fashion-mnist), "
        f"{per_class} per class, drawn with numpy.random.default_rng({seed}) from the {pool_size:,} pooled train "
        f"and test images after dropping exact duplicates. tools/make_builtin_fashion_mnist.py made it from the "
        f"IDX files in {source} ({debian_package_version()}). Its pool_index array gives each image's position "
        f"in that pool: train images 0-{train_count - 1}, then test images {train_count}-{pool_size - 1}."
    )
    return (
        f"{textwrap.fill(provenance, width=79)}\n\n"
        f"Fashion-MNIST is distributed under the following licence.\n\n{MIT_LICENSE}"
    )


def debian_package_version() -> str:
    """Return ``dataset-fashion-mnist <version>`` from dpkg, or a note that the version is unknown."""
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "dataset-fashion-mnist"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "Debian package version unknown"
    return f"Debian package dataset-fashion-mnist {result.stdout.strip()}"


if __name__ == "__main__":
    raise SystemExit(main())
