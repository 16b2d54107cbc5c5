"""Model zoo: small models that declare their taps and train under DP-SGD.

Every model uses GroupNorm instead of BatchNorm, because BatchNorm mixes the
examples of a batch and so has no per-example gradient. Each class has a
``taps`` attribute: the qualified names of its tapped modules in forward order.
The last tap of every zoo model is ``logits``, so the head group is empty.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, Sequence

import torch
from torch import nn

from lmdp.errors import ConfigError


def _conv_block(in_channels: int, out_channels: int, pool: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.GroupNorm(_num_groups(out_channels), out_channels),
        nn.ReLU(),
        pool,
    )


def _num_groups(channels: int) -> int:
    """Use groups of 4 channels, or one group when the channel count is not a multiple of 4."""
    return channels // 4 if channels % 4 == 0 else 1


class MLP(nn.Module):
    """Multilayer perceptron for flat inputs; images are flattened first.

    Taps: ``hidden1`` .. ``hiddenK`` (after each ReLU) and ``logits``.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden_sizes: Sequence[int] = (256, 128)):
        super().__init__()
        in_features = int(torch.tensor(input_shape).prod())
        self.flatten = nn.Flatten()
        layers = []
        for index, width in enumerate(hidden_sizes, start=1):
            layers.append((f"hidden{index}", nn.Sequential(nn.Linear(in_features, width), nn.ReLU())))
            in_features = width
        for name, layer in layers:
            self.add_module(name, layer)
        self.logits = nn.Linear(in_features, num_classes)
        self.taps = tuple(name for name, _ in layers) + ("logits",)
        self._hidden = [layer for _, layer in layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        for layer in self._hidden:
            x = layer(x)
        return self.logits(x)


class CNN(nn.Module):
    """Two conv blocks and one hidden dense layer for small grayscale or colour images.

    Works for 8×8 (scikit-learn digits), 28×28 (MNIST, Fashion-MNIST) and
    32×32 inputs: the second block ends in adaptive average pooling to a
    ``pooled_size`` × ``pooled_size`` map. Taps: ``block1``, ``block2``,
    ``fc``, ``logits``.
    """

    taps = ("block1", "block2", "fc", "logits")

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        hidden_size: int = 64,
    ):
        super().__init__()
        in_channels, height, _width = _image_shape(input_shape, "cnn")
        pooled_size = 4 if height >= 16 else 2
        self.block1 = _conv_block(in_channels, channels[0], nn.MaxPool2d(2))
        self.block2 = _conv_block(channels[0], channels[1], nn.AdaptiveAvgPool2d(pooled_size))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(channels[1] * pooled_size**2, hidden_size), nn.ReLU())
        self.logits = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.fc(self.block2(self.block1(x))))


class BasicBlock(nn.Module):
    """Residual block of two 3×3 convolutions with GroupNorm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(_num_groups(out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(_num_groups(out_channels), out_channels)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.GroupNorm(_num_groups(out_channels), out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """Small ResNet (three stages of one basic block) with GroupNorm, for 32×32 colour images.

    Taps: ``stage1``, ``stage2``, ``stage3`` and ``logits``; the stem runs in
    the group of ``stage1``.
    """

    taps = ("stage1", "stage2", "stage3", "logits")

    def __init__(self, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        in_channels, _height, _width = _image_shape(input_shape, "resnet")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.GroupNorm(_num_groups(widths[0]), widths[0]),
            nn.ReLU(),
        )
        self.stage1 = BasicBlock(widths[0], widths[0])
        self.stage2 = BasicBlock(widths[0], widths[1], stride=2)
        self.stage3 = BasicBlock(widths[1], widths[2], stride=2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.logits = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.logits(self.pool(x))


def _image_shape(input_shape: Sequence[int], model_name: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(
            f"model {model_name!r} needs image inputs of shape (channels, height, width); "
            f"got input_shape={tuple(input_shape)}. Use model 'mlp' for flat inputs."
        )
    channels, height, width = (int(v) for v in input_shape)
    return channels, height, width


ZOO: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "cnn": CNN, "resnet": ResNet}


def build_model(name: str, *, input_shape: Sequence[int], num_classes: int, **options) -> nn.Module:
    """Build a zoo model by name, or a user model given as ``module:factory``.

    ``options`` go to the zoo constructor (e.g. ``hidden_sizes``) or to the
    factory, which is called as ``factory(input_shape=..., num_classes=...,
    **options)``. The current folder is searched for ``module`` first, as
    for ``python -m``.
    """
    if ":" in name:
        return _build_user_model(name, input_shape=input_shape, num_classes=num_classes, options=options)
    if name not in ZOO:
        raise ConfigError(f"unknown model {name!r}; the zoo has {sorted(ZOO)}, or give a user model as 'module:factory'")
    return ZOO[name](input_shape, num_classes, **options)


def _build_user_model(spec: str, *, input_shape: Sequence[int], num_classes: int, options: dict) -> nn.Module:
    module_name, _, factory_name = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"model {spec!r}: cannot import module {module_name!r} ({error}); run from the folder that contains it "
            "or add that folder to PYTHONPATH"
        ) from error
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ConfigError(f"model {spec!r}: module {module_name!r} has no callable {factory_name!r}")
    try:
        model = factory(input_shape=tuple(input_shape), num_classes=num_classes, **options)
    except TypeError as error:
        raise ConfigError(f"model {spec!r}: the factory must accept input_shape=, num_classes= and the model options; {error}") from error
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {spec!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def model_taps(model: nn.Module) -> tuple[str, ...]:
    """Return the taps a model declares in its ``taps`` attribute."""
    taps = getattr(model, "taps", None)
    if not taps:
        raise ConfigError(
            f"model {type(model).__name__} declares no taps; pass the names of the modules to tap "
            "(qualified names from model.named_modules(), in forward order)"
        )
    return tuple(taps)
