"""Run the CLI as ``python -m lmdp.cli``."""

from lmdp.cli import main

main(prog_name="lmdp")
