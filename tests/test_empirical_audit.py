"""The empirical privacy audit: closed-form bounds, a correct and a broken mechanism, the CLI."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.optimize import brentq
from scipy.stats import norm

from lmdp.cli import main
from lmdp.cli.privacy_audit import EXIT_CLAIM_EXCEEDED
from lmdp.errors import ConfigError
from lmdp.privacy.empirical_audit import (
    PrivacyAuditConfig,
    canary_scores,
    clopper_pearson_rates,
    epsilon_from_rates,
    run_privacy_audit,
)

# 100,000 trials leave about 25,000 members and 25,000 non-members for the
# bound: enough to bound ε near 8.8 for a broken mechanism, in under a second.
TRIALS = 100_000
WEIGHTS = (1.0, 1.0, 0.5, 0.25)


def gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact ε of the Gaussian mechanism with sensitivity 1 and std σ (Balle and Wang, ICML 2018, Theorem 8)."""

    def delta_at(eps):
        return norm.cdf(-eps * sigma + 1 / (2 * sigma)) - math.exp(eps + norm.logcdf(-eps * sigma - 1 / (2 * sigma)))

    return brentq(lambda eps: delta_at(eps) - delta, 0, 1 / (2 * sigma**2) + 10 / sigma + 10)


def audit(**kwargs):
    arguments = dict(noise_multiplier=1.0, layer_weights=WEIGHTS, trials=TRIALS)
    arguments.update(kwargs)
    return run_privacy_audit(PrivacyAuditConfig(**arguments))


def test_clopper_pearson_perfect_separation():
    # k = n: the one-sided lower bound solves p^n = α, here α = 0.025 (95% split over two bounds).
    tpr_lower, fpr_upper = clopper_pearson_rates(100, 100, 0, 100, confidence=0.95)
    assert tpr_lower == pytest.approx(0.025 ** (1 / 100), rel=1e-9)
    assert fpr_upper == pytest.approx(1 - 0.025 ** (1 / 100), rel=1e-9)
    epsilon = epsilon_from_rates(tpr_lower, fpr_upper, delta=1e-5)
    assert epsilon == pytest.approx(math.log((0.025 ** (1 / 100) - 1e-5) / (1 - 0.025 ** (1 / 100))), rel=1e-9)
    assert epsilon == pytest.approx(3.28, abs=0.01)


def test_clopper_pearson_matches_beta_quantiles():
    # k = 30 of n = 200 members, 2 of 200 non-members, 90% overall: each bound at level 0.05.
    from scipy.stats import beta

    tpr_lower, fpr_upper = clopper_pearson_rates(30, 200, 2, 200, confidence=0.9)
    assert tpr_lower == pytest.approx(beta.ppf(0.05, 30, 171), rel=1e-12)
    assert fpr_upper == pytest.approx(beta.ppf(0.95, 3, 198), rel=1e-12)


def test_bound_is_never_negative():
    epsilon = epsilon_from_rates(np.array([0.0, 1e-6, 0.2]), np.array([1.0, 0.5, 0.9]), delta=1e-5)
    assert list(epsilon) == [0.0, 0.0, 0.0]


def test_scores_follow_the_gaussian_mechanism():
    # Members score C + N(0, σ²C²) and non-members N(0, σ²C²), in units of C.
    scores, is_member = canary_scores(PrivacyAuditConfig(noise_multiplier=0.8, max_grad_norm=2.5, layer_weights=WEIGHTS, trials=TRIALS))
    assert len(scores) == TRIALS
    assert is_member.mean() == pytest.approx(0.5, abs=0.01)
    members, non_members = scores[is_member], scores[~is_member]
    n = len(non_members)
    assert abs(members.mean() - 1.0) < 5 * 0.8 / math.sqrt(len(members))
    assert abs(non_members.mean()) < 5 * 0.8 / math.sqrt(n)
    assert abs(non_members.std() / 0.8 - 1) < 5 / math.sqrt(2 * n)
    assert abs(members.std() / 0.8 - 1) < 5 / math.sqrt(2 * len(members))


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_correct_mechanism_stays_below_claim(accountant):
    result = audit(accountant=accountant)
    exact = gaussian_epsilon(1.0, 1e-5)  # ≈ 4.38, the true ε of the audited step
    assert result.epsilon_lower_bound <= exact
    assert exact <= result.epsilon + 1e-9
    assert not result.exceeds_claim
    assert result.epsilon_lower_bound > 1.0  # the audit has power: ≈ 2 at these counts
    assert result.estimated_noise_multiplier == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_broken_mechanism_exceeds_claim(accountant):
    # The optimizer draws noise with σ = 0.1 while the accountant gets σ = 1.
    result = audit(accountant=accountant, noise_scale=0.1)
    assert result.epsilon > 4.3  # 4.73 with RDP, 4.39 with PRV
    assert result.epsilon_lower_bound > result.epsilon
    assert result.exceeds_claim
    assert result.estimated_noise_multiplier == pytest.approx(0.1, rel=0.03)


@pytest.mark.parametrize("noise_scale", [1.0, 0.5, 0.25])
def test_bound_never_exceeds_true_epsilon(noise_scale):
    # Soundness: the bound stays below the exact ε of the mechanism actually run (σ = noise_scale).
    result = audit(noise_scale=noise_scale, seed=3)
    assert result.epsilon_lower_bound <= gaussian_epsilon(noise_scale, 1e-5)


def test_audit_is_reproducible_by_seed():
    first, second, other = audit(seed=7, trials=4000), audit(seed=7, trials=4000), audit(seed=8, trials=4000)
    assert first.epsilon_lower_bound == second.epsilon_lower_bound
    assert first.threshold == second.threshold
    assert first.threshold != other.threshold


def test_result_serialises_with_provenance():
    data = json.loads(json.dumps(audit(trials=4000).to_dict()))
    assert data["config"]["layer_weights"] == list(WEIGHTS)
    assert data["config"]["noise_scale"] == 1.0
    assert set(data["versions"]) == {"lmdp", "torch", "opacus"}
    assert data["members"] + data["non_members"] == 2000  # the evaluation half of 4,000 trials


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(noise_multiplier=0.0), "noise_multiplier must be a finite number > 0; got 0.0"),
        (dict(max_grad_norm=math.inf), "max_grad_norm must be a finite number > 0; got inf"),
        (dict(layer_weights=(1.0, 1.5)), r"layer_weights must be one or more weights in \(0, 1\]; got \[1.0, 1.5\]"),
        (dict(layer_weights=()), "layer_weights must be one or more"),
        (dict(delta=1.0), r"delta must be in \(0, 1\); got 1.0"),
        (dict(accountant="gdp"), "accountant must be one of"),
        (dict(trials=999), "trials must be an integer ≥ 1000; got 999"),
        (dict(canaries_per_step=1), r"canaries_per_step must be an integer in \[2, 4096\]; got 1"),
        (dict(canaries_per_step=100_000), r"canaries_per_step must be an integer in \[2, 4096\]"),
        (dict(confidence=1.0), r"confidence must be in \(0, 1\); got 1.0"),
        (dict(noise_scale=-1.0), "noise_scale must be a finite number > 0; got -1.0"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    arguments = dict(noise_multiplier=1.0)
    arguments.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        PrivacyAuditConfig(**arguments)


def test_cli_correct_mechanism_passes(tmp_path):
    out = tmp_path / "audit.json"
    result = CliRunner().invoke(
        main, ["privacy-audit", "--noise-multiplier", "1", "--layer-weights", "1,1,0.5,0.25", "--trials", "20000",
               "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "is consistent with the claim" in result.output
    saved = json.loads(out.read_text())
    assert saved["exceeds_claim"] is False
    assert saved["epsilon"] == pytest.approx(4.7285, abs=1e-3)


def test_cli_broken_mechanism_fails():
    result = CliRunner().invoke(
        main, ["privacy-audit", "--noise-multiplier", "1", "--noise-scale", "0.1", "--trials", "20000", "--json"]
    )
    assert result.exit_code == EXIT_CLAIM_EXCEEDED
    data = json.loads(result.output)
    assert data["exceeds_claim"] is True
    assert data["epsilon_lower_bound"] > data["epsilon"]


def test_cli_rejects_bad_weights():
    result = CliRunner().invoke(main, ["privacy-audit", "--noise-multiplier", "1", "--layer-weights", "1,heavy"])
    assert result.exit_code == 2
    assert "Invalid value for '--layer-weights'" in result.output
    result = CliRunner().invoke(main, ["privacy-audit", "--noise-multiplier", "1", "--layer-weights", "1,2"])
    assert result.exit_code == 1
    assert r"layer_weights must be one or more weights in (0, 1]; got [1.0, 2.0]" in result.output
