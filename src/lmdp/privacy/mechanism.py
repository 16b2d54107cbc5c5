"""The immutable record of what one private training run does at each step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from lmdp.errors import ConfigError
from lmdp.models.layer_map import HEAD, LayerMap
from lmdp.privacy.accounting import ACCOUNTANTS


@dataclass(frozen=True)
class PrivacyMechanism:
    """σ, C, q, the layer weights and the accountant of one LM-DP-SGD run.

    Privacy invariant: every layer weight lies in (0, 1] and is applied to its
    block of the per-example gradient *before* the global clip to
    ``max_grad_norm``. Each record's weighted, clipped contribution then has
    L2 norm at most ``max_grad_norm`` whatever the weights, so the L2
    sensitivity of the summed gradient is ``max_grad_norm`` and the noise std
    ``noise_multiplier * max_grad_norm`` gives exactly the DP-SGD guarantee.
    The weights must come from public data only. Uniform weights of 1 are
    DP-SGD.
    """

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    expected_batch_size: float
    layer_weights: Mapping[str, float] = field(default_factory=dict)
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        problems = []
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            problems.append(f"noise_multiplier must be a finite number ≥ 0; got {self.noise_multiplier}")
        if not self.max_grad_norm > 0:
            problems.append(
                f"max_grad_norm must be > 0 (use math.inf for no clipping, without privacy); got {self.max_grad_norm}"
            )
        if not 0 < self.sample_rate <= 1:
            problems.append(f"sample_rate must be in (0, 1]; got {self.sample_rate}")
        if not self.expected_batch_size > 0:
            problems.append(f"expected_batch_size must be > 0; got {self.expected_batch_size}")
        if self.accountant not in ACCOUNTANTS:
            problems.append(f"accountant must be one of {list(ACCOUNTANTS)}; got {self.accountant!r}")
        for name, weight in self.layer_weights.items():
            if not (isinstance(weight, (int, float)) and 0 < weight <= 1):
                problems.append(f"layer_weights[{name!r}] must be in (0, 1]; got {weight}")
        if problems:
            raise ConfigError("Invalid privacy mechanism: " + "; ".join(problems))
        object.__setattr__(self, "layer_weights", dict(self.layer_weights))

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the summed clipped gradient: ``max_grad_norm`` (weights ≤ 1 act before the clip)."""
        return self.max_grad_norm

    @property
    def noise_std(self) -> float:
        """Standard deviation of the Gaussian noise added to each coordinate of the summed gradient."""
        if self.noise_multiplier == 0:
            return 0.0  # also for an unbounded clip, where σ·C would be 0·inf
        return self.noise_multiplier * self.max_grad_norm

    def to_dict(self) -> dict:
        return {
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "sample_rate": self.sample_rate,
            "expected_batch_size": self.expected_batch_size,
            "layer_weights": dict(self.layer_weights),
            "accountant": self.accountant,
            "sensitivity": self.sensitivity,
            "noise_std": self.noise_std,
        }


def resolve_layer_weights(layer_map: LayerMap, layer_weights: Mapping[str, float] | None) -> dict[str, float]:
    """Return one weight per group of ``layer_map``: given weights for every tap, head 1 unless given.

    ``None`` means uniform weights of 1 (DP-SGD).

    Raises:
        ConfigError: for unknown names, missing taps, or weights outside (0, 1].
    """
    if layer_weights is None:
        return {name: 1.0 for name in layer_map.group_names}
    layer_weights = dict(layer_weights)
    problems = []
    unknown = sorted(set(layer_weights) - set(layer_map.group_names))
    if unknown:
        problems.append(f"unknown layer names {unknown}; expected the taps {list(layer_map.taps)} and optionally {HEAD!r}")
    missing = [tap for tap in layer_map.taps if tap not in layer_weights]
    if missing:
        problems.append(
            f"missing weights for taps {missing}; give one weight per tap ({len(layer_map.taps)} taps: {list(layer_map.taps)})"
        )
    for name, weight in layer_weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 1:
            problems.append(
                f"layer_weights[{name!r}] must be in (0, 1] so the clip still bounds the sensitivity; got {weight!r}"
            )
    if problems:
        raise ConfigError("Invalid layer_weights: " + "; ".join(problems))
    resolved = {tap: float(layer_weights[tap]) for tap in layer_map.taps}
    resolved[HEAD] = float(layer_weights.get(HEAD, 1.0))
    return resolved
