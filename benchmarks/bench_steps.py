"""Step time and peak memory of nonprivate, Opacus DP-SGD and lmdpsgd training (hooks and ghost modes).

A thin runner for ``lmdp bench``, which the installed package provides; the
measurement code is ``lmdp.bench``. Every option of ``lmdp bench`` works here.

Run: python benchmarks/bench_steps.py [--quick] [--threads N] [--out DIR]
"""

import sys

from lmdp.cli import main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]], prog_name="bench_steps.py")
