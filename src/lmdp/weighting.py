"""Phase B of LM-DP-SGD: layer weights from the attack errors of a risk profile.

Two policies map the per-layer attack error e_l (or layer risk
r_l = max(0, 1 − 2·e_l)) to a weight w_l in (0, 1]:

- ``error_proportional`` (the default of LM-DP-SGD, Meng et al.,
  arXiv:2602.22611): w_l = max(min_weight, (e_l / max_k e_k) ** gamma).
  The safest layer gets 1. ``gamma = 0`` gives every layer 1 (plain
  DP-SGD); a larger ``gamma`` spreads the weights further apart.
- ``relative_risk``: w_l = max(min_weight, 1 − beta · r_l / max_k r_k).
  The riskiest layer gets max(min_weight, 1 − beta), a layer with no
  measured risk gets 1.

Training scales each layer's block of the per-example gradient by w_l
before the global clip, so the sensitivity stays ``max_grad_norm`` only if
every w_l is in (0, 1]; ``check_layer_weights`` enforces that.

The head group (parameters after the last tap) takes the weight of the
last tap when that tap's output is the model's output (``output_tap`` of
the profile, e.g. the ``logits`` tap of every zoo model), and 1 otherwise.

Attack errors near 0.5 with small differences give weights near 1 under
``gamma = 1``, so LM-DP-SGD then barely differs from DP-SGD. The profile
carries confidence intervals for that reason; ``overlapping_layers`` lists
the pairs of layers whose attack-error intervals overlap.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from lmdp.errors import ConfigError
from lmdp.models.layer_map import HEAD
from lmdp.risk import RiskProfile

logger = logging.getLogger(__name__)

POLICIES: tuple[str, ...] = ("error_proportional", "relative_risk")


@dataclass(frozen=True)
class WeightingPolicy:
    """A weighting policy and its parameters (``beta`` is used by ``relative_risk`` only).

    Ranges: ``gamma`` ≥ 0 and finite, 0 < ``min_weight`` ≤ 1, 0 ≤ ``beta`` ≤ 1.
    """

    name: str = "error_proportional"
    gamma: float = 1.0
    min_weight: float = 0.1
    beta: float = 0.5

    def __post_init__(self) -> None:
        problems = []
        if self.name not in POLICIES:
            problems.append(f"policy must be one of {list(POLICIES)}; got {self.name!r}")
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            problems.append(f"gamma must be a finite number >= 0 (0 gives plain DP-SGD); got {self.gamma}")
        if not 0 < self.min_weight <= 1:
            problems.append(
                f"min_weight must be in (0, 1]: a weight of 0 would drop the layer's gradient; got {self.min_weight}"
            )
        if not 0 <= self.beta <= 1:
            problems.append(f"beta must be in [0, 1] (0 gives plain DP-SGD); got {self.beta}")
        if problems:
            raise ConfigError("Invalid weighting policy: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def error_proportional_weights(
    attack_errors: Mapping[str, float], *, gamma: float, min_weight: float
) -> dict[str, float]:
    """Return w_l = max(min_weight, (e_l / max_k e_k) ** gamma) for each layer.

    When every attack error is 0 (every layer fully leaks), no layer is
    safer than another, so every weight is 1.
    """
    largest = max(attack_errors.values())
    if largest <= 0:
        logger.warning("every layer has attack_error 0, so no layer is safer than another; all weights are 1")
        return {name: 1.0 for name in attack_errors}
    return {name: max(min_weight, (error / largest) ** gamma) for name, error in attack_errors.items()}


def relative_risk_weights(layer_risks: Mapping[str, float], *, beta: float, min_weight: float) -> dict[str, float]:
    """Return w_l = max(min_weight, 1 − beta · r_l / max_k r_k) for each layer; all 1 when no layer has risk."""
    largest = max(layer_risks.values())
    if largest <= 0:
        return {name: 1.0 for name in layer_risks}
    return {name: max(min_weight, 1.0 - beta * risk / largest) for name, risk in layer_risks.items()}


def check_layer_weights(layer_weights: Mapping[str, float], taps: Sequence[str]) -> None:
    """Raise ConfigError unless there is one weight in (0, 1] per tap, plus an optional ``"head"``."""
    problems = []
    missing = [tap for tap in taps if tap not in layer_weights]
    if missing:
        problems.append(f"missing weights for taps {missing}")
    unknown = sorted(set(layer_weights) - {*taps, HEAD})
    if unknown:
        problems.append(f"weights for unknown layers {unknown}; the layers are {[*taps, HEAD]}")
    for name, weight in layer_weights.items():
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 < weight <= 1:
            problems.append(f"layer_weights[{name!r}] must be in (0, 1] so the clip bounds the sensitivity; got {weight!r}")
    if problems:
        raise ConfigError("Invalid layer_weights: " + "; ".join(problems))


def compute_layer_weights(profile: RiskProfile, policy: WeightingPolicy = WeightingPolicy()) -> dict[str, float]:
    """Return the layer weights of ``profile`` under ``policy``: one per tap, plus ``"head"``."""
    if policy.name == "error_proportional":
        weights = error_proportional_weights(profile.attack_errors, gamma=policy.gamma, min_weight=policy.min_weight)
    else:
        weights = relative_risk_weights(profile.layer_risks, beta=policy.beta, min_weight=policy.min_weight)

    last_tap = profile.taps[-1]
    weights[HEAD] = weights[last_tap] if profile.output_tap == last_tap else 1.0
    check_layer_weights(weights, profile.taps)

    overlapping = overlapping_layers(profile)
    if overlapping and len(overlapping) == len(profile.taps) * (len(profile.taps) - 1) // 2:
        logger.warning(
            "the attack-error confidence intervals of all layers overlap, so the differences between "
            "layer weights %s may be noise; use more public (shadow) records to narrow the intervals",
            {name: round(w, 3) for name, w in weights.items() if name != HEAD},
        )
    return weights


def assign_layer_weights(profile: RiskProfile, policy: WeightingPolicy = WeightingPolicy()) -> RiskProfile:
    """Return a copy of ``profile`` with the layer weights of ``policy`` and the policy itself."""
    return profile.with_weights(compute_layer_weights(profile, policy), policy.to_dict())


def overlapping_layers(profile: RiskProfile) -> list[tuple[str, str]]:
    """Return the pairs of taps whose attack-error confidence intervals overlap."""
    intervals = {layer.name: layer.metrics.ci.get("attack_error") for layer in profile.risk.layers}
    pairs = []
    taps = list(profile.taps)
    for i, first in enumerate(taps):
        for second in taps[i + 1 :]:
            a, b = intervals[first], intervals[second]
            if a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]:
                pairs.append((first, second))
    return pairs
