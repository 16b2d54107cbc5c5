"""Oracle tests of the LM-DP-SGD step: batch-of-one loops, Opacus DP-SGD, plain SGD, noise statistics."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from lmdp.errors import NonFiniteLossError
from lmdp.models import build_layer_map
from lmdp.privacy import LMDPOptimizer, PrivacyMechanism, resolve_layer_weights



# Float64, so that the 1e-6 tolerances test the algorithm, not rounding.
pytestmark = pytest.mark.usefixtures("float64_default")


class ConvNet(nn.Module):
    """Conv2d, GroupNorm and Linear layers, one tap each."""

    taps = ("conv", "norm", "logits")

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.Sequential(nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten())
        self.logits = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.logits(self.norm(self.conv(x)))


class EmbeddingNet(nn.Module):
    """Embedding and Linear layers; the head (after the last tap) contains one Linear."""

    taps = ("embed", "hidden")

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 5)
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(4 * 5, 6), nn.Tanh())
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.hidden(self.embed(x)))


def conv_case():
    torch.manual_seed(0)
    return ConvNet(), torch.randn(7, 1, 6, 6) * 3, torch.randint(0, 3, (7,))


def embedding_case():
    torch.manual_seed(1)
    return EmbeddingNet(), torch.randint(0, 20, (7, 4)), torch.randint(0, 3, (7,))


CASES = {"conv_groupnorm_linear": conv_case, "embedding_linear": embedding_case}


def weights_for(layer_map, values):
    return dict(zip(layer_map.group_names, values))


def make_optimizer(model, layer_map, *, weights, noise_multiplier=0.0, max_grad_norm=1.0, batch=7.0, lr=1.0, seed=0):
    mechanism = PrivacyMechanism(
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        sample_rate=0.5,
        expected_batch_size=batch,
        layer_weights=resolve_layer_weights(layer_map, weights),
    )
    sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    return LMDPOptimizer(sgd, model=model, layer_map=layer_map, mechanism=mechanism, generator=torch.Generator().manual_seed(seed))


def batch_of_one_oracle(model, layer_map, x, y, weights, max_grad_norm):
    """Per-example gradients and Σ_i ū_i computed one record at a time with plain autograd."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    group_of = layer_map.group_of()
    per_example = []
    summed = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        per_example.append(grads)
        weighted = {n: weights[group_of[n]] * grads[n] for n in names}
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in weighted.values()))
        factor = min(1.0, max_grad_norm / (norm + 1e-6))
        for n in names:
            summed[n] += factor * weighted[n]
    model.zero_grad()
    return per_example, summed


@pytest.mark.parametrize("case", sorted(CASES))
def test_per_example_gradients_match_batch_of_one(case):
    model, x, y = CASES[case]()
    layer_map = build_layer_map(model, model.taps, x[:2])
    weights = weights_for(layer_map, [0.3, 0.7, 1.0, 0.5][: len(layer_map.group_names)])
    oracle_grads, oracle_sum = batch_of_one_oracle(copy.deepcopy(model), layer_map, x, y, resolve_layer_weights(layer_map, weights), 0.5)

    optimizer = make_optimizer(model, layer_map, weights=weights, max_grad_norm=0.5)
    wrapped = GradSampleModule(model, loss_reduction="sum")
    F.cross_entropy(wrapped(x), y, reduction="sum").backward()
    for name, p in model.named_parameters():
        for i in range(len(x)):
            torch.testing.assert_close(p.grad_sample[i], oracle_grads[i][name], atol=1e-6, rtol=0)
    optimizer.clip_and_accumulate()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.summed_grad, oracle_sum[name], atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_weighted_clip_bounds_each_record(case):
    model, x, y = CASES[case]()
    layer_map = build_layer_map(model, model.taps, x[:2])
    weights = weights_for(layer_map, [0.25, 1.0, 0.5, 0.8][: len(layer_map.group_names)])
    max_grad_norm = 0.05  # small, so that every record is clipped
    wrapped = GradSampleModule(model, loss_reduction="sum")
    optimizer = make_optimizer(model, layer_map, weights=weights, max_grad_norm=max_grad_norm)
    for i in range(len(x)):
        optimizer.zero_grad()
        F.cross_entropy(wrapped(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        optimizer.clip_and_accumulate()
        contribution = math.sqrt(sum(float(p.summed_grad.pow(2).sum()) for p in optimizer.params))
        assert contribution <= max_grad_norm * (1 + 1e-9)
        assert contribution > 0.9 * max_grad_norm  # the clip was active, not the weights alone


def test_uniform_weights_equal_opacus_dpsgd_step():
    model, x, y = conv_case()
    layer_map = build_layer_map(model, model.taps, x[:2])
    reference = copy.deepcopy(model)

    optimizer = make_optimizer(model, layer_map, weights=None, noise_multiplier=1.3, max_grad_norm=0.7, batch=7.0, lr=0.1, seed=42)
    wrapped = GradSampleModule(model, loss_reduction="sum")
    F.cross_entropy(wrapped(x), y, reduction="sum").backward()
    optimizer.step()

    opacus_model = GradSampleModule(reference, loss_reduction="mean")
    opacus_optimizer = DPOptimizer(
        torch.optim.SGD(reference.parameters(), lr=0.1),
        noise_multiplier=1.3,
        max_grad_norm=0.7,
        expected_batch_size=7,
        loss_reduction="mean",
        generator=torch.Generator().manual_seed(42),
    )
    F.cross_entropy(opacus_model(x), y).backward()
    opacus_optimizer.step()

    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-10, rtol=0, msg=name)


def test_nonuniform_weights_change_the_step():
    model, x, y = conv_case()
    layer_map = build_layer_map(model, model.taps, x[:2])
    other = copy.deepcopy(model)
    for net, weights in ((model, None), (other, weights_for(layer_map, [0.2, 1.0, 1.0, 1.0]))):
        optimizer = make_optimizer(net, layer_map, weights=weights, max_grad_norm=0.7)
        F.cross_entropy(GradSampleModule(net, loss_reduction="sum")(x), y, reduction="sum").backward()
        optimizer.step()
    assert not torch.allclose(model.conv.weight, other.conv.weight)


def test_zero_noise_unbounded_clip_equals_sgd():
    model, x, y = conv_case()
    layer_map = build_layer_map(model, model.taps, x[:2])
    reference = copy.deepcopy(model)

    optimizer = make_optimizer(model, layer_map, weights=None, noise_multiplier=0.0, max_grad_norm=math.inf, batch=len(x), lr=0.3)
    F.cross_entropy(GradSampleModule(model, loss_reduction="sum")(x), y, reduction="sum").backward()
    optimizer.step()

    sgd = torch.optim.SGD(reference.parameters(), lr=0.3)
    F.cross_entropy(reference(x), y).backward()
    sgd.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-10, rtol=0)


def test_empty_batch_adds_noise_with_expected_std():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(200, 100), nn.Linear(100, 50))
    layer_map = build_layer_map(model, ("0", "1"), torch.zeros(1, 200))
    before = [p.detach().clone() for p in model.parameters()]
    noise_multiplier, max_grad_norm, batch = 2.0, 1.5, 4.0
    optimizer = make_optimizer(model, layer_map, weights=weights_for(layer_map, [0.5, 0.25, 1.0]),
                               noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, batch=batch, lr=1.0)
    optimizer.step()  # no backward: an empty Poisson batch, all-zero gradient sum

    update = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    expected_std = noise_multiplier * max_grad_norm / batch  # isotropic, independent of the weights
    n = update.numel()  # 25,150 coordinates
    # The sample std of n normal draws has relative standard error ≈ 1/sqrt(2n) ≈ 0.0045;
    # a 5-sigma band (±2.3%) gives a false-failure rate below 1e-6.
    assert abs(float(update.std()) / expected_std - 1) < 5 / math.sqrt(2 * n)
    # The mean has standard error std/sqrt(n).
    assert abs(float(update.mean())) < 5 * expected_std / math.sqrt(n)
    assert optimizer.steps_taken == 1


def test_frozen_parameters_get_no_noise():
    model, x, y = conv_case()
    model.conv.weight.requires_grad_(False)
    layer_map = build_layer_map(model, model.taps, x[:2])
    assert "conv.weight" not in layer_map.group_of()
    frozen = model.conv.weight.detach().clone()
    optimizer = make_optimizer(model, layer_map, weights=None, noise_multiplier=5.0)
    F.cross_entropy(GradSampleModule(model, loss_reduction="sum")(x), y, reduction="sum").backward()
    optimizer.step()
    assert torch.equal(model.conv.weight, frozen)


def test_non_finite_gradient_leaves_parameters():
    model, x, y = conv_case()
    layer_map = build_layer_map(model, model.taps, x[:2])
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = make_optimizer(model, layer_map, weights=None, noise_multiplier=1.0)
    x = x.clone()
    x[2] = math.inf
    wrapped = GradSampleModule(model, loss_reduction="sum")
    F.cross_entropy(wrapped(x), y, reduction="sum").backward()
    with pytest.raises(NonFiniteLossError, match="examples \\[2\\]"):
        optimizer.clip_and_accumulate()
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p.detach())
