"""``lmdp run``: the main experiment, from defaults or a YAML config."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click

from lmdp.cli import main
from lmdp.errors import ArtifactError, ConfigError, LayerMapError, UnsupportedModuleError


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML file describing the experiment; without it the built-in default experiment runs.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="lmdp-results", show_default=True,
              help="Output folder for report.json, report.md, plots and per-run files.")
@click.option("--quick", is_flag=True,
              help="Smoke test in about a minute: fewer records, one seed, one ε (1000), 150 steps, fewer bootstrap "
                   "and permutation draws. Fields set in --config keep their values.")
@click.option("--overwrite", is_flag=True, help="Replace results of a different experiment already in --out.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars (hidden anyway when stderr is not a terminal).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPU threads for torch. The zoo's small models run fastest on one thread; raise it for large models.")
def run(config_path: str | None, out_dir: str, quick: bool, overwrite: bool, no_progress: bool, threads: int) -> None:
    """Compare nonprivate, dpsgd and lmdpsgd at equal ε, auditing every layer."""
    import torch

    from lmdp.config import load_config
    from lmdp.data import DatasetError
    from lmdp.experiment import run_experiment

    torch.set_num_threads(threads)
    started = time.perf_counter()
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        config = load_config(config_path, quick=quick)
        report, paths = run_experiment(config, out_dir, overwrite=overwrite, progress=not no_progress and sys.stderr.isatty())
    except (ConfigError, ArtifactError, LayerMapError, UnsupportedModuleError, DatasetError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    except KeyboardInterrupt:
        click.echo(
            f"\nInterrupted. Finished runs and the checkpoint of the current run are kept in {out_dir}; "
            "run the same command again to resume.",
            err=True,
        )
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)

    click.echo(_summary_table(report))
    click.echo(f"\nReport: {Path(paths['markdown']).resolve()}")
    click.echo(f"Data:   {Path(paths['json']).resolve()}")
    click.echo(f"Finished in {time.perf_counter() - started:.0f} s.")


def _raise_interrupt(signum, frame) -> None:
    """Turn SIGTERM into KeyboardInterrupt so both stop the run the same way."""
    raise KeyboardInterrupt


def _summary_table(report: dict) -> str:
    rows = [("method", "target ε", "seed", "ε", "test accuracy", "peak AUC", "peak layer")]
    for run in sorted(report["runs"], key=lambda r: (r["method"], r["target_epsilon"] or 0, r["seed"])):
        rows.append((
            run["method"],
            "–" if run["target_epsilon"] is None else f"{run['target_epsilon']:g}",
            str(run["seed"]),
            "∞" if run["epsilon"] is None else f"{run['epsilon']:.3g}",
            f"{run['test_accuracy']:.3f}",
            f"{run['peak_auc']:.3f}",
            run["peak_layer"],
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    verdicts = [f"ε={entry['target_epsilon']:g}: {entry['verdict']}" for entry in report["comparison"] if "verdict" in entry]
    return "\n".join(lines + [""] + verdicts)
