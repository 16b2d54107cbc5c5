"""Turn the records of an experiment's runs into the report: JSON data, comparisons, verdicts."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
from scipy import stats

REPORT_FORMAT = "lmdp-report"
REPORT_VERSION = 1


def summarise(values: Sequence[float | None], *, level: float = 0.95) -> dict[str, Any]:
    """Return n, mean, sample std and a Student-t confidence interval of the mean (None when n < 2)."""
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(data) == 0:
        return {"n": 0, "mean": None, "std": None, "ci": None}
    if len(data) == 1:
        return {"n": 1, "mean": float(data[0]), "std": None, "ci": None}
    mean, std = float(data.mean()), float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, df=len(data) - 1) * std / math.sqrt(len(data)))
    return {"n": int(len(data)), "mean": mean, "std": std, "ci": [mean - half, mean + half]}


def build_report(
    *,
    config: dict,
    config_fingerprint: str,
    records: dict[str, dict],
    profiles: dict[int, dict],
    calibrations: dict[float, dict],
    dataset: dict,
    versions: dict,
    timings: dict,
) -> dict[str, Any]:
    """Assemble ``report.json``: every run, the risk profile, and the DP-SGD vs LM-DP-SGD comparison."""
    runs = sorted(records.values(), key=lambda r: (r["seed"], r["method"], r["target_epsilon"] or 0.0))
    comparison = [_compare_at_epsilon(runs, target, calibrations[target]) for target in sorted(calibrations)]
    nonprivate = [r for r in runs if r["method"] == "nonprivate"]
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "config": config,
        "config_fingerprint": config_fingerprint,
        "dataset": dataset,
        "versions": versions,
        "seeds": config["seeds"],
        "runs": runs,
        "risk_profile": _risk_profile_summary(profiles),
        "comparison": comparison,
        "nonprivate": None if not nonprivate else {
            "peak_auc": summarise([r["peak_auc"] for r in nonprivate]),
            "output_auc": summarise([r["output_auc"] for r in nonprivate]),
            "test_accuracy": summarise([r["test_accuracy"] for r in nonprivate]),
        },
        "checks": _checks(runs, comparison),
        "timings": timings,
    }


def _risk_profile_summary(profiles: dict[int, dict]) -> dict[str, Any]:
    by_seed = {}
    for seed, profile in sorted(profiles.items()):
        layers = {layer["name"]: layer for layer in profile["layers"]}
        by_seed[str(seed)] = {
            "attack_error": {name: layer["attack_error"] for name, layer in layers.items()},
            "attack_error_ci": {name: layer.get("ci", {}).get("attack_error") for name, layer in layers.items()},
            "layer_risk": {name: layer["layer_risk"] for name, layer in layers.items()},
            "auc": {name: layer["auc"] for name, layer in layers.items()},
            "attack": {name: layer["attack"] for name, layer in layers.items()},
            "layer_weights": profile.get("layer_weights"),
            "weighting": profile.get("weighting"),
            "shadow": profile.get("shadow"),
        }
    taps = list(next(iter(profiles.values()))["taps"]) if profiles else []
    mean_error = {tap: float(np.mean([s["attack_error"][tap] for s in by_seed.values()])) for tap in taps}
    mean_weights = {}
    if by_seed and all(s["layer_weights"] for s in by_seed.values()):
        names = list(next(iter(by_seed.values()))["layer_weights"])
        mean_weights = {name: float(np.mean([s["layer_weights"][name] for s in by_seed.values()])) for name in names}
    return {"taps": taps, "attack_error": mean_error, "layer_weights": mean_weights, "by_seed": by_seed}


def _compare_at_epsilon(runs: list[dict], target: float, calibration: dict) -> dict[str, Any]:
    """Compare dpsgd and lmdpsgd at one target ε, paired by seed, at equal ε and at matched accuracy."""
    by_method: dict[str, dict[int, dict]] = defaultdict(dict)
    for run in runs:
        if run["target_epsilon"] == target:
            by_method[run["method"]][run["seed"]] = run
    entry: dict[str, Any] = {
        "target_epsilon": target,
        "epsilon": calibration["epsilon"],
        "delta": calibration["delta"],
        "noise_multiplier": calibration["noise_multiplier"],
        "sample_rate": calibration["sample_rate"],
        "steps": calibration["steps"],
        "meaningful_privacy": calibration["epsilon"] <= 10.0,
    }
    for method, seeds in by_method.items():
        entry[method] = {
            "peak_auc": summarise([r["peak_auc"] for r in seeds.values()]),
            "output_auc": summarise([r["output_auc"] for r in seeds.values()]),
            "test_accuracy": summarise([r["test_accuracy"] for r in seeds.values()]),
            "null_peak_auc_q95": summarise([r["null_peak_auc"]["quantiles"].get("0.95") for r in seeds.values()]),
            "epsilon": sorted({r["epsilon"] for r in seeds.values()}),
        }
    dp, lm = by_method.get("dpsgd", {}), by_method.get("lmdpsgd", {})
    paired = sorted(set(dp) & set(lm))
    entry["same_epsilon"] = bool(paired) and all(
        dp[s]["epsilon"] == lm[s]["epsilon"] and dp[s]["noise_multiplier"] == lm[s]["noise_multiplier"] for s in paired
    )
    if paired:
        peak_difference = summarise([lm[s]["peak_auc"] - dp[s]["peak_auc"] for s in paired])
        accuracy_difference = summarise([lm[s]["test_accuracy"] - dp[s]["test_accuracy"] for s in paired])
        entry["paired_difference"] = {"peak_auc": peak_difference, "test_accuracy": accuracy_difference, "seeds": paired}
        entry["matched_accuracy"] = _matched_accuracy(dp, lm, paired)
        entry["verdict"] = _verdict(peak_difference)
    return entry


def _matched_accuracy(dp: dict[int, dict], lm: dict[int, dict], seeds: list[int]) -> dict[str, Any]:
    """Compare LM-DP-SGD at the end with the DP-SGD checkpoint closest to its test accuracy, per seed."""
    differences, points = [], []
    for seed in seeds:
        target_accuracy = lm[seed]["test_accuracy"]
        candidates = dp[seed]["trajectory"]
        closest = min(candidates, key=lambda point: abs(point["test_accuracy"] - target_accuracy))
        differences.append(lm[seed]["peak_auc"] - closest["peak_auc"])
        points.append({
            "seed": seed,
            "lmdpsgd_test_accuracy": target_accuracy,
            "lmdpsgd_peak_auc": lm[seed]["peak_auc"],
            "dpsgd_step": closest["step"],
            "dpsgd_test_accuracy": closest["test_accuracy"],
            "dpsgd_peak_auc": closest["peak_auc"],
        })
    return {"peak_auc_difference": summarise(differences), "points": points}


def _verdict(difference: dict[str, Any]) -> str:
    if difference["n"] < 2:
        return "one seed only: no estimate of the seed spread, so no conclusion"
    low, high = difference["ci"]
    if high < 0:
        return "LM-DP-SGD lowered the peak per-layer AUC beyond the seed spread"
    if low > 0:
        return "LM-DP-SGD raised the peak per-layer AUC beyond the seed spread"
    return "no difference in peak per-layer AUC beyond the seed spread"


def _checks(runs: list[dict], comparison: list[dict]) -> dict[str, Any]:
    """Invariants the report states explicitly, so a reader sees when one fails."""
    checks: dict[str, Any] = {}
    checks["equal_epsilon_for_dpsgd_and_lmdpsgd"] = all(entry.get("same_epsilon", True) for entry in comparison)
    weights_ok = all(
        run["layer_weights"] is None or all(0 < w <= 1 for w in run["layer_weights"].values()) for run in runs
    )
    checks["layer_weights_in_unit_interval"] = weights_ok
    checks["aucs_in_unit_interval"] = all(0 <= layer["auc"] <= 1 for run in runs for layer in run["layers"])
    nonprivate = [r["peak_auc"] for r in runs if r["method"] == "nonprivate"]
    private = [r["peak_auc"] for r in runs if r["method"] != "nonprivate"]
    if nonprivate and private:
        highest = float(np.mean(nonprivate)) >= max(
            float(np.mean([r["peak_auc"] for r in runs if r["method"] == m and r["target_epsilon"] == e]))
            for m, e in {(r["method"], r["target_epsilon"]) for r in runs if r["method"] != "nonprivate"}
        )
        checks["nonprivate_has_highest_peak_auc"] = highest
        if not highest:
            checks["note"] = (
                "a private run has a higher mean peak AUC than the non-private model; at these sizes the audit "
                "cannot separate them, so read the confidence intervals before drawing conclusions"
            )
    return checks
