"""Experiment reports: ``report.json``, ``report.md`` and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmdp.io import atomic_write_json, atomic_write_text
from lmdp.report.markdown import render_markdown
from lmdp.report.plots import write_plots
from lmdp.report.summary import REPORT_FORMAT, build_report, summarise


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.json``, the plots and ``report.md`` into ``out_dir`` (each file atomically)."""
    out_dir = Path(out_dir)
    plots = write_plots(report, out_dir)
    paths = {
        "json": atomic_write_json(out_dir / "report.json", report),
        "markdown": atomic_write_text(out_dir / "report.md", render_markdown(report, plots=plots)),
    }
    paths.update({name: out_dir / file for name, file in plots.items()})
    return paths


__all__ = ["REPORT_FORMAT", "build_report", "render_markdown", "summarise", "write_plots", "write_report"]
