"""Ghost mode of LM-DP-SGD against hooks mode and against Opacus's own ghost clipping."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lmdp.errors import ConfigError, NonFiniteLossError
from lmdp.models import build_layer_map, build_model
from lmdp.privacy import LMDPEngine, ghost
from lmdp.privacy.ghost import GRAD_SAMPLE_MODES, GhostLMDPOptimizer, resolve_grad_sample_mode
from lmdp.training import TrainingConfig, train

# Small inputs keep the zoo models fast; every model keeps its layer types.
INPUT_SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 8, 8), "resnet": (3, 8, 8)}
# One weight per tap (mlp: hidden1, hidden2, logits; cnn and resnet: four taps), all different.
NONUNIFORM_WEIGHTS = (0.3, 0.9, 0.55, 0.7)


# Float64, so that the 1e-5 tolerance tests the algorithm, not rounding.
pytestmark = pytest.mark.usefixtures("float64_default")


def make_case(name, n_records=9, seed=0):
    torch.manual_seed(seed)
    model = build_model(name, input_shape=INPUT_SHAPES[name], num_classes=3)
    x = torch.randn(n_records, *INPUT_SHAPES[name]) * 2
    y = torch.randint(0, 3, (n_records,))
    layer_map = build_layer_map(model, model.taps, x[:2])
    return model, x, y, layer_map


def make_private(model, layer_map, mode, *, weights, noise_multiplier=0.8, max_grad_norm=0.5, seed=7):
    """Make ``model`` private in ``mode``; momentum makes each step depend on the earlier ones."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    engine = LMDPEngine()
    return engine.make_private(
        module=model,
        optimizer=optimizer,
        layer_map=layer_map,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        layer_weights=weights,
        sample_rate=0.5,
        dataset_size=12,
        noise_generator=torch.Generator().manual_seed(seed),
        loss_reduction="sum",
        grad_sample_mode=mode,
    )


def run_steps(module, optimizer, x, y, batches, chunk_size):
    """Take one logical step per entry of ``batches`` (index tensors), in physical chunks of ``chunk_size``."""
    for indices in batches:
        optimizer.zero_grad()
        for chunk in torch.split(indices, chunk_size) if len(indices) else []:
            optimizer.backward(F.cross_entropy(module(x[chunk]), y[chunk], reduction="none"))
        optimizer.step()


def weights_for(layer_map):
    return dict(zip(layer_map.taps, NONUNIFORM_WEIGHTS))


def assert_same_parameters(model, reference, atol=1e-5):
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("name", sorted(INPUT_SHAPES))
def test_ghost_group_norms_match_hooks(name):
    model, x, y, layer_map = make_case(name)
    ghost_model = copy.deepcopy(model)
    hooks_module, hooks_optimizer, _ = make_private(model, layer_map, "hooks", weights=weights_for(layer_map))
    ghost_module, ghost_optimizer, _ = make_private(ghost_model, layer_map, "ghost", weights=weights_for(layer_map))
    assert isinstance(ghost_optimizer, GhostLMDPOptimizer)

    F.cross_entropy(hooks_module(x), y, reduction="sum").backward()
    F.cross_entropy(ghost_module(x), y, reduction="sum").backward()
    hooks_norms = hooks_optimizer.per_example_group_norms()
    ghost_norms = ghost_optimizer.per_example_group_norms()
    assert ghost_norms.shape == (len(x), len(hooks_optimizer.group_names))
    torch.testing.assert_close(ghost_norms, hooks_norms, atol=1e-8, rtol=1e-8)


def test_sliced_norms_match_hooks(monkeypatch):
    """Slices of one record each give the norms of the whole batch at once."""
    monkeypatch.setattr(ghost, "_SLICE_ELEMENTS", 1)
    model, x, y, layer_map = make_case("resnet")
    ghost_model = copy.deepcopy(model)
    hooks_module, hooks_optimizer, _ = make_private(model, layer_map, "hooks", weights=weights_for(layer_map))
    ghost_module, ghost_optimizer, _ = make_private(ghost_model, layer_map, "ghost", weights=weights_for(layer_map))
    F.cross_entropy(hooks_module(x), y, reduction="sum").backward()
    F.cross_entropy(ghost_module(x), y, reduction="sum").backward()
    torch.testing.assert_close(
        ghost_optimizer.per_example_group_norms(), hooks_optimizer.per_example_group_norms(), atol=1e-8, rtol=1e-8
    )


CONV_LAYERS = {
    "conv1d_stride2": (lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1), (5, 3, 11)),
    "conv2d_groups_dilation": (lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), (5, 4, 7, 7)),
    "conv2d_no_bias": (lambda: nn.Conv2d(2, 3, (3, 2), stride=(2, 1), bias=False), (5, 2, 8, 6)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2), (5, 2, 4, 4, 4)),
    "conv2d_same_padding": (lambda: nn.Conv2d(2, 3, 3, padding="same"), (5, 2, 6, 6)),
    "conv2d_circular": (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), (5, 2, 6, 6)),
}


@pytest.mark.parametrize("case", sorted(CONV_LAYERS))
def test_grouped_conv_grad_sample_equals_opacus(case):
    make_layer, input_shape = CONV_LAYERS[case]
    torch.manual_seed(2)
    layer = make_layer()
    inputs = torch.randn(input_shape)
    backprops = torch.randn(layer(inputs).shape)
    expected = compute_conv_grad_sample(layer, [inputs], backprops)
    grouped = ghost.compute_conv_grad_sample_grouped(layer, [inputs], backprops)
    assert set(grouped) == set(expected)
    for param, grad_sample in expected.items():
        torch.testing.assert_close(grouped[param], grad_sample, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(INPUT_SHAPES))
@pytest.mark.parametrize("with_empty_batch", [False, True], ids=["no_empty", "empty"])
def test_ghost_steps_equal_hooks_steps(name, with_empty_batch):
    model, x, y, layer_map = make_case(name)
    ghost_model = copy.deepcopy(model)
    weights = weights_for(layer_map)
    batches = [torch.tensor([0, 2, 3, 5, 8]), torch.tensor([1, 4, 6, 7])]
    if with_empty_batch:
        batches.insert(1, torch.tensor([], dtype=torch.long))

    hooks_module, hooks_optimizer, _ = make_private(model, layer_map, "hooks", weights=weights)
    ghost_module, ghost_optimizer, _ = make_private(ghost_model, layer_map, "ghost", weights=weights)
    # Chunks of 2 split every logical batch into several physical batches.
    run_steps(hooks_module, hooks_optimizer, x, y, batches, chunk_size=2)
    run_steps(ghost_module, ghost_optimizer, x, y, batches, chunk_size=2)

    assert ghost_optimizer.steps_taken == len(batches)
    assert_same_parameters(ghost_model, model)


@pytest.mark.parametrize("name", sorted(INPUT_SHAPES))
def test_ghost_clip_bounds_each_record(name):
    """With C below every weighted norm, each record's contribution has norm exactly C."""
    model, x, y, layer_map = make_case(name, n_records=4)
    weights = weights_for(layer_map)
    max_grad_norm = 1e-3
    module, optimizer, _ = make_private(model, layer_map, "ghost", weights=weights, noise_multiplier=0.0, max_grad_norm=max_grad_norm)
    for i in range(len(x)):
        optimizer.zero_grad()
        optimizer.backward(F.cross_entropy(module(x[i : i + 1]), y[i : i + 1], reduction="none"))
        contribution = math.sqrt(sum(float(p.summed_grad.pow(2).sum()) for p in optimizer.params))
        assert contribution == pytest.approx(max_grad_norm, rel=1e-6)


def test_ghost_physical_chunks_equal_one_batch():
    model, x, y, layer_map = make_case("cnn")
    split_model = copy.deepcopy(model)
    weights = weights_for(layer_map)
    module, optimizer, _ = make_private(model, layer_map, "ghost", weights=weights)
    split_module, split_optimizer, _ = make_private(split_model, layer_map, "ghost", weights=weights)
    batch = [torch.arange(len(x))]
    run_steps(module, optimizer, x, y, batch, chunk_size=len(x))
    run_steps(split_module, split_optimizer, x, y, batch, chunk_size=4)
    assert_same_parameters(split_model, model, atol=1e-10)


@pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning")
def test_ghost_dpsgd_equals_opacus_ghost():
    model, x, y, layer_map = make_case("cnn", n_records=7)
    reference = copy.deepcopy(model)
    noise_multiplier, max_grad_norm, lr = 1.3, 0.4, 0.2

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    module, dp_optimizer, _ = LMDPEngine().make_private(
        module=model,
        optimizer=optimizer,
        layer_map=layer_map,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        layer_weights=None,
        sample_rate=1.0,
        dataset_size=len(x),
        noise_generator=torch.Generator().manual_seed(42),
        grad_sample_mode="ghost",
    )
    dp_optimizer.backward(F.cross_entropy(module(x), y, reduction="none"))
    dp_optimizer.step()

    # One batch of all 7 records: Opacus's expected batch size is then 7, as ours.
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    opacus_module, opacus_optimizer, criterion, _ = PrivacyEngine().make_private(
        module=reference,
        optimizer=torch.optim.SGD(reference.parameters(), lr=lr),
        criterion=nn.CrossEntropyLoss(),
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=False,
        grad_sample_mode="ghost",
        noise_generator=torch.Generator().manual_seed(42),
    )
    criterion(opacus_module(x), y).backward()
    opacus_optimizer.step()

    assert_same_parameters(model, reference, atol=1e-10)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_empty_physical_batch_is_skipped(mode):
    model, x, y, layer_map = make_case("cnn")
    reference = copy.deepcopy(model)
    weights = weights_for(layer_map)
    module, optimizer, _ = make_private(model, layer_map, mode, weights=weights)
    reference_module, reference_optimizer, _ = make_private(reference, layer_map, mode, weights=weights)

    optimizer.zero_grad()
    optimizer.backward(F.cross_entropy(module(x[:0]), y[:0], reduction="none"))
    optimizer.backward(F.cross_entropy(module(x), y, reduction="none"))
    optimizer.step()
    run_steps(reference_module, reference_optimizer, x, y, [torch.arange(len(x))], chunk_size=len(x))
    assert_same_parameters(model, reference, atol=1e-10)


def test_ghost_rejects_plain_backward():
    model, x, y, layer_map = make_case("mlp")
    before = [p.detach().clone() for p in model.parameters()]
    module, optimizer, _ = make_private(model, layer_map, "ghost", weights=weights_for(layer_map))
    F.cross_entropy(module(x), y).backward()
    with pytest.raises(RuntimeError, match=r"optimizer\.backward\(per_example_losses\)"):
        optimizer.step()
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p.detach())


def test_ghost_non_finite_gradient_raises():
    model, x, y, layer_map = make_case("mlp")
    before = [p.detach().clone() for p in model.parameters()]
    module, optimizer, _ = make_private(model, layer_map, "ghost", weights=weights_for(layer_map))
    x = x.clone()
    x[3] = math.inf
    # The training loop rejects the NaN loss of record 3 first; backpropagating
    # it anyway reaches the optimizer's own check on the norms.
    with pytest.raises(NonFiniteLossError, match=r"examples \[3\]"):
        optimizer.backward(F.cross_entropy(module(x), y, reduction="none"))
    for p in optimizer.params:
        assert p.grad is None
        assert p.summed_grad is None
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p.detach())


@pytest.mark.parametrize("name", sorted(INPUT_SHAPES))
def test_auto_mode_choice(name):
    model, _, _, _ = make_case(name)
    assert resolve_grad_sample_mode("auto", model) == "ghost"
    assert resolve_grad_sample_mode("hooks", model) == "hooks"
    assert resolve_grad_sample_mode("ghost", model) == "ghost"


class Bilinear(nn.Module):
    """A layer type that neither ghost norms nor the sliced fallback cover."""

    taps = ("layer",)

    def __init__(self):
        super().__init__()
        self.layer = nn.Bilinear(4, 4, 3)

    def forward(self, x):
        return self.layer(x, x)


def test_auto_mode_hooks_for_other_layers():
    assert resolve_grad_sample_mode("auto", Bilinear()) == "hooks"


def test_unknown_mode_names_choices():
    model, _, _, _ = make_case("mlp")
    with pytest.raises(ConfigError, match="grad_sample_mode must be one of") as error:
        resolve_grad_sample_mode("fast", model)
    for mode in GRAD_SAMPLE_MODES:
        assert repr(mode) in str(error.value)
    with pytest.raises(ConfigError, match="grad_sample_mode"):
        TrainingConfig(method="dpsgd", steps=1, sample_rate=0.5, grad_sample_mode="fast")


def test_training_loop_ghost_equals_hooks():
    """Poisson batches with an empty one, split into physical batches of 2, through ``train``."""
    torch.manual_seed(5)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, hidden_sizes=(12, 6))
    x = torch.randn(20, 1, 8, 8)
    y = torch.randint(0, 3, (20,))
    layer_map = build_layer_map(model, model.taps, x[:2])
    results = {}
    models = {}
    for mode in ("hooks", "ghost"):
        models[mode] = copy.deepcopy(model)
        config = TrainingConfig(
            method="lmdpsgd",
            steps=12,
            sample_rate=0.12,
            learning_rate=0.3,
            noise_multiplier=0.9,
            max_grad_norm=0.3,
            layer_weights={"hidden1": 0.4, "hidden2": 0.8, "logits": 0.6},
            max_physical_batch_size=2,
            seed=0,
            grad_sample_mode=mode,
        )
        results[mode] = train(models[mode], x, y, config=config, layer_map=layer_map)
    # Under float64, seed 0 draws an empty first batch and batches of up to 6 records (q = 0.12, N = 20).
    assert results["ghost"].empty_batches >= 1
    assert results["ghost"].empty_batches == results["hooks"].empty_batches
    assert_same_parameters(models["ghost"], models["hooks"])
