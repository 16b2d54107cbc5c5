"""PNG plots of an experiment report (matplotlib, no display needed)."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lmdp.io import atomic_write  # noqa: E402

METHOD_COLOURS = {"nonprivate": "tab:gray", "dpsgd": "tab:blue", "lmdpsgd": "tab:orange"}


def write_plots(report: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Write the report's plots into ``out_dir``; return plot names mapped to file names."""
    out_dir = Path(out_dir)
    written = {}
    for name, draw in (("per-layer AUC", _per_layer_auc), ("privacy-utility", _privacy_utility), ("ROC at the peak layer", _roc)):
        figure = draw(report)
        if figure is None:
            continue
        file_name = name.lower().replace(" ", "_").replace("-", "_") + ".png"
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        atomic_write(out_dir / file_name, lambda stream: stream.write(buffer.getvalue()))
        written[name] = file_name
    return written


def _group_runs(report: dict[str, Any]) -> dict[tuple[str, Any], list[dict]]:
    groups: dict[tuple[str, Any], list[dict]] = defaultdict(list)
    for run in report["runs"]:
        groups[(run["method"], run["target_epsilon"])].append(run)
    return groups


def _per_layer_auc(report: dict[str, Any]):
    groups = _group_runs(report)
    targets = sorted({target for _, target in groups if target is not None}) or [None]
    figure, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False, sharey=True)
    for axis, target in zip(axes[0], targets):
        for (method, run_target), runs in sorted(groups.items(), key=lambda item: item[0][0]):
            if run_target not in (target, None):
                continue
            names = [layer["name"] for layer in runs[0]["layers"]]
            means = [sum(run["layers"][i]["auc"] for run in runs) / len(runs) for i in range(len(names))]
            axis.plot(names, means, marker="o", label=method, color=METHOD_COLOURS.get(method))
        nulls = [run["null_peak_auc"]["quantiles"].get("0.95") for runs in groups.values() for run in runs]
        nulls = [value for value in nulls if value is not None]
        if nulls:
            axis.axhline(sum(nulls) / len(nulls), linestyle="--", color="black", linewidth=1, label="null peak q95")
        axis.axhline(0.5, linestyle=":", color="gray", linewidth=1)
        axis.set_title("non-private only" if target is None else f"target ε = {target:g}")
        axis.set_xlabel("layer")
        axis.tick_params(axis="x", rotation=30)
    axes[0][0].set_ylabel("membership AUC (held-out attacks)")
    axes[0][-1].legend(fontsize=8)
    figure.suptitle("Per-layer membership AUC by method")
    return figure


def _privacy_utility(report: dict[str, Any]):
    groups = _group_runs(report)
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for (method, target), runs in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] or 0)):
        accuracy = sum(r["test_accuracy"] for r in runs) / len(runs)
        peak = sum(r["peak_auc"] for r in runs) / len(runs)
        axis.scatter([accuracy], [peak], color=METHOD_COLOURS.get(method), label=method)
        axis.annotate("∞" if target is None else f"ε={target:g}", (accuracy, peak), fontsize=8, xytext=(4, 4), textcoords="offset points")
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axis.legend(unique.values(), unique.keys(), fontsize=8)
    axis.set_xlabel("test accuracy")
    axis.set_ylabel("peak per-layer AUC")
    axis.set_title("Privacy–utility across ε (means over seeds)")
    return figure


def _roc(report: dict[str, Any]):
    curves = []
    for (method, target), runs in sorted(_group_runs(report).items(), key=lambda item: (item[0][0], item[0][1] or 0)):
        run = runs[0]
        layer = next((layer for layer in run["layers"] if layer["name"] == run["peak_layer"]), None)
        if layer is None or not layer.get("roc"):
            continue
        curves.append((f"{method} {'' if target is None else f'ε={target:g} '}({layer['name']}, seed {run['seed']})",
                       layer["roc"]["fpr"], layer["roc"]["tpr"], METHOD_COLOURS.get(method)))
    if not curves:
        return None
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    for label, fpr, tpr, colour in curves:
        axis.plot(fpr, tpr, label=label, color=colour, linewidth=1.2)
    axis.plot([1e-4, 1], [1e-4, 1], linestyle=":", color="gray")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlim(1e-3, 1)
    axis.set_ylim(1e-3, 1)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title("ROC of the strongest attack at the peak layer")
    axis.legend(fontsize=7)
    return figure
