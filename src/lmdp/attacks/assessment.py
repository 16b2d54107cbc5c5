"""Layer-by-layer membership assessment: record splits, fitting, evaluation, null baseline.

An assessment runs the attack suite at every tap and at the model output
on one set of members and non-members, in one of two settings:

- ``held_out``: the records are split once, for all levels alike, into a
  reference set (non-members only), a train part and a calibrate part
  (both balanced) for fitting, and a balanced evaluation part;
- ``transfer``: the attacks are fitted on a shadow model's records and
  scored on a target model's records.

For each level the strongest attack is the one with the highest AUC on the
calibrate part, so the choice never uses evaluation data. The attack error
e_l = 1 − balanced accuracy of that attack on the evaluation part, at the
threshold fixed on the calibrate part, and the layer risk is
r_l = max(0, 1 − 2·e_l) (LM-DP-SGD, Meng et al., arXiv:2602.22611).

The peak AUC is the maximum over every tap × attack pair on evaluation
data, so it is biased upwards by the selection. ``NullBaseline`` measures
that bias: it permutes the membership labels of the evaluation records,
repeats the same maximum, and reports the distribution and a p-value.
Scores of fitted attacks do not depend on evaluation labels, so this is an
exact permutation test of "members and non-members are exchangeable".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata
from tqdm.auto import tqdm

from lmdp.attacks.metrics import AttackMetrics, compute_metrics, roc_curve_exact
from lmdp.attacks.models import IR_ATTACKS, OUTPUT_ATTACKS, LayerAttacks
from lmdp.errors import ConfigError
from lmdp.representations import Representations

logger = logging.getLogger(__name__)

OUTPUT = "output"
SETTINGS: tuple[str, ...] = ("held_out", "transfer")
NULL_QUANTILES: tuple[float, ...] = (0.5, 0.95, 0.99)

# Minimum number of records of each membership class in the train and calibrate parts.
_MIN_PART_SIZE = 4


@dataclass(frozen=True)
class AttackConfig:
    """Settings of the attack suite and of its metrics.

    ``reference_fraction`` of the non-members form the reference set. In
    the held-out setting ``fit_fraction`` of the remaining balanced records
    fit the attacks (half train, half calibrate), and the rest evaluate them. Confidence intervals come from ``n_bootstrap`` stratified
    resamples; the null baseline from ``n_permutations`` label permutations.
    """

    attacks: tuple[str, ...] = IR_ATTACKS
    output_attacks: tuple[str, ...] = OUTPUT_ATTACKS
    reference_fraction: float = 0.25
    fit_fraction: float = 0.5
    n_neighbours: int = 5
    max_components: int = 64
    n_bootstrap: int = 200
    ci_level: float = 0.95
    n_permutations: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, known in (
            ("attacks", self.attacks, IR_ATTACKS),
            ("output_attacks", self.output_attacks, OUTPUT_ATTACKS),
        ):
            unknown = [attack for attack in value if attack not in known]
            if unknown or not value:
                raise ConfigError(f"{name} must be a non-empty subset of {list(known)}; got {list(value)}")
        for name, value in (("reference_fraction", self.reference_fraction), ("fit_fraction", self.fit_fraction)):
            if not 0.0 < value < 1.0:
                raise ConfigError(f"{name} must be in (0, 1); got {value}")
        if self.n_neighbours < 1:
            raise ConfigError(f"n_neighbours must be >= 1; got {self.n_neighbours}")
        if self.max_components < 1:
            raise ConfigError(f"max_components must be >= 1; got {self.max_components}")
        if self.n_bootstrap < 0 or self.n_permutations < 0:
            raise ConfigError(
                f"n_bootstrap and n_permutations must be >= 0; got {self.n_bootstrap} and {self.n_permutations}"
            )
        if not 0.0 < self.ci_level < 1.0:
            raise ConfigError(f"ci_level must be in (0, 1); got {self.ci_level}")

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "attacks": list(self.attacks), "output_attacks": list(self.output_attacks)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackConfig:
        return cls(**{**data, "attacks": tuple(data["attacks"]), "output_attacks": tuple(data["output_attacks"])})


@dataclass(frozen=True)
class RecordSplit:
    """Indices of the records in each part; ``train``, ``calibrate`` and ``evaluate`` are balanced."""

    reference: np.ndarray
    train: np.ndarray
    calibrate: np.ndarray
    evaluate: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {part: int(len(getattr(self, part))) for part in ("reference", "train", "calibrate", "evaluate")}


def split_records(
    labels: np.ndarray,
    is_member: np.ndarray,
    *,
    reference_fraction: float,
    fit_fraction: float | None,
    seed: int,
) -> RecordSplit:
    """Split records into reference, train, calibrate and evaluation parts, stratified by label.

    The reference set takes ``reference_fraction`` of the non-members. The
    larger membership class is then subsampled so that members and
    non-members are equal in number, and the balanced records are split
    into fitting (``fit_fraction``, halved into train and calibrate) and
    evaluation. ``fit_fraction=None`` puts every balanced record into
    fitting and leaves the evaluation part empty (the shadow side of the
    transfer setting).
    """
    rng = np.random.default_rng(seed)
    members = np.flatnonzero(is_member)
    non_members = np.flatnonzero(~is_member)

    reference, non_members = _stratified_take(non_members, labels, round(reference_fraction * len(non_members)), rng)
    n_balanced = min(len(members), len(non_members))
    members, _ = _stratified_take(members, labels, n_balanced, rng)
    non_members, _ = _stratified_take(non_members, labels, n_balanced, rng)

    n_fit = n_balanced if fit_fraction is None else round(fit_fraction * n_balanced)
    fit_members, eval_members = _stratified_take(members, labels, n_fit, rng)
    fit_non_members, eval_non_members = _stratified_take(non_members, labels, n_fit, rng)
    train_members, calibrate_members = _stratified_take(fit_members, labels, n_fit // 2, rng)
    train_non_members, calibrate_non_members = _stratified_take(fit_non_members, labels, n_fit // 2, rng)
    split = RecordSplit(
        reference=np.sort(reference),
        train=np.sort(np.concatenate([train_members, train_non_members])),
        calibrate=np.sort(np.concatenate([calibrate_members, calibrate_non_members])),
        evaluate=np.sort(np.concatenate([eval_members, eval_non_members])),
    )

    too_small = min(len(train_members), len(calibrate_non_members)) < _MIN_PART_SIZE or len(reference) < 2
    if too_small or (fit_fraction is not None and len(eval_members) == 0):
        raise ConfigError(
            f"too few records to fit and evaluate the attacks: {int(is_member.sum())} members and "
            f"{int((~is_member).sum())} non-members gave parts of sizes {split.sizes()}; "
            f"each membership class needs at least {_MIN_PART_SIZE} records in train and calibrate. "
            "Pass more members and non-members, or lower reference_fraction"
        )
    return split


def balanced_indices(labels: np.ndarray, is_member: np.ndarray, *, seed: int) -> np.ndarray:
    """Return sorted indices of equally many members and non-members, subsampling the larger class by label."""
    rng = np.random.default_rng(seed)
    members = np.flatnonzero(is_member)
    non_members = np.flatnonzero(~is_member)
    n_balanced = min(len(members), len(non_members))
    members, _ = _stratified_take(members, labels, n_balanced, rng)
    non_members, _ = _stratified_take(non_members, labels, n_balanced, rng)
    return np.sort(np.concatenate([members, non_members]))


def _stratified_take(
    indices: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Take ``count`` random indices with label proportions kept up to rounding; return (taken, rest).

    Each label c gets floor(count × n_c / n) indices, and the remaining
    ones go to the labels with the largest fractional parts.
    """
    if count >= len(indices):
        return rng.permutation(indices), indices[:0]
    classes, sizes = np.unique(labels[indices], return_counts=True)
    quotas = count * sizes / len(indices)
    allocation = np.floor(quotas).astype(int)
    shortfall = count - allocation.sum()
    allocation[np.argsort(-(quotas - allocation), kind="stable")[:shortfall]] += 1

    taken, rest = [], []
    for label, quota in zip(classes, allocation):
        of_label = rng.permutation(indices[labels[indices] == label])
        taken.append(of_label[:quota])
        rest.append(of_label[quota:])
    return rng.permutation(np.concatenate(taken)), np.concatenate(rest)


@dataclass(frozen=True)
class AttackOutcome:
    """One attack at one level: its fitting AUC and direction, and its metrics on evaluation data."""

    name: str
    fit_auc: float
    direction: int
    metrics: AttackMetrics

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fit_auc": self.fit_auc, "direction": self.direction, **self.metrics.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackOutcome:
        return cls(
            name=str(data["name"]),
            fit_auc=float(data["fit_auc"]),
            direction=int(data["direction"]),
            metrics=AttackMetrics.from_dict(data),
        )


@dataclass(frozen=True)
class LayerResult:
    """Membership risk of one level (a tap, or ``"output"``) from its strongest attack.

    ``attack`` was chosen on fitting data; ``metrics`` are its metrics on
    evaluation data, so ``metrics.attack_error`` is e_l. ``layer_risk`` is
    r_l = max(0, 1 − 2·e_l), with ``layer_risk_ci`` mapped from the attack
    error's interval. ``p_value`` is the permutation p-value of the chosen
    attack's AUC. ``attacks`` contains every attack of the level.
    """

    name: str
    attack: str
    metrics: AttackMetrics
    layer_risk: float
    layer_risk_ci: tuple[float, float] | None
    p_value: float | None
    attacks: tuple[AttackOutcome, ...]
    roc: dict[str, list[float]] | None = None

    @property
    def attack_error(self) -> float:
        return self.metrics.attack_error

    @property
    def auc(self) -> float:
        return self.metrics.auc

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "attack": self.attack,
            "layer_risk": self.layer_risk,
            "layer_risk_ci": None if self.layer_risk_ci is None else list(self.layer_risk_ci),
            "p_value": self.p_value,
            **self.metrics.to_dict(),
            "attacks": [outcome.to_dict() for outcome in self.attacks],
            "roc": self.roc,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerResult:
        risk_ci = data["layer_risk_ci"]
        return cls(
            name=str(data["name"]),
            attack=str(data["attack"]),
            metrics=AttackMetrics.from_dict(data),
            layer_risk=float(data["layer_risk"]),
            layer_risk_ci=None if risk_ci is None else (float(risk_ci[0]), float(risk_ci[1])),
            p_value=None if data["p_value"] is None else float(data["p_value"]),
            attacks=tuple(AttackOutcome.from_dict(item) for item in data["attacks"]),
            roc=data.get("roc"),
        )


@dataclass(frozen=True)
class NullBaseline:
    """Distribution of a statistic under permuted membership labels, and the observed value's p-value.

    ``p_value`` = (1 + #{permuted ≥ observed}) / (1 + n_permutations).
    ``values`` contains every permuted value, for plots.
    """

    statistic: str
    observed: float
    p_value: float | None
    n_permutations: int
    mean: float | None
    quantiles: dict[str, float]
    values: tuple[float, ...]
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "quantiles": dict(self.quantiles), "values": list(self.values)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NullBaseline:
        return cls(
            statistic=str(data["statistic"]),
            observed=float(data["observed"]),
            p_value=None if data["p_value"] is None else float(data["p_value"]),
            n_permutations=int(data["n_permutations"]),
            mean=None if data["mean"] is None else float(data["mean"]),
            quantiles={str(k): float(v) for k, v in data["quantiles"].items()},
            values=tuple(float(v) for v in data["values"]),
            seed=int(data["seed"]),
        )


@dataclass(frozen=True)
class Assessment:
    """Per-level membership risk of one model in one setting, with the peak and its null baseline.

    ``layers`` follows the taps in forward order; ``output`` is the model
    output level, named ``"output"``. ``peak_auc`` is the largest
    evaluation AUC over every tap × attack pair, found at ``peak_layer``
    with ``peak_attack``; ``null`` is its permutation baseline. ``split``
    gives the number of records in each part.
    """

    setting: str
    layers: tuple[LayerResult, ...]
    output: LayerResult
    peak_auc: float
    peak_layer: str
    peak_attack: str
    null: NullBaseline
    split: dict[str, int]

    def layer(self, name: str) -> LayerResult:
        """Return the result of the tap ``name`` (or of ``"output"``)."""
        for result in (*self.layers, self.output):
            if result.name == name:
                return result
        raise KeyError(f"no level named {name!r}; levels: {[r.name for r in self.layers]} and 'output'")

    def to_dict(self) -> dict[str, Any]:
        return {
            "setting": self.setting,
            "peak_auc": self.peak_auc,
            "peak_layer": self.peak_layer,
            "peak_attack": self.peak_attack,
            "null": self.null.to_dict(),
            "split": dict(self.split),
            "layers": [layer.to_dict() for layer in self.layers],
            "output": self.output.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Assessment:
        return cls(
            setting=str(data["setting"]),
            layers=tuple(LayerResult.from_dict(item) for item in data["layers"]),
            output=LayerResult.from_dict(data["output"]),
            peak_auc=float(data["peak_auc"]),
            peak_layer=str(data["peak_layer"]),
            peak_attack=str(data["peak_attack"]),
            null=NullBaseline.from_dict(data["null"]),
            split={str(k): int(v) for k, v in data["split"].items()},
        )


def assess_held_out(
    representations: Representations,
    labels: np.ndarray,
    is_member: np.ndarray,
    *,
    num_classes: int,
    config: AttackConfig = AttackConfig(),
    progress: bool = False,
) -> Assessment:
    """Fit the attacks on part of one model's members and non-members and evaluate them on the rest.

    ``representations`` covers every record; ``labels`` and ``is_member``
    (bool) have one entry per record.
    """
    split = split_records(
        labels, is_member, reference_fraction=config.reference_fraction, fit_fraction=config.fit_fraction, seed=config.seed
    )
    fitted = fit_level_attacks(
        representations, labels, is_member, split, num_classes=num_classes, config=config, progress=progress
    )
    return evaluate_level_attacks(
        fitted,
        representations.subset(split.evaluate),
        labels[split.evaluate],
        is_member[split.evaluate],
        setting="held_out",
        config=config,
        split_sizes=split.sizes(),
        progress=progress,
    )


def fit_level_attacks(
    representations: Representations,
    labels: np.ndarray,
    is_member: np.ndarray,
    split: RecordSplit,
    *,
    num_classes: int,
    config: AttackConfig,
    progress: bool = False,
) -> dict[str, LayerAttacks]:
    """Fit the attacks of every tap and of the output on the reference, train and calibrate parts."""
    fitted: dict[str, LayerAttacks] = {}
    levels = [*representations.taps, OUTPUT]
    for index, level in enumerate(tqdm(levels, desc="fit attacks", unit="level", disable=not progress, leave=False)):
        features = representations.outputs if level == OUTPUT else representations.features[level]
        attacks = LayerAttacks(
            "output" if level == OUTPUT else "ir",
            config.output_attacks if level == OUTPUT else config.attacks,
            num_classes=num_classes,
            n_neighbours=config.n_neighbours,
            max_components=config.max_components,
            seed=config.seed + index,
        )
        fitted[level] = attacks.fit(
            (features[split.reference], labels[split.reference]),
            (features[split.train], labels[split.train], is_member[split.train]),
            (features[split.calibrate], labels[split.calibrate], is_member[split.calibrate]),
        )
        logger.info("fitted attacks at %s: chosen %s (fit AUC %.3f)", level, attacks.chosen, attacks.fit_auc[attacks.chosen])
    return fitted


def evaluate_level_attacks(
    fitted: dict[str, LayerAttacks],
    representations: Representations,
    labels: np.ndarray,
    is_member: np.ndarray,
    *,
    setting: str,
    config: AttackConfig,
    split_sizes: dict[str, int],
    progress: bool = False,
) -> Assessment:
    """Score every record with the fitted attacks and compute metrics, CIs and the null baseline.

    ``representations`` holds only the evaluation records (balanced);
    ``fitted`` maps each tap and ``"output"`` to its fitted attacks.
    """
    if setting not in SETTINGS:
        raise ConfigError(f"setting must be one of {list(SETTINGS)}; got {setting!r}")
    scores: dict[tuple[str, str], np.ndarray] = {}
    levels = [*representations.taps, OUTPUT]
    for level in levels:
        features = representations.outputs if level == OUTPUT else representations.features[level]
        for name, values in fitted[level].score(features, labels).items():
            scores[(level, name)] = values

    permuted_aucs = _permuted_aucs(scores, is_member, config.n_permutations, config.seed)

    results: dict[str, LayerResult] = {}
    for index, level in enumerate(tqdm(levels, desc="metrics", unit="level", disable=not progress, leave=False)):
        results[level] = _level_result(level, fitted[level], scores, is_member, permuted_aucs, config, index)

    tap_pairs = [(level, attack.name) for level in representations.taps for attack in results[level].attacks]
    if not tap_pairs:
        raise ConfigError("an assessment needs at least one tap")
    observed = {pair: next(o for o in results[pair[0]].attacks if o.name == pair[1]).metrics.auc for pair in tap_pairs}
    peak_layer, peak_attack = max(tap_pairs, key=observed.__getitem__)
    peak_auc = observed[(peak_layer, peak_attack)]
    null_values = np.max(np.stack([permuted_aucs[pair] for pair in tap_pairs]), axis=0) if config.n_permutations else None

    return Assessment(
        setting=setting,
        layers=tuple(results[tap] for tap in representations.taps),
        output=results[OUTPUT],
        peak_auc=peak_auc,
        peak_layer=peak_layer,
        peak_attack=peak_attack,
        null=_null_baseline("peak_auc", peak_auc, null_values, config.seed),
        split={**split_sizes, "members": int(is_member.sum()), "non_members": int((~is_member).sum())},
    )


def _level_result(
    level: str,
    attacks: LayerAttacks,
    scores: dict[tuple[str, str], np.ndarray],
    is_member: np.ndarray,
    permuted_aucs: dict[tuple[str, str], np.ndarray],
    config: AttackConfig,
    level_index: int,
) -> LayerResult:
    outcomes = []
    for attack_index, (name, attack) in enumerate(attacks.attacks.items()):
        values = scores[(level, name)]
        metrics = compute_metrics(
            values[is_member],
            values[~is_member],
            threshold=attacks.thresholds[name],
            n_bootstrap=config.n_bootstrap,
            ci_level=config.ci_level,
            seed=config.seed + 1000 * level_index + attack_index,
        )
        outcomes.append(AttackOutcome(name=name, fit_auc=attacks.fit_auc[name], direction=attack.direction, metrics=metrics))

    chosen = next(outcome for outcome in outcomes if outcome.name == attacks.chosen)
    error = chosen.metrics.attack_error
    risk_ci = None
    if "attack_error" in chosen.metrics.ci:
        error_low, error_high = chosen.metrics.ci["attack_error"]
        risk_ci = (max(0.0, 1 - 2 * error_high), max(0.0, 1 - 2 * error_low))
    p_value = None
    if config.n_permutations:
        p_value = _p_value(chosen.metrics.auc, permuted_aucs[(level, chosen.name)])
    chosen_scores = scores[(level, chosen.name)]
    fpr, tpr, _ = roc_curve_exact(chosen_scores[is_member], chosen_scores[~is_member])
    return LayerResult(
        name=level,
        attack=chosen.name,
        metrics=chosen.metrics,
        layer_risk=max(0.0, 1 - 2 * error),
        layer_risk_ci=risk_ci,
        p_value=p_value,
        attacks=tuple(outcomes),
        roc=compact_roc(fpr, tpr),
    )


def compact_roc(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 300) -> dict[str, list[float]]:
    """Thin an exact ROC to about ``max_points`` points for storage, keeping every point at FPR ≤ 5%.

    The low-FPR region is what log-scale ROC plots and TPR at low FPR read,
    so it is kept exactly; above it, points are taken at regular intervals.
    The first and last points are always kept.
    """
    low = np.flatnonzero(fpr <= 0.05)
    high = np.flatnonzero(fpr > 0.05)
    budget = max(2, max_points - len(low))
    if len(high) > budget:
        high = high[np.linspace(0, len(high) - 1, budget).round().astype(int)]
    keep = np.unique(np.r_[low, high, 0, len(fpr) - 1])
    return {"fpr": [float(v) for v in fpr[keep]], "tpr": [float(v) for v in tpr[keep]]}


def _permuted_aucs(
    scores: dict[tuple[str, str], np.ndarray], is_member: np.ndarray, n_permutations: int, seed: int
) -> dict[tuple[str, str], np.ndarray]:
    """Return the AUC of every score vector under ``n_permutations`` shared permutations of the labels.

    The same permutations are used for every (level, attack) pair, so the
    maximum over pairs of one permutation repeats the selection of the peak.
    """
    if n_permutations == 0:
        return {}
    n_members = int(is_member.sum())
    n_non_members = len(is_member) - n_members
    rng = np.random.default_rng([seed, 7919])
    # Each row marks a uniformly random set of n_members records as members.
    member_masks = (np.argsort(rng.random((n_permutations, len(is_member))), axis=1) < n_members).astype(np.float64)

    pairs = list(scores)
    ranks = np.stack([rankdata(scores[pair]) for pair in pairs])
    rank_sums = ranks @ member_masks.T
    aucs = (rank_sums - n_members * (n_members + 1) / 2) / (n_members * n_non_members)
    return {pair: aucs[i] for i, pair in enumerate(pairs)}


def _p_value(observed: float, null_values: np.ndarray) -> float:
    # A small tolerance keeps ties between observed and permuted AUCs counted as "at least as large".
    return float((1 + np.sum(null_values >= observed - 1e-12)) / (1 + len(null_values)))


def _null_baseline(statistic: str, observed: float, values: np.ndarray | None, seed: int) -> NullBaseline:
    if values is None:
        return NullBaseline(statistic, observed, None, 0, None, {}, (), seed)
    return NullBaseline(
        statistic=statistic,
        observed=observed,
        p_value=_p_value(observed, values),
        n_permutations=len(values),
        mean=float(values.mean()),
        quantiles={repr(q): float(np.quantile(values, q)) for q in NULL_QUANTILES},
        values=tuple(float(v) for v in values),
        seed=seed,
    )
