"""The L2 sensitivity of one LM-DP-SGD step, measured on the optimizer that will run it.

The accountants treat each step as the Gaussian mechanism on a sum whose L2
sensitivity is ``max_grad_norm`` (C) with noise std σ·C. That is true when
the layer weights act before one global clip: whatever the weights, a
record's contribution then has norm at most C. Other orders break it. A
weight above 1 applied after the clip gives a sensitivity of max_l w_l·C, and
clipping each of L groups to C separately gives √L·C.

``check_sensitivity`` therefore does not trust the configuration. It feeds
the optimizer's own clipping code single records with large per-example
gradients and reads back each record's contribution to the clipped sum. It
then draws noise with the optimizer's own ``add_noise`` and raises before
training when that noise is smaller than σ times the measured sensitivity.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from lmdp.errors import ConfigError

if TYPE_CHECKING:
    from lmdp.privacy.optimizer import LMDPOptimizer

logger = logging.getLogger(__name__)

WEIGHTING_ORDERS = ("before_clip", "after_clip", "unrecognised")
"""Orders of layer weighting and global clip that the probe records can reveal; the last means neither."""

RELATIVE_TOLERANCE = 1e-4
"""Relative slack on contribution norms: float32 rounding and the 1e-6 added to norms stay far below it."""

NOISE_SAMPLES = 100_000
"""Noise coordinates drawn to measure the noise std; its relative standard error is then 1/√(2·n) ≈ 0.22%."""

_NOISE_Z = 6.0
"""Standard errors of slack before a measured noise std counts as too small (false alarm rate about 1e-9)."""

_PROBE_SEED = 20_240_531


class SensitivityError(ConfigError):
    """The noise an optimizer adds is smaller than its noise multiplier times the sensitivity it was measured to have."""


@dataclass(frozen=True)
class SensitivityCheck:
    """Measured L2 sensitivity and noise of one optimizer.

    ``sensitivity`` is the largest L2 norm of one record's clipped, weighted
    contribution, and ``noise_std`` the measured std of the noise per
    coordinate of the summed gradient. The accountant's guarantee holds when
    ``effective_noise_multiplier`` (``noise_std / sensitivity``) is at least
    the accounted ``noise_multiplier``.
    """

    sensitivity: float
    max_grad_norm: float
    weighting: str
    noise_multiplier: float
    noise_std: float
    expected_noise_std: float
    effective_noise_multiplier: float
    noise_samples: int
    probe_records: int

    def to_dict(self) -> dict:
        return asdict(self)


def check_sensitivity(optimizer: LMDPOptimizer) -> SensitivityCheck:
    """Measure the sensitivity and noise of ``optimizer`` and raise when the noise is too small for it.

    ``optimizer`` is an ``LMDPOptimizer`` (or a subclass) before its first
    step. The probe leaves no gradient, accumulated sum or step behind, and
    draws its noise from a private generator, so seeded runs are unchanged.

    Raises:
        SensitivityError: when one record can contribute more than
            ``max_grad_norm``, when the probes match no known clipping order,
            or when the measured noise std is below σ times the sensitivity.
    """
    mechanism = optimizer.mechanism
    max_grad_norm = mechanism.max_grad_norm
    if not math.isfinite(max_grad_norm) or not optimizer.params:
        # No clip (no privacy claim), or nothing to train: there is nothing to measure.
        return SensitivityCheck(
            sensitivity=max_grad_norm if optimizer.params else 0.0,
            max_grad_norm=max_grad_norm,
            weighting="before_clip",
            noise_multiplier=mechanism.noise_multiplier,
            noise_std=mechanism.noise_std,
            expected_noise_std=mechanism.noise_std,
            effective_noise_multiplier=mechanism.noise_multiplier,
            noise_samples=0,
            probe_records=0,
        )

    contributions, group_weights = _probe_contributions(optimizer)
    weighting = _weighting_order(contributions, group_weights, max_grad_norm)
    if weighting == "before_clip":
        sensitivity = max_grad_norm
    elif weighting == "after_clip":
        sensitivity = max(group_weights) * max_grad_norm
    else:
        sensitivity = max(contributions)  # only a lower estimate of the supremum for an unknown order
    noise_std, noise_samples = _measure_noise_std(optimizer)
    check = SensitivityCheck(
        sensitivity=sensitivity,
        max_grad_norm=max_grad_norm,
        weighting=weighting,
        noise_multiplier=mechanism.noise_multiplier,
        noise_std=noise_std,
        expected_noise_std=mechanism.noise_multiplier * sensitivity,
        effective_noise_multiplier=noise_std / sensitivity if sensitivity > 0 else math.inf,
        noise_samples=noise_samples,
        probe_records=len(contributions),
    )
    _raise_on_mismatch(check, contributions)
    logger.info(
        "sensitivity check: L2 sensitivity %.6g (max_grad_norm %.6g, weights %s), noise std %.6g measured over "
        "%d draws, noise_multiplier × sensitivity = %.6g",
        check.sensitivity,
        max_grad_norm,
        weighting.replace("_", " the "),
        check.noise_std,
        check.noise_samples,
        check.expected_noise_std,
    )
    return check


def _raise_on_mismatch(check: SensitivityCheck, contributions: list[float]) -> None:
    if check.sensitivity > check.max_grad_norm * (1 + RELATIVE_TOLERANCE):
        raise SensitivityError(
            f"one record can contribute an L2 norm of {check.sensitivity:.6g} to the clipped sum, more than "
            f"max_grad_norm={check.max_grad_norm:.6g} that the noise std assumes (probe contributions "
            f"{[round(c, 6) for c in contributions]}). Apply the layer weights, each in (0, 1], before one "
            "global clip of the whole per-example gradient"
        )
    if check.weighting == "unrecognised":
        raise SensitivityError(
            f"the probe records' contributions {[round(c, 6) for c in contributions]} match neither layer "
            f"weights before the global clip (each {check.max_grad_norm:.6g}) nor weights after it, so the "
            "sensitivity cannot be derived; check the optimizer's clipping stages"
        )
    # The noise is σ·sensitivity on average; a shortfall beyond a few standard errors is a real one.
    slack = _NOISE_Z / math.sqrt(2 * check.noise_samples)
    if check.noise_std < check.expected_noise_std * (1 - slack):
        raise SensitivityError(
            f"the optimizer adds noise of std {check.noise_std:.6g} per coordinate, but noise_multiplier="
            f"{check.noise_multiplier:.6g} times the L2 sensitivity {check.sensitivity:.6g} needs "
            f"{check.expected_noise_std:.6g}, so the reported ε would be too small. Draw the noise with std "
            "noise_multiplier × max_grad_norm"
        )
    if check.noise_std > check.expected_noise_std * (1 + slack):
        logger.warning(
            "the optimizer adds noise of std %.6g, more than noise_multiplier × sensitivity = %.6g, so the privacy "
            "account is valid but loose (effective noise multiplier %.6g)",
            check.noise_std,
            check.expected_noise_std,
            check.effective_noise_multiplier,
        )


def _probe_contributions(optimizer: LMDPOptimizer) -> tuple[list[float], list[float]]:
    """Return the contribution norm of each probe record and the weight of each probed group.

    One record per group carries a gradient in that group alone, and a last
    record spreads its gradient evenly over all groups. Every per-group
    gradient is large enough that its weighted norm is at least max(10·C, 1),
    so a working clip is active on every probe, and the 1e-6 the optimizer
    adds to norms changes no contribution by more than 1e-6 relative.
    """
    mechanism = optimizer.mechanism
    generator = torch.Generator().manual_seed(_PROBE_SEED)
    directions = {p: torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in optimizer.params}
    groups = {
        name: [p for p in optimizer.group_params[name] if p in directions]
        for name in optimizer.group_names
        if any(p in directions for p in optimizer.group_params[name])
    }
    group_weights = [mechanism.layer_weights[name] for name in groups]
    magnitude = max(10 * mechanism.max_grad_norm, 1.0) / min(group_weights)

    def block(params: list, norm: float) -> dict:
        total = math.sqrt(sum(float(directions[p].pow(2).sum()) for p in params))
        return {p: (directions[p] * (norm / total)).to(dtype=p.dtype, device=p.device) for p in params}

    records = [block(params, magnitude) for params in groups.values()]
    spread = {}
    for params in groups.values():
        spread.update(block(params, magnitude / math.sqrt(len(groups))))
    records.append(spread)
    contributions = [_record_contribution(optimizer, record) for record in records]
    return contributions, group_weights


def _record_contribution(optimizer: LMDPOptimizer, gradient: dict) -> float:
    """Run ``optimizer``'s clipping on one record with per-example ``gradient`` and return the norm it adds.

    The record is given both ways the optimizers read per-example data: as
    ``p.grad_sample`` (hooks mode) and as ``p._norm_sample`` with a loss whose
    gradient is ``gradient`` (ghost mode, which backpropagates the loss).
    """
    # NOTE: ``_norm_sample`` is the attribute Opacus 1.6's ghost-clipping
    # module fills and lmdp's ghost-mode optimizer reads.
    optimizer.zero_grad()
    params = optimizer.params
    had_norm_sample = {p: hasattr(p, "_norm_sample") for p in params}
    try:
        for p in params:
            g = gradient.get(p, torch.zeros_like(p))
            p.grad_sample = g.unsqueeze(0)
            p._norm_sample = torch.linalg.vector_norm(g).reshape(1)
        backward = getattr(optimizer, "backward", None)
        with torch.enable_grad():
            if callable(backward):
                loss = sum((gradient.get(p, torch.zeros_like(p)) * p).sum() for p in params)
                backward(loss.reshape(1))
            else:
                optimizer.clip_and_accumulate()
        summed = [p.summed_grad for p in params if p.summed_grad is not None]
        if not summed:
            raise SensitivityError(
                "the optimizer accumulated nothing for a probe record, so its sensitivity cannot be measured. "
                "It must clip per-example gradients given as p.grad_sample, or in backward(losses)"
            )
        return math.sqrt(sum(float(s.double().pow(2).sum()) for s in summed))
    finally:
        optimizer.zero_grad()
        for p in params:
            if had_norm_sample[p]:
                p._norm_sample = None
            elif hasattr(p, "_norm_sample"):
                del p._norm_sample


def _weighting_order(contributions: list[float], group_weights: list[float], max_grad_norm: float) -> str:
    """Name the clipping order the probe contributions show (see ``_probe_contributions`` for the records)."""

    def close(value: float, expected: float) -> bool:
        return abs(value - expected) <= RELATIVE_TOLERANCE * max_grad_norm

    if all(close(c, max_grad_norm) for c in contributions):
        return "before_clip"
    *single_group, spread = contributions
    # After the clip, the spread record (equal block norms) contributes C·sqrt(mean of w_l²).
    spread_after_clip = max_grad_norm * math.sqrt(sum(w * w for w in group_weights) / len(group_weights))
    if all(close(c, w * max_grad_norm) for c, w in zip(single_group, group_weights)) and close(spread, spread_after_clip):
        return "after_clip"
    return "unrecognised"


def _measure_noise_std(optimizer: LMDPOptimizer) -> tuple[float, int]:
    """Draw at least ``NOISE_SAMPLES`` noise coordinates with ``optimizer.add_noise`` and return their RMS and count.

    The noise has mean 0, so the RMS estimates its std. A private generator
    replaces the optimizer's own during the draws.
    """
    params = optimizer.params
    coordinates = sum(p.numel() for p in params)
    draws = max(1, math.ceil(NOISE_SAMPLES / coordinates))
    saved_generator = optimizer.generator
    optimizer.generator = torch.Generator(device=params[0].device).manual_seed(_PROBE_SEED)
    squared_sum = 0.0
    try:
        for _ in range(draws):
            optimizer.zero_grad()
            optimizer.add_noise()
            squared_sum += sum(float(p.grad.double().pow(2).sum()) for p in params)
    finally:
        optimizer.generator = saved_generator
        optimizer.zero_grad()
    samples = draws * coordinates
    return math.sqrt(squared_sum / samples), samples
