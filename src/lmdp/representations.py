"""Capture of intermediate representations (IRs) at the tapped modules of a model.

Forward hooks read each tap's output batch by batch, in eval mode and under
``torch.inference_mode``, and reduce it at once to a fixed-width feature
vector per record. Only the reduced features are kept, so the memory for
activations is bounded by one batch, not by the dataset.

Pooling of an output of shape (batch_size, channels, *spatial) with at
least one spatial dimension (``pooling="stats"``, the default):

- per channel: mean, max and standard deviation over the spatial
  positions (3 × channels features). Mean and max are the usual global
  pools; the standard deviation records how spread out the activation is;
- spatial layout: the mean over channels, average-pooled to a grid of at
  most ``spatial_grid`` cells per spatial dimension (for 1-, 2- and 3-D maps),
  which records where the activation sits.

Outputs of shape (batch_size, features) are kept as they are. ``"mean"``
keeps only the per-channel means, ``"flatten"`` keeps every value. A
reduced vector wider than ``projection_dim`` is multiplied by a fixed
Gaussian random matrix (Johnson–Lindenstrauss projection), seeded by
``seed`` and the tap name, so every capture of the same tap with the same
settings uses the same projection.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lmdp.errors import ConfigError

logger = logging.getLogger(__name__)

POOLING_METHODS: tuple[str, ...] = ("stats", "mean", "flatten")


@dataclass(frozen=True)
class CaptureConfig:
    """Settings of IR capture; see the module docstring for the pooling."""

    pooling: str = "stats"
    spatial_grid: int = 2
    projection_dim: int | None = 512
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_METHODS:
            raise ConfigError(f"pooling must be one of {list(POOLING_METHODS)}; got {self.pooling!r}")
        if self.spatial_grid < 0:
            raise ConfigError(f"spatial_grid must be >= 0 (0 turns the spatial layout off); got {self.spatial_grid}")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ConfigError(f"projection_dim must be >= 1, or None for no projection; got {self.projection_dim}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1; got {self.batch_size}")


@dataclass(frozen=True)
class Representations:
    """Reduced IRs of a set of records at every tap, and the model's output.

    ``features[tap]`` is (n_records, n_features); ``outputs`` is the model's
    output, flattened to (n_records, n_outputs). ``output_tap`` is the tap
    whose output is the model's output tensor itself, or None.
    """

    features: dict[str, np.ndarray]
    outputs: np.ndarray
    output_tap: str | None = None
    taps: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return self.outputs.shape[0]

    def subset(self, indices: np.ndarray) -> Representations:
        """Return the representations of the records at ``indices``."""
        return Representations(
            features={tap: values[indices] for tap, values in self.features.items()},
            outputs=self.outputs[indices],
            output_tap=self.output_tap,
            taps=self.taps,
        )


def pool_activation(activation: torch.Tensor, *, pooling: str = "stats", spatial_grid: int = 2) -> torch.Tensor:
    """Reduce a tap output (batch_size, channels, *spatial) or (batch_size, features) to (batch_size, n_features)."""
    batch_size = activation.shape[0]
    if activation.dim() == 1:
        return activation.reshape(batch_size, 1)
    if activation.dim() == 2 or pooling == "flatten":
        return activation.reshape(batch_size, -1)

    channels = activation.reshape(batch_size, activation.shape[1], -1)
    parts = [channels.mean(dim=2)]
    if pooling == "stats":
        parts.append(channels.amax(dim=2))
        parts.append(channels.std(dim=2, unbiased=False))
        layout = _spatial_layout(activation, spatial_grid)
        if layout is not None:
            parts.append(layout)
    return torch.cat(parts, dim=1)


def _spatial_layout(activation: torch.Tensor, spatial_grid: int) -> torch.Tensor | None:
    """Average the channels, then average-pool each spatial dimension to at most ``spatial_grid`` cells."""
    spatial = activation.shape[2:]
    if spatial_grid == 0 or len(spatial) > 3:
        # NOTE: maps with more than 3 spatial dimensions get no layout features.
        return None
    channel_mean = activation.mean(dim=1, keepdim=True)
    grid = tuple(min(spatial_grid, size) for size in spatial)
    pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[len(spatial) - 1]
    return pool(channel_mean, grid).reshape(activation.shape[0], -1)


def capture_representations(
    model: nn.Module,
    inputs: torch.Tensor | np.ndarray,
    *,
    taps: Sequence[str],
    config: CaptureConfig = CaptureConfig(),
    progress: bool = False,
) -> Representations:
    """Run ``model`` over ``inputs`` (n_records, *input_shape) and capture the reduced IR of every tap.

    The model runs in eval mode (dropout off) without autograd, on the
    device of its parameters; each module's train/eval flag is restored
    afterwards. A tap whose output is a tuple or list contributes its first
    tensor.

    Raises:
        ConfigError: an unknown tap (the message lists the model's modules),
            or a tap whose output is not a tensor.
    """
    taps = tuple(taps)
    modules = dict(model.named_modules())
    unknown = [tap for tap in taps if tap not in modules]
    if unknown:
        known = [name for name in modules if name]
        raise ConfigError(f"unknown taps {unknown}; the model's modules are: {known}")

    n_records = inputs.shape[0]
    device = _model_device(model)
    batch_outputs: dict[str, torch.Tensor] = {}
    batch_features: dict[str, np.ndarray] = {}
    chunks: dict[str, list[np.ndarray]] = {tap: [] for tap in taps}
    output_chunks: list[np.ndarray] = []
    output_tap_hits = {tap: 0 for tap in taps}
    projections: dict[str, torch.Tensor] = {}

    def make_hook(tap: str):
        def hook(_module, _inputs, output):
            # Pool at once: a later in-place operation (e.g. ReLU(inplace=True)) may overwrite the output.
            activation = _first_tensor(output, tap)
            batch_outputs[tap] = activation
            pooled = pool_activation(activation, pooling=config.pooling, spatial_grid=config.spatial_grid)
            # copy=True because pooling a 2-D output returns a view that the in-place operation would change.
            projected = _project(pooled, tap, config, projections)
            batch_features[tap] = projected.to("cpu", dtype=torch.float32, copy=True).numpy()

        return hook

    handles = [modules[tap].register_forward_hook(make_hook(tap)) for tap in taps]
    training_flags = {name: module.training for name, module in model.named_modules()}
    batches = range(0, n_records, config.batch_size)
    try:
        model.eval()
        with torch.inference_mode():
            for start in tqdm(batches, desc="capture", unit="batch", disable=not progress, leave=False):
                batch = _as_batch(inputs[start : start + config.batch_size], device)
                batch_outputs.clear()
                batch_features.clear()
                output = model(batch)
                if not isinstance(output, torch.Tensor):
                    raise ConfigError(f"the model must return a tensor of logits; got {type(output).__name__}")

                for tap in taps:
                    if tap not in batch_features:
                        raise ConfigError(f"tap {tap!r} did not run in the forward pass; tap a module that runs")
                    if batch_outputs[tap] is output:
                        output_tap_hits[tap] += 1
                    chunks[tap].append(batch_features[tap])
                output_chunks.append(output.reshape(output.shape[0], -1).float().cpu().numpy())
    finally:
        for handle in handles:
            handle.remove()
        for name, module in model.named_modules():
            module.training = training_flags[name]

    n_batches = len(batches)
    output_tap = next((tap for tap in reversed(taps) if n_batches and output_tap_hits[tap] == n_batches), None)
    features = {tap: _concatenate(chunks[tap]) for tap in taps}
    logger.debug("captured %d records at taps %s: widths %s", n_records, taps, {t: f.shape[1] for t, f in features.items()})
    return Representations(features=features, outputs=_concatenate(output_chunks), output_tap=output_tap, taps=taps)


def _as_batch(batch: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    if isinstance(batch, np.ndarray):
        # Copy one batch: datasets may hold read-only arrays, which torch.from_numpy cannot share.
        return torch.tensor(batch, dtype=torch.float32, device=device)
    return batch.to(device=device, dtype=torch.float32)


def _first_tensor(output, tap: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ConfigError(f"tap {tap!r} returned {type(output).__name__}, not a tensor; tap a module that returns a tensor")


def _project(
    pooled: torch.Tensor, tap: str, config: CaptureConfig, projections: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Apply the tap's fixed Gaussian random projection when its width exceeds ``projection_dim``."""
    width = pooled.shape[1]
    if config.projection_dim is None or width <= config.projection_dim:
        return pooled
    if tap not in projections:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + zlib.crc32(tap.encode()))
        matrix = torch.randn(width, config.projection_dim, generator=generator) / config.projection_dim**0.5
        projections[tap] = matrix.to(pooled.device)
    return pooled.float() @ projections[tap]


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _concatenate(chunks: list[np.ndarray]) -> np.ndarray:
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks, axis=0)
