"""``LMDPEngine``: the library entry point, shaped like Opacus's ``PrivacyEngine``.

Typical use, with a layer map from ``lmdp.models.build_layer_map`` and
weights from a risk profile::

    engine = LMDPEngine(accountant="rdp")
    model, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, layer_map=layer_map,
        noise_multiplier=1.1, max_grad_norm=1.0, layer_weights=weights,
    )
    ...  # per batch: optimizer.backward(per_example_losses); optimizer.step(); optimizer.zero_grad()
    epsilon = engine.get_epsilon(delta=1e-5)

In hooks mode ``loss.backward()`` followed by ``optimizer.step()`` also
works; ghost mode needs ``optimizer.backward``, which runs its two passes.
"""

from __future__ import annotations

import logging
import warnings
from typing import Mapping

import torch
from opacus import GradSampleModule
from opacus.grad_sample import AbstractGradSampleModule
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from lmdp.errors import ConfigError, PrivacyWarning
from lmdp.models.layer_map import LayerMap
from lmdp.models.validation import validate_model
from lmdp.privacy.accounting import (
    calibrate_noise_multiplier,
    create_accountant,
    epsilon_from_history,
    steps_for_epochs,
)
from lmdp.privacy.ghost import GhostLMDPOptimizer, resolve_grad_sample_mode, wrap_for_ghost_clipping
from lmdp.privacy.mechanism import PrivacyMechanism, resolve_layer_weights
from lmdp.privacy.optimizer import LMDPOptimizer
from lmdp.privacy.sensitivity import SensitivityCheck, check_sensitivity

logger = logging.getLogger(__name__)


class LMDPEngine:
    """Make a model, optimizer and data loader private with LM-DP-SGD, and keep the privacy account.

    Args:
        accountant: ``"rdp"`` or ``"prv"``.
        secure_mode: draw noise with Opacus's sampler that resists
            floating-point attacks; slower.
    """

    def __init__(self, *, accountant: str = "rdp", secure_mode: bool = False):
        self.accountant_name = accountant
        self.accountant = create_accountant(accountant)
        self.secure_mode = secure_mode
        self.mechanism: PrivacyMechanism | None = None
        self.sensitivity_check: SensitivityCheck | None = None

    def make_private(
        self,
        *,
        module: nn.Module,
        optimizer: Optimizer,
        layer_map: LayerMap,
        noise_multiplier: float,
        max_grad_norm: float,
        layer_weights: Mapping[str, float] | None = None,
        data_loader: DataLoader | None = None,
        sample_rate: float | None = None,
        dataset_size: int | None = None,
        noise_generator: torch.Generator | None = None,
        loss_reduction: str = "mean",
        grad_sample_mode: str = "auto",
    ) -> tuple[AbstractGradSampleModule, LMDPOptimizer, DataLoader | None]:
        """Wrap ``module`` for per-example gradients and ``optimizer`` for LM-DP-SGD steps.

        Give either ``data_loader`` (it is replaced by a Poisson-sampling
        loader with ``sample_rate = 1 / len(data_loader)``) or both
        ``sample_rate`` and ``dataset_size`` when you sample batches
        yourself. ``layer_weights`` has one weight in (0, 1] per tap and
        optionally ``"head"``; ``None`` gives DP-SGD. ``loss_reduction`` is
        how your loss reduces over a batch (``"mean"`` or ``"sum"``), so
        that per-example gradients are those of each record's own loss.

        ``grad_sample_mode`` selects how per-example norms are computed:
        ``"hooks"`` stores every per-example gradient, ``"ghost"`` uses ghost
        clipping (``lmdp.privacy.ghost``) and ``"auto"`` picks the faster one
        for the model. Both give the same step up to rounding.
        """
        if loss_reduction not in ("mean", "sum"):
            raise ConfigError(f"loss_reduction must be 'mean' or 'sum'; got {loss_reduction!r}")
        grad_sample_mode = resolve_grad_sample_mode(grad_sample_mode, module)
        validate_model(module)
        if data_loader is not None:
            data_loader = DPDataLoader.from_data_loader(data_loader, generator=None)
            sample_rate = data_loader.sample_rate
            dataset_size = len(data_loader.dataset)
        if sample_rate is None or dataset_size is None:
            raise ConfigError(
                "make_private needs a data_loader, or both sample_rate and dataset_size; "
                f"got sample_rate={sample_rate}, dataset_size={dataset_size}"
            )
        if not isinstance(dataset_size, int) or dataset_size <= 0:
            raise ConfigError(f"dataset_size must be a positive integer; got {dataset_size!r}")

        weights = resolve_layer_weights(layer_map, layer_weights)
        self.mechanism = PrivacyMechanism(
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            sample_rate=sample_rate,
            expected_batch_size=sample_rate * dataset_size,
            layer_weights=weights,
            accountant=self.accountant_name,
        )
        if noise_multiplier > 0 and self.mechanism.max_grad_norm == float("inf"):
            raise ConfigError(
                "max_grad_norm=inf gives unbounded sensitivity, so no noise_multiplier makes the run private; "
                "set a finite max_grad_norm, or train with noise_multiplier=0 and no privacy claim"
            )
        logger.info(
            "LM-DP-SGD (%s mode): sensitivity %.4g, noise std %.4g, sample_rate %.4g, layer_weights %s",
            grad_sample_mode,
            self.mechanism.sensitivity,
            self.mechanism.noise_std,
            sample_rate,
            weights,
        )

        if grad_sample_mode == "ghost":
            wrapped = wrap_for_ghost_clipping(module, max_grad_norm=max_grad_norm)
            dp_optimizer = GhostLMDPOptimizer(
                optimizer,
                module=wrapped,
                model=module,
                layer_map=layer_map,
                mechanism=self.mechanism,
                generator=noise_generator,
                secure_mode=self.secure_mode,
            )
        else:
            wrapped = GradSampleModule(module, batch_first=True, loss_reduction=loss_reduction)
            dp_optimizer = LMDPOptimizer(
                optimizer,
                model=module,
                layer_map=layer_map,
                mechanism=self.mechanism,
                generator=noise_generator,
                secure_mode=self.secure_mode,
                loss_reduction=loss_reduction,
            )
        # Refuse to train when the optimizer's own clipping and noise do not give the accounted mechanism.
        self.sensitivity_check = check_sensitivity(dp_optimizer)
        dp_optimizer.step_hooks.append(self._account_step)
        return wrapped, dp_optimizer, data_loader

    def make_private_with_epsilon(
        self,
        *,
        target_epsilon: float,
        target_delta: float,
        steps: int | None = None,
        epochs: float | None = None,
        sample_rate: float | None = None,
        data_loader: DataLoader | None = None,
        **kwargs,
    ) -> tuple[AbstractGradSampleModule, LMDPOptimizer, DataLoader | None]:
        """Calibrate σ for (``target_epsilon``, ``target_delta``) over ``steps`` or ``epochs``, then ``make_private``."""
        if (steps is None) == (epochs is None):
            raise ConfigError(f"give exactly one of steps and epochs; got steps={steps}, epochs={epochs}")
        if data_loader is not None:
            sample_rate = 1 / len(data_loader)
        if sample_rate is None:
            raise ConfigError("give sample_rate, or a data_loader to derive it from")
        if steps is None:
            steps = steps_for_epochs(epochs=epochs, sample_rate=sample_rate)
        calibration = calibrate_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=target_delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=self.accountant_name,
        )
        return self.make_private(
            noise_multiplier=calibration.noise_multiplier,
            data_loader=data_loader,
            sample_rate=None if data_loader is not None else sample_rate,
            **kwargs,
        )

    def get_epsilon(self, delta: float) -> float:
        """Return ε spent so far at ``delta``."""
        return epsilon_from_history(self.accountant.history, delta=delta, accountant=self.accountant_name)

    @property
    def steps(self) -> int:
        """Number of logical steps accounted so far."""
        return sum(int(entry[2]) for entry in self.accountant.history)

    def state_dict(self) -> dict:
        return {"accountant": self.accountant_name, "history": [list(entry) for entry in self.accountant.history]}

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("accountant") != self.accountant_name:
            raise ConfigError(
                f"the saved privacy account uses accountant {state.get('accountant')!r}, this engine "
                f"{self.accountant_name!r}; create the engine with accountant={state.get('accountant')!r}"
            )
        self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]

    def _account_step(self, optimizer: LMDPOptimizer) -> None:
        mechanism = optimizer.mechanism
        self.accountant.step(noise_multiplier=mechanism.noise_multiplier, sample_rate=mechanism.sample_rate)


def warn_if_delta_too_large(delta: float, dataset_size: int) -> None:
    """Warn when δ ≥ 1/N: such a δ allows releasing one whole record outright."""
    if delta >= 1 / dataset_size:
        warnings.warn(
            f"delta={delta} is not smaller than 1/N = {1 / dataset_size:.3g} for N={dataset_size} records; "
            f"a mechanism with this delta may reveal a record in full. Use delta < 1/N, e.g. {0.1 / dataset_size:.1g}",
            PrivacyWarning,
            stacklevel=3,
        )
