"""Membership-attack metrics: AUC, balanced accuracy, advantage, TPR at low FPR, bootstrap CIs.

Every function takes the scores of members and of non-members as two 1-D
arrays. Higher scores mean "more likely a member". An attack fixes the
direction of its score when it is fitted, so these functions never flip it.
A record is predicted a member when its score is ``>= threshold``.

The ROC is exact: one point per distinct score value plus the point (0, 0),
so tied scores move TPR and FPR together and count half in the AUC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

from lmdp.errors import ConfigError

#: False-positive rates at which TPR is reported (keys of ``tpr_at_fpr``).
LOW_FPR_TARGETS: tuple[float, ...] = (0.01, 0.001)


def fpr_key(target: float) -> str:
    """Return the JSON key of an FPR target, e.g. ``0.01 -> "0.01"``."""
    return repr(float(target))


def _as_scores(scores: Any, name: str) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ConfigError(f"{name} must be a non-empty 1-D array of scores; got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ConfigError(f"{name} contains {int(np.sum(~np.isfinite(array)))} NaN or infinite scores")
    return array


def roc_curve_exact(member_scores: Any, non_member_scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compute the exact ROC of "member if score >= threshold".

    Returns ``(fpr, tpr, thresholds)``, ordered by increasing FPR. The first
    point is (0, 0) with threshold ``+inf``. Each following point has a
    distinct score value as threshold, so ties never split a step.
    """
    members = _as_scores(member_scores, "member_scores")
    non_members = _as_scores(non_member_scores, "non_member_scores")
    scores = np.concatenate([members, non_members])
    is_member = np.concatenate([np.ones(members.size), np.zeros(non_members.size)])

    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    true_positives = np.cumsum(is_member[order])
    false_positives = np.arange(1, scores.size + 1) - true_positives

    # Keep only the last position of each group of tied scores.
    group_ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    tpr = np.r_[0.0, true_positives[group_ends] / members.size]
    fpr = np.r_[0.0, false_positives[group_ends] / non_members.size]
    thresholds = np.r_[np.inf, sorted_scores[group_ends]]
    return fpr, tpr, thresholds


def auc(member_scores: Any, non_member_scores: Any) -> float:
    """Return P(member score > non-member score) + ½·P(equal): the ROC AUC (Mann-Whitney U / n₁n₀)."""
    members = _as_scores(member_scores, "member_scores")
    non_members = _as_scores(non_member_scores, "non_member_scores")
    ranks = rankdata(np.concatenate([members, non_members]))
    rank_sum = ranks[: members.size].sum()
    return float((rank_sum - members.size * (members.size + 1) / 2) / (members.size * non_members.size))


def balanced_accuracy(member_scores: Any, non_member_scores: Any, threshold: float) -> float:
    """Return ½·(TPR + TNR) of "member if score >= threshold".

    Class sizes do not matter: an attack that calls every record a member
    scores 0.5 whatever the ratio of members to non-members.
    """
    members = _as_scores(member_scores, "member_scores")
    non_members = _as_scores(non_member_scores, "non_member_scores")
    true_positive_rate = np.mean(members >= threshold)
    true_negative_rate = np.mean(non_members < threshold)
    return float((true_positive_rate + true_negative_rate) / 2)


def attack_error(member_scores: Any, non_member_scores: Any, threshold: float) -> float:
    """Return 1 − balanced accuracy at ``threshold`` (the attack error e_l; 0.5 is guessing)."""
    return 1.0 - balanced_accuracy(member_scores, non_member_scores, threshold)


def advantage(member_scores: Any, non_member_scores: Any) -> float:
    """Return the membership advantage max over thresholds of (TPR − FPR), in [0, 1].

    The maximum is taken on the given scores, so on evaluation data it is
    an optimistic (best-threshold) figure. ``attack_error`` uses a
    threshold fixed on fitting data instead.
    """
    fpr, tpr, _ = roc_curve_exact(member_scores, non_member_scores)
    return float(np.max(tpr - fpr))


def tpr_at_fpr(member_scores: Any, non_member_scores: Any, target: float) -> float:
    """Return the largest TPR among thresholds whose FPR is at most ``target``.

    With n non-members the smallest non-zero FPR is 1/n, so a target below
    1/n is read at FPR = 0.
    """
    if not 0.0 <= target <= 1.0:
        raise ConfigError(f"target FPR must be in [0, 1]; got {target}")
    fpr, tpr, _ = roc_curve_exact(member_scores, non_member_scores)
    return float(np.max(tpr[fpr <= target + 1e-12]))


def best_threshold(member_scores: Any, non_member_scores: Any) -> float:
    """Return the threshold that maximises balanced accuracy on these scores.

    The threshold sits halfway between the chosen score and the next lower
    distinct score, so records scored between the two are split evenly
    when the threshold is reused on new data.
    """
    fpr, tpr, thresholds = roc_curve_exact(member_scores, non_member_scores)
    best = int(np.argmax(tpr - fpr))
    if best == 0:
        return float("inf")
    if best == len(thresholds) - 1:
        return float(thresholds[best])
    return float((thresholds[best] + thresholds[best + 1]) / 2)


@dataclass(frozen=True)
class AttackMetrics:
    """Metrics of one attack on one set of members and non-members.

    ``tpr_at_fpr`` maps an FPR target (as a string, e.g. ``"0.01"``) to the
    TPR there. ``ci`` maps each metric name to its bootstrap interval
    ``(low, high)`` at ``ci_level``; ``ci["tpr_at_fpr"]`` maps FPR targets
    to intervals. ``threshold`` is the decision threshold, fixed on fitting
    data, behind ``balanced_accuracy`` and ``attack_error``.
    """

    auc: float
    balanced_accuracy: float
    attack_error: float
    advantage: float
    tpr_at_fpr: dict[str, float]
    threshold: float
    members: int
    non_members: int
    ci: dict[str, Any] = field(default_factory=dict)
    ci_level: float = 0.95
    n_bootstrap: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; an infinite threshold is written as a string."""
        return {
            "auc": self.auc,
            "balanced_accuracy": self.balanced_accuracy,
            "attack_error": self.attack_error,
            "advantage": self.advantage,
            "tpr_at_fpr": dict(self.tpr_at_fpr),
            "threshold": _float_to_json(self.threshold),
            "members": self.members,
            "non_members": self.non_members,
            "ci": _intervals_to_json(self.ci),
            "ci_level": self.ci_level,
            "n_bootstrap": self.n_bootstrap,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackMetrics:
        """Rebuild metrics from ``to_dict`` output; raise KeyError or TypeError on a missing or mistyped field."""
        return cls(
            auc=float(data["auc"]),
            balanced_accuracy=float(data["balanced_accuracy"]),
            attack_error=float(data["attack_error"]),
            advantage=float(data["advantage"]),
            tpr_at_fpr={str(k): float(v) for k, v in data["tpr_at_fpr"].items()},
            threshold=_float_from_json(data["threshold"]),
            members=int(data["members"]),
            non_members=int(data["non_members"]),
            ci=_intervals_from_json(data["ci"]),
            ci_level=float(data["ci_level"]),
            n_bootstrap=int(data["n_bootstrap"]),
        )


def _float_to_json(value: float) -> float | str:
    if np.isfinite(value):
        return value
    return "inf" if value > 0 else "-inf"


def _float_from_json(value: float | str) -> float:
    if isinstance(value, str) and value not in ("inf", "-inf"):
        raise TypeError(f"expected a number, 'inf' or '-inf'; got {value!r}")
    return float(value)


def _intervals_to_json(ci: dict[str, Any]) -> dict[str, Any]:
    return {
        name: {k: list(v) for k, v in value.items()} if isinstance(value, dict) else list(value)
        for name, value in ci.items()
    }


def _intervals_from_json(data: dict[str, Any]) -> dict[str, Any]:
    def interval(value: Any) -> tuple[float, float]:
        low, high = value
        return float(low), float(high)

    return {
        name: {k: interval(v) for k, v in value.items()} if isinstance(value, dict) else interval(value)
        for name, value in data.items()
    }


def compute_metrics(
    member_scores: Any,
    non_member_scores: Any,
    *,
    threshold: float,
    n_bootstrap: int = 200,
    ci_level: float = 0.95,
    seed: int = 0,
    fpr_targets: tuple[float, ...] = LOW_FPR_TARGETS,
) -> AttackMetrics:
    """Compute every metric of one attack, with bootstrap confidence intervals.

    ``threshold`` must come from fitting data. The intervals are percentile
    intervals over ``n_bootstrap`` resamples that draw members and
    non-members separately with replacement, keeping both counts fixed
    (stratified bootstrap). ``n_bootstrap=0`` skips them.
    """
    if n_bootstrap < 0:
        raise ConfigError(f"n_bootstrap must be >= 0; got {n_bootstrap}")
    if not 0.0 < ci_level < 1.0:
        raise ConfigError(f"ci_level must be in (0, 1); got {ci_level}")
    members = _as_scores(member_scores, "member_scores")
    non_members = _as_scores(non_member_scores, "non_member_scores")

    error = attack_error(members, non_members, threshold)
    metrics = AttackMetrics(
        auc=auc(members, non_members),
        balanced_accuracy=1.0 - error,
        attack_error=error,
        advantage=advantage(members, non_members),
        tpr_at_fpr={fpr_key(t): tpr_at_fpr(members, non_members, t) for t in fpr_targets},
        threshold=float(threshold),
        members=members.size,
        non_members=non_members.size,
        ci_level=ci_level,
        n_bootstrap=n_bootstrap,
    )
    if n_bootstrap == 0:
        return metrics

    rng = np.random.default_rng(seed)
    resampled_members = members[rng.integers(0, members.size, size=(n_bootstrap, members.size))]
    resampled_non_members = non_members[rng.integers(0, non_members.size, size=(n_bootstrap, non_members.size))]
    samples = _metrics_per_row(resampled_members, resampled_non_members, threshold, fpr_targets)

    def interval(values: np.ndarray) -> tuple[float, float]:
        low, high = np.quantile(values, [(1 - ci_level) / 2, (1 + ci_level) / 2])
        return float(low), float(high)

    ci: dict[str, Any] = {name: interval(values) for name, values in samples.items() if name != "tpr_at_fpr"}
    ci["tpr_at_fpr"] = {fpr_key(t): interval(values) for t, values in samples["tpr_at_fpr"].items()}
    return AttackMetrics(**{**metrics.__dict__, "ci": ci})


def _metrics_per_row(
    members: np.ndarray, non_members: np.ndarray, threshold: float, fpr_targets: tuple[float, ...]
) -> dict[str, Any]:
    """Compute the metrics of each row of ``members`` (rows, n₁) and ``non_members`` (rows, n₀) at once."""
    n_members, n_non_members = members.shape[1], non_members.shape[1]
    scores = np.concatenate([members, non_members], axis=1)

    ranks = rankdata(scores, axis=1)
    aucs = (ranks[:, :n_members].sum(axis=1) - n_members * (n_members + 1) / 2) / (n_members * n_non_members)

    balanced = ((members >= threshold).mean(axis=1) + (non_members < threshold).mean(axis=1)) / 2

    # Exact ROC per row: cumulative counts at the end of each group of tied scores.
    order = np.argsort(-scores, axis=1, kind="mergesort")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    is_member = (order < n_members).astype(np.float64)
    tpr = np.cumsum(is_member, axis=1) / n_members
    fpr = np.cumsum(1.0 - is_member, axis=1) / n_non_members
    group_end = np.concatenate(
        [sorted_scores[:, 1:] != sorted_scores[:, :-1], np.ones((scores.shape[0], 1), dtype=bool)], axis=1
    )
    advantages = np.maximum(np.max(np.where(group_end, tpr - fpr, -np.inf), axis=1), 0.0)
    low_fpr = {
        t: np.maximum(np.max(np.where(group_end & (fpr <= t + 1e-12), tpr, -np.inf), axis=1), 0.0)
        for t in fpr_targets
    }
    return {
        "auc": aucs,
        "balanced_accuracy": balanced,
        "attack_error": 1.0 - balanced,
        "advantage": advantages,
        "tpr_at_fpr": low_fpr,
    }
