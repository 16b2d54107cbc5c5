"""Command-line interface: parses arguments, calls the library, prints results.

Each subcommand lives in its own module, which registers it on ``main`` when
imported at the bottom of this file.
"""

from __future__ import annotations

import logging

import click

from lmdp import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lmdp")
@click.option("-v", "--verbose", count=True, help="Log progress (-v) or debug details (-vv) to stderr.")
def main(verbose: int) -> None:
    """Layer-wise membership-risk-aware DP-SGD: train, account, audit, compare."""
    levels = {0: logging.WARNING, 1: logging.INFO}
    level = levels.get(verbose, logging.DEBUG)
    # force=True: Opacus installs a root handler at import, which would swallow this setting.
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s", force=True)


# Subcommand modules register themselves on ``main``.
from lmdp.cli import privacy  # noqa: E402,F401
from lmdp.cli import run  # noqa: E402,F401
from lmdp.cli import risk  # noqa: E402,F401
from lmdp.cli import bench  # noqa: E402,F401
from lmdp.cli import privacy_audit  # noqa: E402,F401
