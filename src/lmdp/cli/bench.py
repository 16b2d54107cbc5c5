"""``lmdp bench``: step time and peak memory of private training against non-private training and Opacus."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from lmdp.cli import main
from lmdp.errors import ConfigError


def _int_list(_context, _parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(item) for item in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 64,256; got {value!r}") from None


def _name_list(_context, _parameter, value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(item.strip() for item in value.split(",") if item.strip())


@main.command()
@click.option("--quick", is_flag=True, help="Measure only the MLP and the CNN at batch size 256 (about a minute).")
@click.option("--models", callback=_name_list, default=None, help="Comma-separated zoo models [default: mlp,cnn,resnet].")
@click.option("--batch-sizes", callback=_int_list, default=None, help="Comma-separated batch sizes [default: 64,256,1024].")
@click.option("--repeats", type=int, default=None, help="Maximum number of timed steps per variant; a cell stops earlier once its timed steps took 15 s (10 s with --quick), after at least 3 [default: 40].")
@click.option("--warmup", type=int, default=None, help="Untimed steps per variant before timing [default: 1].")
@click.option("--threads", type=int, default=None, help="torch threads in every cell [default: torch's default].")
@click.option("--experiment", is_flag=True,
              help="Also time the whole default `lmdp run` and its risk estimation (tens of minutes on 2 cores).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="lmdp-bench", show_default=True,
              help="Output folder for bench.json and bench.md.")
def bench(
    quick: bool,
    models: tuple[str, ...] | None,
    batch_sizes: tuple[int, ...] | None,
    repeats: int | None,
    warmup: int | None,
    threads: int | None,
    experiment: bool,
    out_dir: str,
) -> None:
    """Time training steps of nonprivate, Opacus DP-SGD and lmdpsgd, in hooks and ghost modes."""
    from lmdp.bench import QUICK_CONFIG, BenchConfig, render_markdown, run_benchmark, write_report

    base = QUICK_CONFIG if quick else BenchConfig()
    changes = {
        "models": models,
        "batch_sizes": batch_sizes,
        "repeats": repeats,
        "warmup_rounds": warmup,
        "num_threads": threads,
        "include_experiment": experiment or None,
    }
    if repeats is not None:
        changes["min_repeats"] = min(base.min_repeats, repeats)
    try:
        config = replace(base, **{name: value for name, value in changes.items() if value is not None})
    except ConfigError as error:
        raise click.UsageError(str(error)) from error

    def show_cell(cell) -> None:
        status = f"failed: {cell.error}" if cell.error else f"{cell.timed_rounds} timed rounds"
        click.echo(f"{cell.model} at batch size {cell.batch_size}: {status} ({cell.wall_time_s:.0f} s)", err=True)

    report = run_benchmark(config, on_cell=show_cell)
    paths = write_report(report, out_dir)
    click.echo(render_markdown(report))
    click.echo(f"Report: {Path(paths['markdown']).resolve()}")
    click.echo(f"Data:   {Path(paths['json']).resolve()}")
