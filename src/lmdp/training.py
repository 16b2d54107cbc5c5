"""The training loop shared by the three methods: ``nonprivate``, ``dpsgd`` and ``lmdpsgd``.

``dpsgd`` is ``lmdpsgd`` with every layer weight 1, so both run the same code
path and, under one seed, draw the same batches and the same noise: a paired
comparison isolates the effect of the weights.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lmdp.checkpoint import load_checkpoint, save_checkpoint
from lmdp.data.sampling import physical_batches, poisson_batches, shuffled_batches
from lmdp.errors import ConfigError, NonFiniteLossError
from lmdp.models.layer_map import LayerMap
from lmdp.privacy.accounting import ACCOUNTANTS
from lmdp.privacy.engine import LMDPEngine, warn_if_delta_too_large
from lmdp.privacy.ghost import GRAD_SAMPLE_MODES
from lmdp.privacy.mechanism import PrivacyMechanism

logger = logging.getLogger(__name__)

METHODS = ("nonprivate", "dpsgd", "lmdpsgd")
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainingConfig:
    """How to train one model. Privacy fields are ignored by ``nonprivate``.

    ``sample_rate`` is the Poisson rate q of the private methods. Non-private
    training uses shuffled batches of round(q·N) records, so all methods see
    the same number of records per step on average.
    """

    method: str
    steps: int
    sample_rate: float
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    noise_multiplier: float = 0.0
    layer_weights: Mapping[str, float] | None = None
    accountant: str = "rdp"
    max_physical_batch_size: int = 256
    seed: int = 0
    secure_mode: bool = False
    grad_sample_mode: str = "auto"

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {list(METHODS)}; got {self.method!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            problems.append(f"steps must be an integer ≥ 0; got {self.steps!r}")
        if not 0 < self.sample_rate <= 1:
            problems.append(f"sample_rate must be in (0, 1]; got {self.sample_rate}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            problems.append(f"learning_rate must be a finite number > 0; got {self.learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {list(OPTIMIZERS)}; got {self.optimizer!r}")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1); got {self.momentum}")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay must be ≥ 0; got {self.weight_decay}")
        if not self.max_grad_norm > 0:
            problems.append(
                f"max_grad_norm must be > 0: a zero clip removes every gradient; got {self.max_grad_norm}. "
                "Typical values are 0.1 to 10"
            )
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            problems.append(f"noise_multiplier must be a finite number ≥ 0; got {self.noise_multiplier}")
        if self.accountant not in ACCOUNTANTS:
            problems.append(f"accountant must be one of {list(ACCOUNTANTS)}; got {self.accountant!r}")
        if isinstance(self.max_physical_batch_size, bool) or not isinstance(self.max_physical_batch_size, int) or self.max_physical_batch_size < 1:
            problems.append(f"max_physical_batch_size must be an integer ≥ 1; got {self.max_physical_batch_size!r}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            problems.append(f"grad_sample_mode must be one of {list(GRAD_SAMPLE_MODES)}; got {self.grad_sample_mode!r}")
        if self.method == "lmdpsgd" and self.layer_weights is None:
            problems.append("method 'lmdpsgd' needs layer_weights (from a risk profile); use method 'dpsgd' for uniform weights")
        if self.method == "dpsgd" and self.layer_weights is not None and any(w != 1 for w in self.layer_weights.values()):
            problems.append("method 'dpsgd' uses uniform weights; drop layer_weights or use method 'lmdpsgd'")
        if problems:
            raise ConfigError("Invalid training config: " + "; ".join(problems))

    @property
    def is_private(self) -> bool:
        return self.method != "nonprivate"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layer_weights"] = None if self.layer_weights is None else dict(self.layer_weights)
        return data


@dataclass(frozen=True)
class TrainingResult:
    """Record of one training run: steps, the mechanism, ε, losses and wall time."""

    method: str
    steps: int
    empty_batches: int
    mechanism: PrivacyMechanism | None
    accountant_history: tuple[tuple[float, float, int], ...]
    epsilon: float | None
    delta: float | None
    loss_history: tuple[float, ...] = field(repr=False)
    wall_time_s: float

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "steps": self.steps,
            "empty_batches": self.empty_batches,
            "mechanism": None if self.mechanism is None else self.mechanism.to_dict(),
            "epsilon": self.epsilon,
            "delta": self.delta,
            "final_loss": self.loss_history[-1] if self.loss_history else None,
            "wall_time_s": self.wall_time_s,
        }


StepCallback = Callable[[int, nn.Module], None]


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    config: TrainingConfig,
    layer_map: LayerMap,
    delta: float | None = None,
    on_step: StepCallback | None = None,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 0,
    resume_from: str | Path | None = None,
    progress: bool = False,
) -> TrainingResult:
    """Train ``model`` in place on (``x``, ``y``) with cross-entropy loss and return what happened.

    ``on_step(step, model)`` runs after every logical step (1-based), for
    audits during training. With ``checkpoint_path`` a checkpoint is written
    atomically every ``checkpoint_every`` steps and at the end;
    ``resume_from`` continues a run from such a checkpoint, with its model,
    optimizer, accountant history and RNG states.

    Raises:
        NonFiniteLossError: on a NaN or infinite loss, naming the step; the
            parameters keep the values of the previous step.
    """
    n_samples = len(x)
    if n_samples == 0 or len(y) != n_samples:
        raise ConfigError(f"training data must be non-empty with one label per record; got {n_samples} inputs, {len(y)} labels")
    if delta is not None and config.is_private:
        warn_if_delta_too_large(delta, n_samples)
    started = time.perf_counter()
    sampling_generator = torch.Generator().manual_seed(2 * config.seed)
    noise_generator = torch.Generator().manual_seed(2 * config.seed + 1)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = _make_optimizer(trainable, config)
    engine = None
    forward_module: nn.Module = model
    step_optimizer = optimizer
    if config.is_private:
        engine = LMDPEngine(accountant=config.accountant, secure_mode=config.secure_mode)
        forward_module, step_optimizer, _ = engine.make_private(
            module=model,
            optimizer=optimizer,
            layer_map=layer_map,
            noise_multiplier=config.noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            layer_weights=config.layer_weights if config.method == "lmdpsgd" else None,
            sample_rate=config.sample_rate,
            dataset_size=n_samples,
            noise_generator=noise_generator,
            loss_reduction="sum",
            grad_sample_mode=config.grad_sample_mode,
        )

    start_step, loss_history, empty_batches = 0, [], 0
    if resume_from is not None:
        state = load_checkpoint(resume_from, config=config, private=config.is_private)
        model.load_state_dict(state["model"])
        step_optimizer.load_state_dict(state["optimizer"])
        if engine is not None:
            engine.load_state_dict(state["privacy_account"])
        sampling_generator.set_state(state["rng"]["sampling"])
        noise_generator.set_state(state["rng"]["noise"])
        start_step, loss_history, empty_batches = state["step"], list(state["loss_history"]), state["empty_batches"]

    if config.is_private:
        batches = poisson_batches(n_samples, sample_rate=config.sample_rate, steps=config.steps, generator=sampling_generator, start_step=start_step)
    else:
        batch_size = max(1, round(config.sample_rate * n_samples))
        batches = shuffled_batches(n_samples, batch_size=batch_size, steps=config.steps, generator=sampling_generator, start_step=start_step)

    def write_checkpoint(step: int) -> None:
        save_checkpoint(
            checkpoint_path,
            config=config,
            step=step,
            model=model,
            optimizer=step_optimizer,
            privacy_account=None if engine is None else engine.state_dict(),
            rng={"sampling": sampling_generator.get_state(), "noise": noise_generator.get_state()},
            loss_history=loss_history,
            empty_batches=empty_batches,
        )

    model.train()
    bar = tqdm(total=config.steps, initial=start_step, desc=f"train {config.method}", disable=not progress, leave=False)
    try:
        for step, indices in enumerate(batches, start=start_step + 1):
            if config.is_private:
                empty_batches += int(len(indices) == 0)
                loss = _private_step(forward_module, step_optimizer, x, y, indices, config.max_physical_batch_size, step)
            else:
                loss = _nonprivate_step(model, optimizer, x[indices], y[indices], step)
            loss_history.append(loss)
            if on_step is not None:
                on_step(step, model)
            if checkpoint_path is not None and checkpoint_every and step % checkpoint_every == 0:
                write_checkpoint(step)
            bar.update(1)
    finally:
        bar.close()
        if isinstance(forward_module, nn.Module) and forward_module is not model:
            forward_module._close()

    if checkpoint_path is not None:
        write_checkpoint(config.steps)
    history = tuple(tuple(entry) for entry in engine.accountant.history) if engine else ()
    epsilon = None
    if engine is not None and delta is not None:
        epsilon = engine.get_epsilon(delta)
    return TrainingResult(
        method=config.method,
        steps=config.steps,
        empty_batches=empty_batches,
        mechanism=None if engine is None else engine.mechanism,
        accountant_history=history,
        epsilon=epsilon,
        delta=delta,
        loss_history=tuple(loss_history),
        wall_time_s=time.perf_counter() - started,
    )


def _private_step(module, optimizer, x, y, indices, max_physical_batch_size: int, step: int) -> float:
    """Run one logical step over the physical chunks of ``indices``; noise is added once."""
    optimizer.zero_grad()
    total_loss, count = 0.0, 0
    for chunk in physical_batches(indices, max_physical_batch_size):
        losses = F.cross_entropy(module(x[chunk]), y[chunk], reduction="none")
        _check_finite(losses, step)
        with warnings.catch_warnings():
            # Opacus's backward hooks fire on the first layer although the
            # inputs need no gradient; torch warns about it on every call.
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            optimizer.backward(losses)
        total_loss += float(losses.detach().sum())
        count += len(chunk)
    optimizer.step()
    return total_loss / count if count else math.nan


def _nonprivate_step(model, optimizer, xb, yb, step: int) -> float:
    optimizer.zero_grad()
    losses = F.cross_entropy(model(xb), yb, reduction="none")
    _check_finite(losses, step)
    losses.mean().backward()
    optimizer.step()
    return float(losses.detach().mean())


def _check_finite(losses: torch.Tensor, step: int) -> None:
    finite = torch.isfinite(losses.detach())
    if not finite.all():
        bad = torch.nonzero(~finite).flatten().tolist()
        raise NonFiniteLossError(
            f"non-finite loss at step {step} for {len(bad)} example(s) (positions {bad[:10]} in the physical batch); "
            "training stopped and the parameters keep their values from the previous step. "
            "Check the inputs for NaN or inf, or lower the learning rate"
        )


def _make_optimizer(params: list[nn.Parameter], config: TrainingConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Return the fraction of records whose arg-max logit equals the label (eval mode)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        correct += int((model(x[start : start + batch_size]).argmax(dim=1) == y[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(x))

