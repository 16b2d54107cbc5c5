"""Render ``report.json`` as a Markdown report with the tables a reader needs first."""

from __future__ import annotations

from typing import Any


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mean_ci(summary: dict[str, Any] | None, digits: int = 3) -> str:
    if not summary or summary["mean"] is None:
        return "–"
    text = _number(summary["mean"], digits)
    if summary.get("ci"):
        low, high = summary["ci"]
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def _epsilon(value: float | None) -> str:
    if value is None:
        return "∞ (no DP)"
    return f"{value:.3g}"


def render_markdown(report: dict[str, Any], *, plots: dict[str, str]) -> str:
    """Return the Markdown text of the report; ``plots`` maps plot names to file names beside it."""
    config = report["config"]
    training = config["training"]
    lines = [
        "# lmdp experiment report",
        "",
        f"Dataset `{report['dataset']['name']}` ({report['dataset']['source']}), model `{config['model']['name']}`, "
        f"{config['splits']['n_members']} members, {config['splits']['n_non_members']} non-members, "
        f"{config['splits']['n_public']} public records (shadow), {config['splits']['n_test']} test records. "
        f"{training['steps']} steps at sample_rate {training['sample_rate']}, max_grad_norm {training['max_grad_norm']}, "
        f"delta {config['delta']:g}, accountant `{training['accountant']}`, seeds {report['seeds']}.",
        "",
        "Intervals are 95% Student-t intervals over seeds. The peak per-layer AUC is the largest held-out attack "
        "AUC over every tap and attack; `null q95` is the 95th percentile of that peak when membership labels are "
        "permuted (the peak expected from selection noise alone). The output AUC is the model-output attack "
        "(loss, confidence), for comparison with the IR risk.",
        "",
        "## Results at equal ε",
        "",
        "| method | target ε | ε | noise_multiplier | test accuracy | peak per-layer AUC | null q95 | output AUC | privacy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if report.get("nonprivate"):
        runs = [r for r in report["runs"] if r["method"] == "nonprivate"]
        null = sum(r["null_peak_auc"]["quantiles"].get("0.95", 0) for r in runs) / len(runs)
        lines.append(
            f"| nonprivate | – | ∞ | 0 | {_mean_ci(report['nonprivate']['test_accuracy'])} | "
            f"{_mean_ci(report['nonprivate']['peak_auc'])} | {null:.3f} | {_mean_ci(report['nonprivate']['output_auc'])} | none |"
        )
    for entry in report["comparison"]:
        note = "formal" if entry["meaningful_privacy"] else "no meaningful formal privacy"
        for method in ("dpsgd", "lmdpsgd"):
            if method in entry:
                lines.append(
                    f"| {method} | {entry['target_epsilon']:g} | {_epsilon(entry['epsilon'])} | {entry['noise_multiplier']:.4g} | "
                    f"{_mean_ci(entry[method]['test_accuracy'])} | {_mean_ci(entry[method]['peak_auc'])} | "
                    f"{_mean_ci(entry[method]['null_peak_auc_q95'])} | {_mean_ci(entry[method]['output_auc'])} | {note} |"
                )
    lines += ["", "dpsgd and lmdpsgd at one target ε share σ, sample rate and steps, so the same ε by construction; "
              f"within a seed they also share initialisation, batches and noise draws "
              f"(check: {'passed' if report['checks'].get('equal_epsilon_for_dpsgd_and_lmdpsgd') else 'FAILED'}).", ""]

    lines += ["## LM-DP-SGD minus DP-SGD, paired by seed", "",
              "| target ε | Δ peak AUC | Δ test accuracy | Δ peak AUC at matched accuracy | verdict |", "|---|---|---|---|---|"]
    for entry in report["comparison"]:
        if "paired_difference" in entry:
            paired = entry["paired_difference"]
            matched = entry["matched_accuracy"]["peak_auc_difference"]
            lines.append(
                f"| {entry['target_epsilon']:g} | {_mean_ci(paired['peak_auc'])} | {_mean_ci(paired['test_accuracy'])} | "
                f"{_mean_ci(matched)} | {entry['verdict']} |"
            )
    lines += ["", "At matched accuracy, each LM-DP-SGD run is compared with the DP-SGD checkpoint (audited during "
              "training) whose test accuracy is closest to it.", ""]

    profile = report["risk_profile"]
    lines += ["## Risk profile (shadow model, public data)", "", "| layer | attack_error | layer_weights |", "|---|---|---|"]
    for tap in profile["taps"]:
        lines.append(f"| {tap} | {_number(profile['attack_error'].get(tap))} | {_number(profile['layer_weights'].get(tap))} |")
    lines += ["", "Values are means over seeds; per-seed values with confidence intervals are in `report.json`.", ""]

    lines += _per_layer_table(report)
    if report["checks"].get("note"):
        lines += ["", f"Note: {report['checks']['note']}."]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({file})" for name, file in plots.items()]
    lines.append("")
    return "\n".join(lines)


def _per_layer_table(report: dict[str, Any]) -> list[str]:
    groups: dict[tuple[str, Any], list[dict]] = {}
    for run in report["runs"]:
        groups.setdefault((run["method"], run["target_epsilon"]), []).append(run)
    if not groups:
        return []
    names = [layer["name"] for layer in next(iter(groups.values()))[0]["layers"]]
    header = "| method | target ε | " + " | ".join(names) + " |"
    lines = ["## Per-layer AUC (held-out attacks, mean over seeds)", "", header, "|" + "---|" * (len(names) + 2)]
    for (method, target), runs in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1] or 0)):
        cells = []
        for index in range(len(names)):
            values = [run["layers"][index]["auc"] for run in runs]
            cells.append(f"{sum(values) / len(values):.3f}")
        lines.append(f"| {method} | {'–' if target is None else f'{target:g}'} | " + " | ".join(cells) + " |")
    return lines
