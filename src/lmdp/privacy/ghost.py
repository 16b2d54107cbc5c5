"""Ghost-clipping mode of LM-DP-SGD: per-example norms without per-example gradients.

Clipping needs only each record's gradient norm. For a linear layer with
input a_i and output gradient b_i, the norm follows from the two vectors
alone: ‖b_i a_iᵀ‖_F = ‖a_i‖₂·‖b_i‖₂ (ghost clipping). A second backward pass
of the losses scaled by the clip factors then yields the clipped sum. Layer
weights need no extra pass, because the weighted norm needs only the
per-group norms and each weight scales its group's sum:

    ‖u_i‖₂ = sqrt(Σ_l w_l² ‖g_i^(l)‖²)           from the first backward pass
    c_i    = min(1, C / ‖u_i‖₂)
    Σ_i ū_i^(l) = w_l · ∇_{θ_l} Σ_i c_i·loss_i     from the second backward pass

After the first pass, Opacus's ``GradSampleModuleFastGradientClipping``
stores ``p._norm_sample`` (shape ``(batch_size,)``) on every trainable
parameter. Layer types with a registered norm sampler (``nn.Linear`` and
``nn.Embedding`` in Opacus 1.6) get ghost norms. Every other layer falls back
to its own per-example gradient, reduced to a norm and freed layer by layer,
so only those layers ever have per-example gradients. ``GhostGradSampleModule``
computes them for convolutions and normalisation layers in slices of the
batch, which bounds their memory, and for convolutions as one grouped
convolution per slice instead of Opacus's unfolded input.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleHooksFastGradientClipping
from torch import nn
from torch.optim import Optimizer

from lmdp.errors import ConfigError
from lmdp.models.layer_map import LayerMap
from lmdp.privacy.mechanism import PrivacyMechanism
from lmdp.privacy.optimizer import LMDPOptimizer

GRAD_SAMPLE_MODES = ("auto", "hooks", "ghost")

# Layer types whose per-example gradients ghost mode computes slice by slice.
_SLICED_LAYER_TYPES = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
# Each slice's inputs, times the kernel size for a convolution, and output
# gradients have at most this many elements (16 MiB in float32), unless one
# example alone has more.
_SLICE_ELEMENTS = 2**22
_CONV_WEIGHT_GRADIENTS = {
    nn.Conv1d: torch.nn.grad.conv1d_weight,
    nn.Conv2d: torch.nn.grad.conv2d_weight,
    nn.Conv3d: torch.nn.grad.conv3d_weight,
}


def ghost_mode_layer_types() -> tuple[type[nn.Module], ...]:
    """Return the layer types that ghost mode handles itself: ghost norms, or sliced per-example gradients."""
    return (*GradSampleHooksFastGradientClipping.NORM_SAMPLERS, *_SLICED_LAYER_TYPES)


def resolve_grad_sample_mode(grad_sample_mode: str, module: nn.Module) -> str:
    """Return ``"hooks"`` or ``"ghost"``: the mode requested, or for ``"auto"`` the faster one for ``module``.

    ``"auto"`` picks ghost mode when layers of ``ghost_mode_layer_types()``
    have at least half of the trainable parameters, and hooks mode otherwise.
    On the zoo's MLP, CNN and ResNet, ghost mode was as fast as hooks mode or
    faster at batch sizes 64 to 1024 (``lmdp bench --threads 1`` on 2 CPU
    cores, docs/benchmarks.md). Other layers get per-example gradients from
    Opacus in both modes, so there ghost mode would only add its second
    backward pass.

    Raises:
        ConfigError: for a mode not in ``GRAD_SAMPLE_MODES``.
    """
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"grad_sample_mode must be one of {list(GRAD_SAMPLE_MODES)}; got {grad_sample_mode!r}")
    if grad_sample_mode != "auto":
        return grad_sample_mode
    ghost_types = ghost_mode_layer_types()
    total, in_ghost_layers = 0, 0
    for submodule in module.modules():
        count = sum(p.numel() for p in submodule.parameters(recurse=False) if p.requires_grad)
        total += count
        if type(submodule) in ghost_types:
            in_ghost_layers += count
    return "ghost" if total and 2 * in_ghost_layers >= total else "hooks"


def compute_conv_grad_sample_grouped(layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
    """Return the per-example gradients of a convolution, computed as one convolution with a group per example.

    The batch is folded into the channels, so that torch's weight-gradient
    kernel of a grouped convolution yields every example's gradient at once.
    The result equals Opacus's ``compute_conv_grad_sample`` up to rounding.
    Opacus's version (unfolded input) handles string padding and padding
    modes other than zeros, which this folding does not express.
    """
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        return compute_conv_grad_sample(layer, activations, backprops)
    inputs = activations[0].to(backprops.dtype)
    batch_size = len(inputs)
    grad_samples = {}
    if layer.weight.requires_grad:
        # NOTE: with two torch threads and other processes on the 2 cores, this
        # grouped kernel took up to 2 s for 256 examples where one thread took
        # 5 ms (torch 2.13). One thread avoids that, but forgoes parallelism for
        # this kernel on larger machines.
        with _single_thread():
            folded = _CONV_WEIGHT_GRADIENTS[type(layer)](
                inputs.reshape(1, -1, *inputs.shape[2:]),
                (batch_size * layer.out_channels, *layer.weight.shape[1:]),
                backprops.reshape(1, -1, *backprops.shape[2:]),
                stride=layer.stride,
                padding=layer.padding,
                dilation=layer.dilation,
                groups=batch_size * layer.groups,
            )
        grad_samples[layer.weight] = folded.view(batch_size, *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        grad_samples[layer.bias] = backprops.flatten(2).sum(dim=2)
    return grad_samples


@contextmanager
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sliced_norm_sampler(grad_sampler: Callable) -> Callable:
    """Return a norm sampler that runs ``grad_sampler`` on slices of the batch and keeps only the norms."""

    def norm_sampler(layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
        batch_size = len(backprops)
        kernel_elements = int(torch.tensor(getattr(layer, "kernel_size", (1,))).prod())
        elements_per_example = activations[0][:1].numel() * kernel_elements + backprops[:1].numel()
        rows = max(1, _SLICE_ELEMENTS // elements_per_example)
        norms: dict[nn.Parameter, list[torch.Tensor]] = {}
        for start in range(0, batch_size, rows):
            stop = start + rows
            grad_samples = grad_sampler(layer, [a[start:stop] for a in activations], backprops[start:stop])
            for param, grad_sample in grad_samples.items():
                norms.setdefault(param, []).append(torch.linalg.vector_norm(grad_sample.flatten(1), dim=1))
        return {param: torch.cat(parts) for param, parts in norms.items()}

    return norm_sampler


class GhostGradSampleModule(GradSampleModuleFastGradientClipping):
    """Opacus's fast-gradient-clipping module, with the per-example gradients of convolutions and norms sliced.

    For a layer in ``_SLICED_LAYER_TYPES``, the per-example gradients are
    computed on slices of the batch and reduced to norms slice by slice: by
    ``compute_conv_grad_sample_grouped`` for convolutions and by Opacus's own
    code for normalisation layers. The norms equal Opacus's up to rounding. A
    sliced layer that runs twice in one forward pass makes Opacus raise
    ``NotImplementedError`` (parameter tying), as a linear layer does, so such
    models need hooks mode.
    """

    def __init__(self, module: nn.Module, *, max_grad_norm: float):
        super().__init__(
            module,
            batch_first=True,
            loss_reduction="sum",
            max_grad_norm=max_grad_norm,
            use_ghost_clipping=True,
        )
        # An instance attribute, so Opacus's shared table is left unchanged.
        grad_samplers = {**self.GRAD_SAMPLERS, **dict.fromkeys(_CONV_WEIGHT_GRADIENTS, compute_conv_grad_sample_grouped)}
        self.NORM_SAMPLERS = {
            **{
                layer_type: _sliced_norm_sampler(grad_samplers[layer_type])
                for layer_type in _SLICED_LAYER_TYPES
                if layer_type in grad_samplers
            },
            **GradSampleHooksFastGradientClipping.NORM_SAMPLERS,
        }


def wrap_for_ghost_clipping(module: nn.Module, *, max_grad_norm: float) -> GhostGradSampleModule:
    """Wrap ``module`` so that each backward pass stores ``p._norm_sample`` for every trainable parameter.

    The per-example losses are always summed before the first pass, so the
    wrapper uses ``loss_reduction="sum"`` whatever the caller's reduction.
    """
    return GhostGradSampleModule(module, max_grad_norm=max_grad_norm)


class GhostLMDPOptimizer(LMDPOptimizer):
    """``LMDPOptimizer`` whose per-example norms come from ghost clipping.

    Train with ``optimizer.backward(per_example_losses)`` after each forward
    pass, in place of ``loss.backward()``: it runs both backward passes and
    accumulates the clipped, weighted sum. ``step`` then adds the noise and
    scales, as in hooks mode.

    Args:
        optimizer: the optimizer that applies the privatised gradient.
        module: ``model`` wrapped by ``wrap_for_ghost_clipping``.
        model: the (unwrapped) model whose parameters ``optimizer`` updates.
        layer_map, mechanism, generator, secure_mode: as for ``LMDPOptimizer``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        module: GradSampleModuleFastGradientClipping,
        model: nn.Module,
        layer_map: LayerMap,
        mechanism: PrivacyMechanism,
        generator: torch.Generator | None = None,
        secure_mode: bool = False,
    ):
        super().__init__(
            optimizer,
            model=model,
            layer_map=layer_map,
            mechanism=mechanism,
            generator=generator,
            secure_mode=secure_mode,
            loss_reduction="sum",
        )
        self.module = module

    def per_example_group_norms(self) -> torch.Tensor:
        """Return ‖g_i^(l)‖₂ for each example i and group l from the ghost norms, shape ``(batch_size, num_groups)``."""
        columns = []
        for name in self.group_names:
            squared = None
            for p in self.group_params[name]:
                term = p._norm_sample.pow(2)
                squared = term if squared is None else squared + term
            columns.append(squared.sqrt())
        return torch.stack(columns, dim=1)

    def backward(self, losses: torch.Tensor) -> None:
        """Backpropagate the per-example ``losses`` of one physical batch twice and add its Σ_i ū_i.

        The first pass stores the per-example norms (its parameter gradients
        are discarded), the second backpropagates Σ_i c_i·loss_i with the
        norm hooks off, so ``p.grad`` is Σ_i c_i·g_i. ``losses`` has shape
        ``(batch_size,)``, one unreduced loss per record.

        Raises:
            NonFiniteLossError: when a per-example gradient is NaN or
                infinite; nothing is accumulated and no parameter changes.
        """
        if losses.numel() == 0:
            # An empty physical batch adds nothing; drop what its forward pass stored.
            self._discard_activations()
            return

        losses.sum().backward(retain_graph=True)
        missing = [index for index, p in enumerate(self.params) if getattr(p, "_norm_sample", None) is None]
        if missing:
            raise RuntimeError(
                f"parameters at positions {missing} have no per-example norm after backward; "
                "every trainable parameter must take part in the forward pass"
            )
        group_norms = self.per_example_group_norms()
        self._check_finite(group_norms)
        factors = self.clip_factors(self.weighted_norms(group_norms)).detach()
        for p in self.params:
            p.grad = None
            p._norm_sample = None

        self.module.disable_hooks()
        try:
            (factors.to(losses.dtype) * losses).sum().backward()
        finally:
            self.module.enable_hooks()
        self.accumulate_weighted_grads()

    def accumulate_weighted_grads(self) -> None:
        """Add w_l · ``p.grad`` to ``p.summed_grad`` for each parameter p of group l, then drop ``p.grad``."""
        for p in self.params:
            contribution = p.grad.mul_(self._weight_of[p])
            p.summed_grad = contribution if p.summed_grad is None else p.summed_grad.add_(contribution)
            p.grad = None

    def clip_and_accumulate(self) -> None:
        """Check that nothing bypassed ``backward``: ghost mode clips inside ``backward``.

        Raises:
            RuntimeError: when a parameter has a gradient that did not come
                through ``backward``, such as one from ``loss.backward()``.
        """
        stray = [index for index, p in enumerate(self.params) if p.grad is not None]
        if stray:
            self.zero_grad()
            raise RuntimeError(
                f"parameters at positions {stray} have an unclipped gradient; in ghost mode call "
                "optimizer.backward(per_example_losses) instead of loss.backward(). The gradients were dropped"
            )

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop gradients, per-example norms and the accumulated clipped sum."""
        for p in self.params:
            p._norm_sample = None
        super().zero_grad(set_to_none)
