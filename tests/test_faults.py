"""Faults that recur in DP libraries, one test per case: calibration, accountants, sensitivity, bad values, BatchNorm."""

import json
import logging
import math
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV
from scipy.optimize import brentq
from scipy.stats import norm
from torch import nn

import lmdp.privacy.engine
from lmdp.attacks import OUTPUT, AttackConfig, assess_held_out, split_records
from lmdp.attacks.assessment import evaluate_level_attacks, fit_level_attacks
from lmdp.errors import ConfigError, NonFiniteLossError, UnsupportedModuleError
from lmdp.models import build_layer_map, fix_model, validate_model
from lmdp.privacy import LMDPEngine, LMDPOptimizer, PrivacyMechanism, compute_epsilon, resolve_layer_weights
from lmdp.privacy.accounting import PRV_MAX_GRID_POINTS, prv_grid_points
from lmdp.privacy.sensitivity import SensitivityError, check_sensitivity
from lmdp.representations import Representations
from lmdp.training import TrainingConfig, train


def gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact ε of the Gaussian mechanism with sensitivity 1 and std σ (Balle and Wang, ICML 2018, Theorem 8)."""

    def delta_at(eps):
        # e^ε·Φ(b) in log space, because e^ε overflows for the large ε of a small σ.
        return norm.cdf(-eps * sigma + 1 / (2 * sigma)) - math.exp(eps + norm.logcdf(-eps * sigma - 1 / (2 * sigma)))

    return brentq(lambda eps: delta_at(eps) - delta, 0, 1 / (2 * sigma**2) + 10 / sigma + 10)


# -- infeasible and extreme calibration --------------------------------------

CALIBRATION_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    from lmdp.errors import ConfigError
    from lmdp.privacy import calibrate_noise_multiplier
    started = time.perf_counter()
    try:
        calibration = calibrate_noise_multiplier(
            target_epsilon=0.01, target_delta=1e-5, sample_rate=256 / 60_000, steps=2343, accountant=sys.argv[1]
        )
        outcome = {"noise_multiplier": calibration.noise_multiplier, "epsilon": calibration.epsilon}
    except ConfigError as error:
        outcome = {"error": str(error)}
    outcome["seconds"] = time.perf_counter() - started
    outcome["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(outcome))
    """
)


@pytest.mark.parametrize("accountant", ["rdp", pytest.param("prv", marks=pytest.mark.slow)])
def test_calibration_to_0_01_is_bounded(accountant):
    # N = 60,000, batch 256, 10 epochs: q = 256/60,000 and floor(10/q) = 2,343 steps.
    output = subprocess.run(
        [sys.executable, "-c", CALIBRATION_SCRIPT, accountant], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    outcome = json.loads(output.strip().splitlines()[-1])
    assert outcome["seconds"] < 60
    assert outcome["peak_rss_mb"] < 2048  # the whole process, torch included
    if accountant == "rdp":
        # RDP orders up to 63 cannot certify less than ≈ 0.103 at δ = 1e-5, whatever σ.
        assert "error" in outcome
        assert "smallest ε it can certify with any noise_multiplier is 0.1029" in outcome["error"]
    else:
        assert 0.0099 <= outcome["epsilon"] <= 0.01
        assert 10 < outcome["noise_multiplier"] < 100  # ≈ 55.6 with Opacus 1.6.0


def test_prv_grid_estimate_matches_opacus():
    history = [(1.1, 250 / 60_000, 480)]
    accountant = PRVAccountant()
    domain = accountant._get_domain(
        prvs=[PoissonSubsampledGaussianPRV(250 / 60_000, 1.1)], num_self_compositions=[480], eps_error=0.01,
        delta_error=1e-5 / 1000,
    )
    # Opacus aligns both ends of the grid to the mesh, which adds a few points.
    assert prv_grid_points(history, delta=1e-5, eps_error=0.01) == pytest.approx(domain.size, rel=1e-3)


@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_prv_small_noise_falls_back_to_rdp(sample_rate, caplog):
    # σ = 0.3 over 1,000 steps needs a grid of 6e7 (q = 0.5) to 1.3e8 (q = 1) points: before the
    # limit, Opacus 1.6.0 used 10 to 20 GB and several minutes, then returned ε = inf.
    kwargs = dict(noise_multiplier=0.3, sample_rate=sample_rate, steps=1000, delta=1e-5)
    assert prv_grid_points([(0.3, sample_rate, 1000)], delta=1e-5, eps_error=0.01) > PRV_MAX_GRID_POINTS
    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="lmdp.privacy.accounting"):
        epsilon = compute_epsilon(accountant="prv", **kwargs)
    assert time.perf_counter() - started < 10
    assert epsilon == compute_epsilon(accountant="rdp", **kwargs)
    assert "reporting RDP's ε instead" in caplog.text
    if sample_rate == 1.0:
        # 1,000 full-batch Gaussian steps compose to one Gaussian step with σ / √1000.
        assert epsilon >= gaussian_epsilon(0.3 / math.sqrt(1000), 1e-5)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("delta", [0.3, 0.999999])
def test_large_delta_gives_zero_not_negative_epsilon(accountant, delta):
    # Opacus 1.6.0's RDP gives ε ≈ -0.33 at δ = 0.3 and its PRV ≈ -0.36, and PRV raises RuntimeError near δ = 1.
    epsilon = compute_epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=100, delta=delta, accountant=accountant)
    assert epsilon == 0.0


def test_prv_tiny_delta_falls_back_to_rdp(caplog):
    # At δ = 1e-15 Opacus's PRV raises ValueError because float rounding dominates. RDP still gives an upper bound.
    kwargs = dict(noise_multiplier=1.0, sample_rate=0.01, steps=100, delta=1e-15)
    with caplog.at_level(logging.INFO, logger="lmdp.privacy.accounting"):
        epsilon = compute_epsilon(accountant="prv", **kwargs)
    assert epsilon == compute_epsilon(accountant="rdp", **kwargs)
    assert "accountant prv failed" in caplog.text


# -- sample rate 1 ------------------------------------------------------------


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))


@pytest.mark.parametrize("accountant, low, high", [("rdp", 4.7235, 4.7335), ("prv", 4.38, 4.40)])
def test_full_batch_single_step_trains(accountant, low, high):
    # N = 100, σ = 1, one step of the whole dataset, δ = 1e-5: RDP gives ≈ 4.73 and PRV the
    # exact Gaussian 4.38 within its error of 0.01.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(100, 8, generator=generator)
    y = (x.sum(dim=1) > 0).long()
    model = small_mlp()
    layer_map = build_layer_map(model, ("1", "3"), x[:2])
    config = TrainingConfig(method="dpsgd", steps=1, sample_rate=1.0, noise_multiplier=1.0, accountant=accountant)
    result = train(model, x, y, config=config, layer_map=layer_map, delta=1e-5)
    assert low <= result.epsilon <= high
    assert result.accountant_history == ((1.0, 1.0, 1),)
    assert result.empty_batches == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


# -- sensitivity under layer weights -------------------------------------------

FOUR_LAYER_WEIGHTS = [1.0, 1.0, 0.5, 0.25]


def four_layer_case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    layer_map = build_layer_map(model, ("0", "2", "4", "6"), torch.zeros(2, 6))
    return model, layer_map


def four_layer_optimizer(optimizer_class=LMDPOptimizer, weights=FOUR_LAYER_WEIGHTS):
    model, layer_map = four_layer_case()
    mechanism = PrivacyMechanism(
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=0.1,
        expected_batch_size=10.0,
        layer_weights=resolve_layer_weights(layer_map, dict(zip(layer_map.taps, weights))),
    )
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    return optimizer_class(sgd, model=model, layer_map=layer_map, mechanism=mechanism)


class PerGroupClipOptimizer(LMDPOptimizer):
    """Clips each group to C on its own, then weights it: one record can then move the sum by √(Σ w_l²)·C."""

    def clip_and_accumulate(self) -> None:
        if not self._has_pending_grad_samples():
            return
        group_norms = self.per_example_group_norms()
        for column, name in enumerate(self.group_names):
            factors = (self.mechanism.max_grad_norm / (group_norms[:, column] + 1e-6)).clamp(max=1.0)
            for p in self.group_params[name]:
                contribution = torch.einsum("i,i...->...", factors * self.mechanism.layer_weights[name], p.grad_sample)
                p.summed_grad = contribution if p.summed_grad is None else p.summed_grad + contribution
                p.grad_sample = None
                p.grad = None


class WeightsAfterClipOptimizer(LMDPOptimizer):
    """Clips the unweighted gradient and weights it afterwards: private for weights ≤ 1, but not LM-DP-SGD."""

    def weighted_norms(self, group_norms: torch.Tensor) -> torch.Tensor:
        return group_norms.norm(2, dim=1)


class QuietNoiseOptimizer(LMDPOptimizer):
    """Draws noise 10 times smaller than noise_multiplier × max_grad_norm."""

    def add_noise(self) -> None:
        for p in self.params:
            summed = p.summed_grad if p.summed_grad is not None else torch.zeros_like(p)
            noise = torch.normal(0.0, self.mechanism.noise_std / 10, size=p.shape, generator=self.generator)
            p.grad = summed + noise


def test_weights_before_clip_have_sensitivity_c():
    check = check_sensitivity(four_layer_optimizer())
    assert check.sensitivity == 1.0
    assert check.weighting == "before_clip"
    assert check.noise_std == pytest.approx(1.0, rel=0.01)
    assert check.probe_records == 5


@pytest.mark.parametrize("grad_sample_mode", ["hooks", "ghost"])
def test_engine_logs_sensitivity_of_each_mode(grad_sample_mode, caplog):
    model, layer_map = four_layer_case()
    engine = LMDPEngine()
    with caplog.at_level(logging.INFO, logger="lmdp.privacy.sensitivity"):
        engine.make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), layer_map=layer_map,
            noise_multiplier=1.3, max_grad_norm=1.0, layer_weights=dict(zip(layer_map.taps, FOUR_LAYER_WEIGHTS)),
            sample_rate=0.1, dataset_size=100, grad_sample_mode=grad_sample_mode,
        )
    assert engine.sensitivity_check.sensitivity == 1.0
    assert engine.sensitivity_check.weighting == "before_clip"
    assert engine.sensitivity_check.noise_std == pytest.approx(1.3, rel=0.01)
    assert "L2 sensitivity 1 (max_grad_norm 1, weights before the clip)" in caplog.text


def test_weight_above_one_is_rejected():
    model, layer_map = four_layer_case()
    with pytest.raises(ConfigError, match=r"layer_weights\['6'\] must be in \(0, 1\].*got 2.0"):
        LMDPEngine().make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), layer_map=layer_map,
            noise_multiplier=1.0, max_grad_norm=1.0, layer_weights=dict(zip(layer_map.taps, [1.0, 1.0, 0.5, 2.0])),
            sample_rate=0.1, dataset_size=100,
        )


def test_per_group_clip_is_refused():
    # Each group clipped to C = 1, then weighted: √(1 + 1 + 0.25 + 0.0625) ≈ 1.521.
    with pytest.raises(SensitivityError, match=r"contribute an L2 norm of 1\.52"):
        check_sensitivity(four_layer_optimizer(PerGroupClipOptimizer))


def test_per_group_clip_stops_training():
    model, layer_map = four_layer_case()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    config = TrainingConfig(method="lmdpsgd", steps=2, sample_rate=0.5, noise_multiplier=1.0, grad_sample_mode="hooks",
                            layer_weights=dict(zip(layer_map.taps, FOUR_LAYER_WEIGHTS)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lmdp.privacy.engine, "LMDPOptimizer", PerGroupClipOptimizer)
        with pytest.raises(SensitivityError):
            train(model, x, y, config=config, layer_map=layer_map)
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p.detach())


def test_weights_after_clip_are_detected(caplog):
    check = check_sensitivity(four_layer_optimizer(WeightsAfterClipOptimizer))
    assert check.weighting == "after_clip"
    assert check.sensitivity == 1.0  # max weight 1 times C

    with caplog.at_level(logging.WARNING, logger="lmdp.privacy.sensitivity"):
        loose = check_sensitivity(four_layer_optimizer(WeightsAfterClipOptimizer, weights=[0.5, 0.5, 0.5, 0.25]))
    assert loose.sensitivity == 0.5
    assert loose.effective_noise_multiplier == pytest.approx(2.0, rel=0.01)
    assert "valid but loose" in caplog.text


def test_noise_below_sensitivity_is_refused():
    with pytest.raises(SensitivityError, match=r"noise of std 0\.1\d* per coordinate.*needs 1\b"):
        check_sensitivity(four_layer_optimizer(QuietNoiseOptimizer))


def test_sensitivity_probe_leaves_no_trace():
    optimizer = four_layer_optimizer()
    optimizer.generator = torch.Generator().manual_seed(5)
    expected_noise = torch.randn(3, generator=torch.Generator().manual_seed(5))
    check_sensitivity(optimizer)
    assert optimizer.steps_taken == 0
    for p in optimizer.params:
        assert p.grad is None
        assert p.summed_grad is None
        assert getattr(p, "grad_sample", None) is None
        assert not hasattr(p, "_norm_sample")
    assert torch.equal(torch.randn(3, generator=optimizer.generator), expected_noise)


# -- non-finite values and a zero clip ------------------------------------------


def infinite_loss_case():
    """A linear model and a batch whose example 3 has logits (3e38, −3e38) and label 1: its loss is +inf."""
    model = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model[0].bias.zero_()
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    x[3] = torch.tensor([3e38, 0.0])
    y = torch.zeros(8, dtype=torch.long)
    y[3] = 1
    return model, x, y, build_layer_map(model, ("0",), x[:2])


def test_infinite_loss_stops_training_cleanly():
    model, x, y, layer_map = infinite_loss_case()
    before = [p.detach().clone() for p in model.parameters()]
    config = TrainingConfig(method="dpsgd", steps=2, sample_rate=1.0, noise_multiplier=1.0)
    with pytest.raises(NonFiniteLossError, match=r"step 1 for 1 example\(s\) \(positions \[3\]"):
        train(model, x, y, config=config, layer_map=layer_map)
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p.detach())


@pytest.mark.parametrize("grad_sample_mode", ["hooks", "ghost"])
def test_infinite_loss_in_own_loop(grad_sample_mode):
    model, x, y, layer_map = infinite_loss_case()
    before = [p.detach().clone() for p in model.parameters()]
    wrapped, optimizer, _ = LMDPEngine().make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), layer_map=layer_map,
        noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5, dataset_size=8, loss_reduction="sum",
        grad_sample_mode=grad_sample_mode,
    )
    losses = F.cross_entropy(wrapped(x), y, reduction="none")
    assert math.isinf(losses[3].item())
    with pytest.raises(NonFiniteLossError, match=r"examples \[3\]"):
        optimizer.backward(losses)
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p.detach())

    # The caller may drop the bad record and go on.
    keep = torch.arange(8) != 3
    optimizer.zero_grad()
    optimizer.backward(F.cross_entropy(wrapped(x[keep]), y[keep], reduction="none"))
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not all(torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("max_grad_norm", [0.0, -1.0, math.nan])
def test_engine_rejects_nonpositive_clip(max_grad_norm):
    model, layer_map = four_layer_case()
    with pytest.raises(ConfigError, match="max_grad_norm must be > 0"):
        LMDPEngine().make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), layer_map=layer_map,
            noise_multiplier=1.0, max_grad_norm=max_grad_norm, sample_rate=0.1, dataset_size=100,
        )


def test_tiny_clip_keeps_parameters_finite():
    # A clip of 1e-30 makes every clip factor about 1e-30 / ‖g‖: the update is noise, but never NaN.
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, 8, generator=generator)
    y = (x.sum(dim=1) > 0).long()
    model = small_mlp()
    layer_map = build_layer_map(model, ("1", "3"), x[:2])
    config = TrainingConfig(method="dpsgd", steps=3, sample_rate=0.5, noise_multiplier=1.0, max_grad_norm=1e-30)
    train(model, x, y, config=config, layer_map=layer_map)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# -- BatchNorm ------------------------------------------------------------------


def batchnorm_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 18, 3), nn.BatchNorm2d(18), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(18 * 6 * 6, 2))


def test_batchnorm_model_is_rejected_naming_modules():
    with pytest.raises(UnsupportedModuleError) as raised:
        validate_model(batchnorm_model())
    message = str(raised.value)
    assert "2 module(s)" in message
    assert "module '1' is BatchNorm2d" in message
    assert "module '2' is ReLU(inplace=True)" in message
    assert "lmdp.models.fix_model(model)" in message


def test_fixed_batchnorm_model_trains():
    original = batchnorm_model()
    model = fix_model(original)
    assert isinstance(model[1], nn.GroupNorm)
    assert model[2].inplace is False
    assert isinstance(original[1], nn.BatchNorm2d)  # the fix works on a copy
    assert original[2].inplace is True
    validate_model(model)

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, 8, 8, generator=generator)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    layer_map = build_layer_map(model, ("0", "1", "4"), x[:2])
    before = [p.detach().clone() for p in model.parameters()]
    config = TrainingConfig(method="dpsgd", steps=3, sample_rate=0.5, noise_multiplier=1.0)
    result = train(model, x, y, config=config, layer_map=layer_map, delta=1e-5)
    assert result.steps == 3
    assert all(math.isfinite(loss) for loss in result.loss_history)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))


# -- metric orientation and class balance at every layer -------------------------


def three_layer_representations(n_records=800, seed=0):
    """Members sit closer to their class centre than non-members at "strong" and, less so, at "weak". "noise" has no signal."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n_records)
    is_member = rng.permutation(np.arange(n_records) < n_records // 2)
    centres = rng.normal(scale=3.0, size=(4, 12))
    features = {}
    for tap, member_spread in (("strong", 0.5), ("weak", 0.8)):
        spread = np.where(is_member, member_spread, 1.0)[:, None]
        features[tap] = (centres[labels] + rng.normal(size=(n_records, 12)) * spread).astype(np.float32)
    features["noise"] = rng.normal(size=(n_records, 12)).astype(np.float32)
    logits = rng.normal(size=(n_records, 4))
    logits[np.arange(n_records), labels] += np.where(is_member, 3.0, 1.5)
    representations = Representations(features=features, outputs=logits.astype(np.float32), taps=("strong", "weak", "noise"))
    return representations, labels, is_member


@pytest.fixture(scope="module")
def fitted_levels():
    representations, labels, is_member = three_layer_representations()
    config = AttackConfig(n_bootstrap=0, n_permutations=0)
    split = split_records(labels, is_member, reference_fraction=config.reference_fraction,
                          fit_fraction=config.fit_fraction, seed=config.seed)
    fitted = fit_level_attacks(representations, labels, is_member, split, num_classes=4, config=config)
    evaluation = (representations.subset(split.evaluate), labels[split.evaluate], is_member[split.evaluate])
    return fitted, evaluation, config, split


def evaluate(fitted_levels, representations, labels, is_member):
    fitted, _, config, split = fitted_levels
    return evaluate_level_attacks(fitted, representations, labels, is_member, setting="held_out", config=config,
                                  split_sizes=split.sizes())


def outcomes_by_level(assessment):
    return {level.name: {o.name: o for o in level.attacks} for level in (*assessment.layers, assessment.output)}


def test_flipped_membership_is_never_flipped_back(fitted_levels):
    representations, labels, is_member = fitted_levels[1]
    true = evaluate(fitted_levels, representations, labels, is_member)
    flipped = evaluate(fitted_levels, representations, labels, ~is_member)
    true_outcomes, flipped_outcomes = outcomes_by_level(true), outcomes_by_level(flipped)
    for level in ("strong", "weak", "noise", OUTPUT):
        for name, outcome in true_outcomes[level].items():
            flipped_outcome = flipped_outcomes[level][name]
            assert flipped_outcome.direction == outcome.direction, (level, name)
            assert flipped_outcome.metrics.auc == pytest.approx(1 - outcome.metrics.auc, abs=1e-12), (level, name)
            assert flipped_outcome.metrics.balanced_accuracy == pytest.approx(1 - outcome.metrics.balanced_accuracy, abs=1e-12)
    for level in ("strong", "weak", OUTPUT):
        assert true.layer(level).auc > 0.6, level
        assert flipped.layer(level).auc < 0.4, level
        assert flipped.layer(level).layer_risk == 0.0, level


def test_class_ratio_leaves_metrics_unchanged(fitted_levels):
    # Repeating every non-member three times changes the class ratio but no class-conditional rate.
    representations, labels, is_member = fitted_levels[1]
    repeated = np.concatenate([np.flatnonzero(is_member), np.repeat(np.flatnonzero(~is_member), 3)])
    balanced = outcomes_by_level(evaluate(fitted_levels, representations, labels, is_member))
    imbalanced = outcomes_by_level(
        evaluate(fitted_levels, representations.subset(repeated), labels[repeated], is_member[repeated])
    )
    for level in ("strong", "weak", "noise", OUTPUT):
        for name, outcome in balanced[level].items():
            metrics, other = outcome.metrics, imbalanced[level][name].metrics
            assert other.auc == pytest.approx(metrics.auc, abs=1e-12), (level, name)
            assert other.balanced_accuracy == pytest.approx(metrics.balanced_accuracy, abs=1e-12), (level, name)
            assert other.advantage == pytest.approx(metrics.advantage, abs=1e-12), (level, name)
            assert other.tpr_at_fpr == pytest.approx(metrics.tpr_at_fpr, abs=1e-12), (level, name)


def test_imbalanced_records_are_balanced_before_evaluation():
    representations, labels, is_member = three_layer_representations(n_records=1000)
    # Keep one non-member in three: 500 members, about 167 non-members.
    keep = np.flatnonzero(is_member | (np.arange(len(is_member)) % 3 == 0))
    assessment = assess_held_out(representations.subset(keep), labels[keep], is_member[keep], num_classes=4,
                                 config=AttackConfig(n_bootstrap=0, n_permutations=0))
    assert assessment.split["members"] == assessment.split["non_members"]
    # Without a signal, the balanced accuracy of a threshold fixed on fitting data stays near 1/2.
    assert abs(assessment.layer("noise").metrics.balanced_accuracy - 0.5) < 0.15
