"""The LM-DP-SGD optimizer: layer weighting, one global clip, noise, scaling.

One logical step, for a Poisson batch B (Meng et al., arXiv:2602.22611;
DP-SGD of Abadi et al., arXiv:1607.00133, is the case of uniform weights 1):

    u_i = (w_1·g_i^(1), …, w_L·g_i^(L), w_head·g_i^(head))      layer weighting
    ū_i = u_i · min(1, C / ‖u_i‖₂)                              global clip
    ĝ   = (Σ_{i∈B} ū_i + N(0, σ²C²·I)) / (q·N)                  noise, scaling

The optimizer reads per-example gradients ``p.grad_sample`` of shape
``(batch_size, *p.shape)`` that Opacus's ``GradSampleModule`` stores, so it
never re-derives them. A logical batch may arrive as several physical batches:
``clip_and_accumulate`` runs after each backward pass and ``step`` adds the
noise once. ``backward(losses)`` does both for one physical batch, in this
mode and in ghost mode (``lmdp.privacy.ghost``).
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping

import torch
from opacus.optimizers.optimizer import _generate_noise
from torch import nn
from torch.optim import Optimizer

from lmdp.errors import NonFiniteLossError
from lmdp.models.layer_map import LayerMap
from lmdp.privacy.mechanism import PrivacyMechanism

logger = logging.getLogger(__name__)

# Added to per-example norms before dividing, as Opacus's DPOptimizer does, so a
# zero gradient gets clip factor 1 and the two optimizers agree bit for bit.
_NORM_EPSILON = 1e-6


class LMDPOptimizer:
    """Wrap a torch optimizer so that its ``step`` performs one LM-DP-SGD step.

    Args:
        optimizer: the optimizer that applies the privatised gradient.
        model: the (unwrapped) model whose parameters ``optimizer`` updates.
        layer_map: taps and parameter groups of ``model``.
        mechanism: σ, C, q, the expected batch size and one weight per group.
        generator: RNG of the noise, for reproducible runs; ``None`` uses the
            global torch RNG.
        secure_mode: draw noise with Opacus's floating-point-attack-resistant
            sampler (slower).
        loss_reduction: ``"mean"`` or ``"sum"``, how ``backward`` reduces the
            per-example losses. It must equal the ``loss_reduction`` of the
            ``GradSampleModule``, which undoes a mean so that per-example
            gradients stay those of each record's own loss.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        model: nn.Module,
        layer_map: LayerMap,
        mechanism: PrivacyMechanism,
        generator: torch.Generator | None = None,
        secure_mode: bool = False,
        loss_reduction: str = "sum",
    ):
        self.original_optimizer = optimizer
        self.model = model
        self.loss_reduction = loss_reduction
        self.mechanism = mechanism
        self.generator = generator
        self.secure_mode = secure_mode
        self.step_hooks: list[Callable[["LMDPOptimizer"], None]] = []
        self.steps_taken = 0

        parameters = dict(model.named_parameters())
        self.group_names: tuple[str, ...] = tuple(name for name in layer_map.group_names if layer_map.groups[name])
        self.group_params: dict[str, list[nn.Parameter]] = {
            name: [parameters[p] for p in layer_map.groups[name]] for name in self.group_names
        }
        # Parameter order follows the optimizer's param_groups, as in Opacus, so
        # noise is drawn in the same order and seeded runs match Opacus exactly.
        self.params: list[nn.Parameter] = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        self._weight_of = {}
        for name in self.group_names:
            for p in self.group_params[name]:
                self._weight_of[p] = mechanism.layer_weights[name]
        unmapped = [p for p in self.params if p not in self._weight_of]
        if unmapped:
            names = [n for n, p in parameters.items() if any(p is q for q in unmapped)]
            raise ValueError(f"optimizer parameters {names} are not in the layer map; build the map from the same model")
        self._reset_summed_grad()

    # -- the stages of one step, in order ---------------------------------

    def per_example_group_norms(self) -> torch.Tensor:
        """Return ‖g_i^(l)‖₂ for each example i and group l, shape ``(batch_size, num_groups)``."""
        columns = []
        for name in self.group_names:
            squared = None
            for p in self.group_params[name]:
                grad_sample = p.grad_sample
                # vector_norm reads the per-example gradients without allocating a squared copy.
                term = torch.linalg.vector_norm(grad_sample.reshape(len(grad_sample), -1), dim=1).pow(2)
                squared = term if squared is None else squared + term
            columns.append(squared.sqrt())
        return torch.stack(columns, dim=1)

    def weighted_norms(self, group_norms: torch.Tensor) -> torch.Tensor:
        """Return ‖u_i‖₂ = sqrt(Σ_l w_l² ‖g_i^(l)‖²), shape ``(batch_size,)``."""
        weights = torch.tensor(
            [self.mechanism.layer_weights[name] for name in self.group_names],
            dtype=group_norms.dtype,
            device=group_norms.device,
        )
        return (group_norms * weights).norm(2, dim=1)

    def clip_factors(self, weighted_norms: torch.Tensor) -> torch.Tensor:
        """Return min(1, C / ‖u_i‖₂) per example, shape ``(batch_size,)``."""
        return (self.mechanism.max_grad_norm / (weighted_norms + _NORM_EPSILON)).clamp(max=1.0)

    def clip_and_accumulate(self) -> None:
        """Add Σ_i ū_i of the pending physical batch to ``p.summed_grad`` and drop ``p.grad_sample``.

        Raises:
            NonFiniteLossError: when a per-example gradient is NaN or infinite;
                nothing is accumulated and no parameter changes.
        """
        if not self._has_pending_grad_samples():
            return
        group_norms = self.per_example_group_norms()
        self._check_finite(group_norms)
        factors = self.clip_factors(self.weighted_norms(group_norms))
        for p in self.params:
            grad_sample = p.grad_sample
            scaled = factors.to(grad_sample.dtype) * self._weight_of[p]
            contribution = torch.einsum("i,i...->...", scaled, grad_sample)
            p.summed_grad = contribution if p.summed_grad is None else p.summed_grad + contribution
            p.grad_sample = None
            p.grad = None

    def add_noise(self) -> None:
        """Set ``p.grad`` to Σ_i ū_i + N(0, (σC)²·I); an empty batch gets noise alone."""
        std = self.mechanism.noise_std
        for p in self.params:
            summed = p.summed_grad if p.summed_grad is not None else torch.zeros_like(p)
            noise = _generate_noise(std=std, reference=summed, generator=self.generator, secure_mode=self.secure_mode)
            p.grad = (summed + noise).view_as(p)

    def scale_grad(self) -> None:
        """Divide ``p.grad`` by the public expected batch size q·N, never the realised one."""
        for p in self.params:
            p.grad /= self.mechanism.expected_batch_size

    def backward(self, losses: torch.Tensor) -> None:
        """Backpropagate the per-example ``losses`` of one physical batch and add its Σ_i ū_i.

        ``losses`` has shape ``(batch_size,)``, one unreduced loss per record.
        """
        if losses.numel() == 0:
            # An empty physical batch adds nothing; drop what its forward pass stored.
            self._discard_activations()
            return
        reduced = losses.mean() if self.loss_reduction == "mean" else losses.sum()
        reduced.backward()
        self.clip_and_accumulate()

    # -- torch.optim.Optimizer-like interface ------------------------------

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Take one logical LM-DP-SGD step from everything accumulated since ``zero_grad``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.clip_and_accumulate()
        self.add_noise()
        self.scale_grad()
        self.original_optimizer.step()
        self.steps_taken += 1
        for hook in self.step_hooks:
            hook(self)
        self._reset_summed_grad()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop gradients, per-example gradients and the accumulated clipped sum."""
        for p in self.params:
            p.grad_sample = None
            p.grad = None
        self._reset_summed_grad()
        self.original_optimizer.zero_grad(set_to_none=set_to_none)

    @property
    def param_groups(self) -> list[dict]:
        return self.original_optimizer.param_groups

    def state_dict(self) -> dict:
        return {"optimizer": self.original_optimizer.state_dict(), "steps_taken": self.steps_taken}

    def load_state_dict(self, state: Mapping) -> None:
        self.original_optimizer.load_state_dict(state["optimizer"])
        self.steps_taken = int(state["steps_taken"])

    def _has_pending_grad_samples(self) -> bool:
        pending = [getattr(p, "grad_sample", None) is not None for p in self.params]
        if any(pending) and not all(pending):
            missing = [i for i, flag in enumerate(pending) if not flag]
            raise RuntimeError(
                f"parameters at positions {missing} have no per-example gradient after backward; "
                "every trainable parameter must take part in the forward pass"
            )
        return bool(pending) and pending[0]

    def _check_finite(self, group_norms: torch.Tensor) -> None:
        if not torch.isfinite(group_norms).all():
            bad = torch.nonzero(~torch.isfinite(group_norms).all(dim=1)).flatten().tolist()
            self.zero_grad()
            raise NonFiniteLossError(
                f"non-finite per-example gradients for examples {bad[:10]} of the physical batch at step "
                f"{self.steps_taken}; the parameters are unchanged. Check the inputs and the loss for inf or NaN, "
                "or lower the learning rate"
            )

    def _discard_activations(self) -> None:
        # Opacus's forward hooks push each layer's inputs on ``module.activations``
        # and count forward passes in ``p._forward_counter``; its backward hooks
        # pop and count down. Without a backward pass both are reset here, or the
        # next pass would size its batch from stale inputs and, in ghost mode,
        # take the second forward pass for parameter tying.
        for submodule in self.model.modules():
            if hasattr(submodule, "activations"):
                submodule.activations.clear()
        for p in self.params:
            p._forward_counter = 0

    def _reset_summed_grad(self) -> None:
        for p in self.params:
            p.summed_grad = None

