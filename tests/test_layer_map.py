"""Layer maps: groups follow the forward order, and every problem is reported at once."""

import pytest
import torch
from torch import nn

from lmdp.errors import LayerMapError
from lmdp.models import HEAD, build_layer_map, build_model


class Reordered(nn.Module):
    """Registers ``late`` before ``early`` but runs ``early`` first."""

    def __init__(self):
        super().__init__()
        self.late = nn.Linear(4, 2)
        self.early = nn.Linear(3, 4)
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        return self.late(torch.relu(self.early(x)))


@pytest.mark.parametrize("name, shape", [("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)), ("cnn", (1, 28, 28)), ("resnet", (3, 32, 32))])
def test_zoo_models_map_every_parameter_once(name, shape):
    model = build_model(name, input_shape=shape, num_classes=10)
    layer_map = build_layer_map(model, model.taps, torch.zeros(2, *shape))
    mapped = [p for params in layer_map.groups.values() for p in params]
    assert sorted(mapped) == sorted(n for n, _ in model.named_parameters())
    assert len(mapped) == len(set(mapped))
    assert layer_map.groups[HEAD] == ()


def test_groups_follow_execution_not_registration():
    model = Reordered()
    model.unused.requires_grad_(False)
    layer_map = build_layer_map(model, ("early", "late"), torch.zeros(1, 3))
    assert layer_map.groups == {"early": ("early.weight", "early.bias"), "late": ("late.weight", "late.bias"), HEAD: ()}


def test_head_holds_modules_after_last_tap():
    model = Reordered()
    model.unused.requires_grad_(False)
    layer_map = build_layer_map(model, ("early",), torch.zeros(1, 3))
    assert layer_map.groups[HEAD] == ("late.weight", "late.bias")


def test_every_problem_is_reported_once():
    model = Reordered()  # "unused" is trainable but never runs
    with pytest.raises(LayerMapError) as raised:
        build_layer_map(model, ("early", "late"), torch.zeros(1, 3))
    assert "unused.weight" in str(raised.value)
    assert "unused.bias" in str(raised.value)

    with pytest.raises(LayerMapError, match=r"unknown taps \['nope', 'missing'\]"):
        build_layer_map(model, ("nope", "early", "missing"), torch.zeros(1, 3))


def test_taps_out_of_forward_order_are_rejected():
    model = Reordered()
    model.unused.requires_grad_(False)
    with pytest.raises(LayerMapError, match="forward order"):
        build_layer_map(model, ("late", "early"), torch.zeros(1, 3))
