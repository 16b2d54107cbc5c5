"""Accounting against published values and closed forms, and calibration."""

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from lmdp.errors import ConfigError
from lmdp.privacy import calibrate_noise_multiplier, compute_epsilon, smallest_reachable_epsilon


def analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact ε of one Gaussian mechanism with sensitivity 1 and std σ (Balle and Wang, ICML 2018, Theorem 8)."""

    def delta_at(eps):
        return norm.cdf(-eps * sigma + 1 / (2 * sigma)) - math.exp(eps) * norm.cdf(-eps * sigma - 1 / (2 * sigma))

    return brentq(lambda eps: delta_at(eps) - delta, 0, 100)


def test_rdp_matches_tf_privacy_mnist_tutorial():
    # TF Privacy's MNIST DP-SGD tutorial: N = 60,000, batch 250, σ = 1.1,
    # 2 epochs (480 steps), δ = 1e-5 prints ε ≈ 0.80 with RDP.
    epsilon = compute_epsilon(noise_multiplier=1.1, sample_rate=250 / 60_000, steps=480, delta=1e-5, accountant="rdp")
    assert epsilon == pytest.approx(0.80, abs=0.005)


def test_rdp_full_batch_closed_form():
    # q = 1, one step: RDP of the Gaussian mechanism is α/(2σ²) (Mironov 2017,
    # Proposition 7); with the conversion of Balle et al. 2020 (Theorem 21)
    # the minimum over Opacus's orders is ε ≈ 4.73 at σ = 1, δ = 1e-5.
    orders = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
    rdp = orders / 2
    closed_form = np.min(rdp + np.log1p(-1 / orders) - (np.log(1e-5) + np.log(orders)) / (orders - 1))
    epsilon = compute_epsilon(noise_multiplier=1.0, sample_rate=1.0, steps=1, delta=1e-5, accountant="rdp")
    assert epsilon == pytest.approx(closed_form, rel=1e-9)
    assert epsilon == pytest.approx(4.73, abs=0.005)


def test_prv_full_batch_matches_analytic_gaussian():
    exact = analytic_gaussian_epsilon(1.0, 1e-5)  # ≈ 4.38
    epsilon = compute_epsilon(noise_multiplier=1.0, sample_rate=1.0, steps=1, delta=1e-5, accountant="prv")
    assert exact == pytest.approx(4.38, abs=0.01)
    assert exact - 0.001 <= epsilon <= exact + 0.02  # PRV is an upper bound within its eps_error of 0.01


def test_prv_is_tighter_than_rdp():
    kwargs = dict(noise_multiplier=1.1, sample_rate=250 / 60_000, steps=480, delta=1e-5)
    assert compute_epsilon(accountant="prv", **kwargs) < compute_epsilon(accountant="rdp", **kwargs)


def test_zero_noise_gives_infinite_epsilon():
    assert compute_epsilon(noise_multiplier=0.0, sample_rate=0.1, steps=10, delta=1e-5) == math.inf


def test_zero_steps_give_zero_epsilon():
    assert compute_epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=0, delta=1e-5) == 0.0


@pytest.mark.parametrize("target", [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 50.0])
@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_calibration_reaches_target_within_one_percent(target, accountant):
    calibration = calibrate_noise_multiplier(
        target_epsilon=target, target_delta=1e-5, sample_rate=0.01, steps=500, accountant=accountant
    )
    assert calibration.epsilon <= target
    assert calibration.epsilon >= 0.99 * target
    check = compute_epsilon(noise_multiplier=calibration.noise_multiplier, sample_rate=0.01, steps=500, delta=1e-5, accountant=accountant)
    assert check <= target * 1.001 if accountant == "prv" else check == pytest.approx(calibration.epsilon)


def test_calibration_counts_logical_steps_under_accumulation():
    # N = 60,000, physical batch 64 × 4 = logical 256, 10 epochs: q = 256/60,000
    # and 2,343 logical steps; σ ≈ 1.157 for ε = 1 at δ = 1e-5 (RDP), not the σ
    # for 9,372 micro-steps.
    calibration = calibrate_noise_multiplier(
        target_epsilon=1.0, target_delta=1e-5, sample_rate=256 / 60_000, steps=int(10 / (256 / 60_000))
    )
    assert calibration.steps == 2343
    assert calibration.noise_multiplier == pytest.approx(1.157, abs=0.002)


def test_infeasible_target_names_smallest_epsilon():
    # RDP orders up to 63 cannot certify ε below ≈ 0.103 at δ = 1e-5, whatever σ.
    floor = smallest_reachable_epsilon(delta=1e-5, sample_rate=256 / 60_000, steps=2343, accountant="rdp")
    assert floor == pytest.approx(0.103, abs=0.001)
    with pytest.raises(ConfigError, match=r"smallest ε it can certify .* is 0\.10"):
        calibrate_noise_multiplier(target_epsilon=0.1, target_delta=1e-5, sample_rate=256 / 60_000, steps=2343)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_epsilon=0.0), "target_epsilon"),
        (dict(target_epsilon=-1.0), "target_epsilon"),
        (dict(target_delta=0.0), "delta must be in"),
        (dict(target_delta=1.0), "delta must be in"),
        (dict(sample_rate=0.0), "sample_rate must be in"),
        (dict(sample_rate=1.5), "sample_rate must be in"),
        (dict(accountant="gdp"), "accountant must be one of"),
    ],
)
def test_calibration_rejects_bad_input(kwargs, message):
    arguments = dict(target_epsilon=1.0, target_delta=1e-5, sample_rate=0.01, steps=100)
    arguments.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        calibrate_noise_multiplier(**arguments)


def test_negative_noise_is_rejected():
    with pytest.raises(ConfigError, match="noise_multiplier must be a finite number ≥ 0; got -1"):
        compute_epsilon(noise_multiplier=-1, sample_rate=0.1, steps=10, delta=1e-5)
