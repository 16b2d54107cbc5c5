"""Privacy accounting for the Poisson-subsampled Gaussian mechanism.

LM-DP-SGD has the same per-step mechanism as DP-SGD (sensitivity
``max_grad_norm``, Gaussian noise of std ``noise_multiplier * max_grad_norm``,
Poisson sampling at ``sample_rate``), so the standard accountants apply
unchanged. Both accountants come from Opacus 1.6:

- ``rdp``: Rényi DP of the sampled Gaussian mechanism (Mironov, Talwar and
  Zhang, arXiv:1908.10530) converted to (ε, δ) with the bound of Balle et al.
  (arXiv:2004.00010, Theorem 21) over orders 1.1 to 63.
- ``prv``: numerical composition of privacy loss random variables (Gopi, Lee
  and Wutschitz, arXiv:2106.02848); tighter, and an upper bound on ε up to
  ``eps_error``.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, compute_safe_domain_size

from lmdp.errors import ConfigError

logger = logging.getLogger(__name__)

ACCOUNTANTS = ("rdp", "prv")
RDP_ORDERS = tuple(RDPAccountant.DEFAULT_ALPHAS)
PRV_EPS_ERROR = 0.01
"""Default error of the PRV accountant's ε estimate; its ε is an upper bound within this error."""

_PRV_MIN_EPS_ERROR = 1e-3
"""Finest PRV error used by default; finer grids cost seconds per evaluation (4 s at 1e-4)."""

PRV_MAX_GRID_POINTS = 5_000_000
"""Largest grid on which the PRV accountant may discretise the privacy loss.

Opacus 1.6.0 keeps several float64 arrays of the grid's length at once: on
CPU it peaked at 0.9 GB for 1.4e7 points and at 10 GB for 6.4e7 points, so
this bound keeps one evaluation near 1 GB and a few seconds. Small noise
multipliers over many steps need far larger grids; ε then comes from RDP.
"""

CALIBRATION_TOLERANCE = 0.01
"""Calibration stops once ε at the returned σ lies in [target·(1 − tolerance), target]."""

_MAX_NOISE_MULTIPLIER = 1e4


@dataclass(frozen=True)
class Calibration:
    """Result of calibrating σ: the noise multiplier and the ε it reaches."""

    noise_multiplier: float
    epsilon: float
    delta: float
    sample_rate: float
    steps: int
    accountant: str

    def to_dict(self) -> dict:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "accountant": self.accountant,
        }


def create_accountant(accountant: str) -> IAccountant:
    """Return a fresh Opacus accountant for ``accountant`` (``"rdp"`` or ``"prv"``)."""
    if accountant == "rdp":
        return RDPAccountant()
    if accountant == "prv":
        return PRVAccountant()
    raise ConfigError(f"accountant must be one of {list(ACCOUNTANTS)}; got {accountant!r}")


def epsilon_from_history(
    history: list[tuple[float, float, int]], *, delta: float, accountant: str, eps_error: float | None = None
) -> float:
    """Return ε at ``delta`` after the steps in ``history`` ((σ, q, steps) entries).

    ``eps_error`` is the PRV accountant's error bound; RDP ignores it. By
    default PRV first runs with an error of 0.01 and, when ε < 1, again with
    an error of ε/100 (at least 1e-3), so the bound stays within about 1% of ε.
    When PRV's grid would exceed ``PRV_MAX_GRID_POINTS`` points, or PRV
    fails or returns no finite ε, the result is RDP's ε, which is also an
    upper bound. ε is never below 0.
    """
    history = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    if not history:
        return 0.0
    if any(s == 0 for s, _, _ in history):
        return math.inf  # no noise: no finite guarantee
    engine = create_accountant(accountant)
    engine.history = history
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if accountant == "rdp":
            epsilon = engine.get_epsilon(delta=delta, alphas=list(RDP_ORDERS))
        else:
            epsilon = _prv_epsilon_within_grid_limit(engine, delta=delta, eps_error=eps_error)
    for warning in caught:
        logger.debug("accountant %s: %s", accountant, warning.message)
    # Both accountants of Opacus 1.6.0 return ε < 0 for a large δ (about -0.3 at
    # δ = 0.3), but a mechanism that is (ε, δ)-DP for some ε < 0 is also (0, δ)-DP.
    return max(0.0, float(epsilon))


def _prv_epsilon(engine: IAccountant, *, delta: float, eps_error: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return engine.get_epsilon(delta=delta, eps_error=eps_error)


def _prv_epsilon_within_grid_limit(engine: IAccountant, *, delta: float, eps_error: float | None) -> float:
    """Return PRV's ε, or RDP's ε when PRV's grid would exceed ``PRV_MAX_GRID_POINTS`` points.

    Both accountants give upper bounds on ε, so the fallback never reports a
    smaller ε than the truth, only a looser one.
    """
    coarse_error = eps_error or PRV_EPS_ERROR
    points = prv_grid_points(engine.history, delta=delta, eps_error=coarse_error)
    if points > PRV_MAX_GRID_POINTS:
        logger.info(
            "accountant prv would need a grid of %.3g points (limit %d) for history %s; reporting RDP's ε instead",
            points,
            PRV_MAX_GRID_POINTS,
            engine.history,
        )
        return _rdp_epsilon(engine.history, delta=delta)

    try:
        epsilon = _prv_epsilon(engine, delta=delta, eps_error=coarse_error)
        if eps_error is None and epsilon < 1:
            finer = max(_PRV_MIN_EPS_ERROR, epsilon / 100)
            # The mesh shrinks in proportion to eps_error and the span does not
            # grow, so this bounds the finer grid without another RDP evaluation.
            if points * coarse_error / finer <= PRV_MAX_GRID_POINTS:
                epsilon = _prv_epsilon(engine, delta=delta, eps_error=finer)
    except (ValueError, RuntimeError) as error:
        # Opacus 1.6.0 raises ValueError when δ is so small that float rounding
        # dominates (δ = 1e-15) and RuntimeError when δ is so close to 1 that
        # its search for ε fails.
        logger.info("accountant prv failed for history %s at delta=%g (%s); reporting RDP's ε instead", engine.history, delta, error)
        return _rdp_epsilon(engine.history, delta=delta)
    if not math.isfinite(epsilon):
        logger.info("accountant prv returned ε=%s for history %s; reporting RDP's ε instead", epsilon, engine.history)
        return _rdp_epsilon(engine.history, delta=delta)
    return epsilon


def _rdp_epsilon(history: list[tuple[float, float, int]], *, delta: float) -> float:
    engine = create_accountant("rdp")
    engine.history = list(history)
    return engine.get_epsilon(delta=delta, alphas=list(RDP_ORDERS))


def prv_grid_points(history: list[tuple[float, float, int]], *, delta: float, eps_error: float) -> float:
    """Return the number of points of the grid on which Opacus's PRV accountant discretises ``history``.

    The grid spans ±L, with L from Opacus's RDP-based ``compute_safe_domain_size``
    (Gopi et al., arXiv:2106.02848, Remark 5.6), at a mesh of
    eps_error / sqrt(steps · log(12/δ_err) / 2) with δ_err = δ/1000.
    """
    # NOTE: this mirrors PRVAccountant._get_domain and the default delta_error
    # of PRVAccountant.get_epsilon in Opacus 1.6.0; recheck it when Opacus changes.
    delta_error = delta / 1000
    prvs = [PoissonSubsampledGaussianPRV(sample_rate, noise_multiplier) for noise_multiplier, sample_rate, _ in history]
    steps = [int(n) for _, _, n in history]
    with warnings.catch_warnings():
        # Opacus's RDP warns when the best order is at either end of its range; that does not matter for a span.
        warnings.simplefilter("ignore")
        half_width = compute_safe_domain_size(
            prvs=prvs, max_self_compositions=steps, eps_error=eps_error, delta_error=delta_error
        )
    mesh = eps_error / math.sqrt(sum(steps) * math.log(12 / delta_error) / 2)
    return 2 * half_width / mesh


def compute_epsilon(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """Return ε at ``delta`` after ``steps`` steps of the sampled Gaussian mechanism."""
    check_accounting_inputs(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant)
    return epsilon_from_history([(noise_multiplier, sample_rate, steps)], delta=delta, accountant=accountant)


def smallest_reachable_epsilon(
    *, delta: float, sample_rate: float, steps: int, accountant: str, eps_error: float | None = None
) -> float:
    """Return the infimum of ε the accountant can certify as σ grows without bound.

    For RDP this is the conversion term alone (RDP → 0 as σ → ∞):
    min over orders α of log((α − 1)/α) − (log δ + log α)/(α − 1), which is
    ≈ 0.103 at δ = 1e-5 with orders up to 63. For PRV it is the accountant's
    error floor, since its ε is an upper bound within ``eps_error``.
    """
    if accountant == "rdp":
        orders = list(RDP_ORDERS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            epsilon, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=np.zeros(len(orders)), delta=delta)
        return max(0.0, float(epsilon))
    return epsilon_from_history(
        [(_MAX_NOISE_MULTIPLIER, sample_rate, steps)], delta=delta, accountant=accountant, eps_error=eps_error
    )


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    tolerance: float = CALIBRATION_TOLERANCE,
) -> Calibration:
    """Find the smallest σ (up to ``tolerance``) whose ε after ``steps`` steps is at most the target.

    Bisection on log σ, so that ε(σ) ≤ ``target_epsilon`` always holds for the
    returned σ and ε(σ) ≥ ``target_epsilon`` · (1 − ``tolerance``), with ε as
    ``compute_epsilon`` reports it.

    Raises:
        ConfigError: when the target is below the smallest ε the accountant
            can certify with any σ; the message gives that ε and the way out.
    """
    check_accounting_inputs(noise_multiplier=0.0, sample_rate=sample_rate, steps=steps, delta=target_delta, accountant=accountant)
    if not target_epsilon > 0 or not math.isfinite(target_epsilon):
        raise ConfigError(f"target_epsilon must be a finite number > 0; got {target_epsilon}")

    def epsilon_at(sigma: float) -> float:
        return epsilon_from_history([(sigma, sample_rate, steps)], delta=target_delta, accountant=accountant)

    floor = smallest_reachable_epsilon(delta=target_delta, sample_rate=sample_rate, steps=steps, accountant=accountant)
    if target_epsilon <= floor:
        way_out = (
            "raise target_epsilon or target_delta, or use accountant 'prv', whose bound is tighter"
            if accountant == "rdp"
            else "raise target_epsilon or target_delta"
        )
        raise ConfigError(
            f"target_epsilon={target_epsilon} cannot be reached with accountant {accountant!r} at "
            f"delta={target_delta}, sample_rate={sample_rate}, steps={steps}: the smallest ε it can certify "
            f"with any noise_multiplier is {floor:.4g}; {way_out}"
        )

    low, high = 0.0, 1.0
    epsilon_high = epsilon_at(high)
    while epsilon_high > target_epsilon:
        low, high = high, high * 2
        if high > _MAX_NOISE_MULTIPLIER:
            raise ConfigError(
                f"target_epsilon={target_epsilon} needs noise_multiplier > {_MAX_NOISE_MULTIPLIER:g} with accountant "
                f"{accountant!r} (delta={target_delta}, sample_rate={sample_rate}, steps={steps}); "
                "raise target_epsilon, or lower sample_rate or steps"
            )
        epsilon_high = epsilon_at(high)

    for _ in range(100):
        if epsilon_high >= target_epsilon * (1 - tolerance):
            break
        middle = math.sqrt(low * high) if low > 0 else high / 2
        epsilon_middle = epsilon_at(middle)
        if epsilon_middle <= target_epsilon:
            high, epsilon_high = middle, epsilon_middle
        else:
            low = middle
        if high - low < 1e-9 * high:
            break
    return Calibration(
        noise_multiplier=high,
        epsilon=epsilon_high,
        delta=target_delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant,
    )


def steps_for_epochs(*, epochs: float, sample_rate: float) -> int:
    """Return the number of logical steps in ``epochs`` passes at ``sample_rate``: floor(epochs / q)."""
    if not epochs > 0:
        raise ConfigError(f"epochs must be > 0; got {epochs}")
    return int(epochs / sample_rate)


def check_accounting_inputs(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str) -> None:
    """Raise one ConfigError naming every accounting input that is out of range."""
    problems = []
    if not (isinstance(noise_multiplier, (int, float)) and noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        problems.append(f"noise_multiplier must be a finite number ≥ 0; got {noise_multiplier}")
    if not (isinstance(sample_rate, (int, float)) and 0 < sample_rate <= 1):
        problems.append(f"sample_rate must be in (0, 1]; got {sample_rate}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        problems.append(f"steps must be an integer ≥ 0; got {steps!r}")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        problems.append(f"delta must be in (0, 1); got {delta}")
    if accountant not in ACCOUNTANTS:
        problems.append(f"accountant must be one of {list(ACCOUNTANTS)}; got {accountant!r}")
    if problems:
        raise ConfigError("; ".join(problems))
