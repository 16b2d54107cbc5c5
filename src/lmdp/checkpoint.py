"""Checkpoints of a training run: model, optimizer, privacy account, RNG states, losses.

A checkpoint is written atomically, so an interrupted run leaves the previous
one readable. A private run resumes only with its privacy account: without it
the ε reported after resuming would cover the resumed steps alone.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmdp.errors import ArtifactError
from lmdp.io import atomic_write

if TYPE_CHECKING:
    from lmdp.training import TrainingConfig

CHECKPOINT_FORMAT = "lmdp-checkpoint"
CHECKPOINT_VERSION = 1
# Fields that may differ between the run that saved a checkpoint and the run
# that resumes it. Hooks and ghost mode compute the same step. Any other
# difference changes the mechanism or the data order.
_RESUMABLE_CHANGES = {"steps", "grad_sample_mode"}


def save_checkpoint(
    path: str | Path,
    *,
    config: "TrainingConfig",
    step: int,
    model: torch.nn.Module,
    optimizer: Any,
    privacy_account: dict | None,
    rng: dict[str, torch.Tensor],
    loss_history: list[float],
    empty_batches: int,
) -> Path:
    """Write a checkpoint after ``step`` logical steps to ``path`` atomically."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "privacy_account": privacy_account,
        "rng": rng,
        "loss_history": list(loss_history),
        "empty_batches": int(empty_batches),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write(path, lambda stream: stream.write(buffer.getvalue()))


def load_checkpoint(path: str | Path, *, config: "TrainingConfig", private: bool) -> dict:
    """Read and check a checkpoint for resuming a run with ``config``.

    Raises:
        ArtifactError: when the file is missing, truncated or not an lmdp
            checkpoint, when it was saved with another mechanism, data order or
            model, or when a private run's privacy account is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint {path} not found; pass the file written by a run with checkpointing on")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for damaged files
        raise ArtifactError(f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); it is truncated or not a checkpoint") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"{path} is not an lmdp checkpoint (format field {state.get('format') if isinstance(state, dict) else None!r})")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ArtifactError(f"checkpoint {path} has version {state.get('version')!r}; this lmdp reads version {CHECKPOINT_VERSION}")

    saved = state["config"]
    current = config.to_dict()
    changed = sorted(key for key in set(saved) | set(current) if key not in _RESUMABLE_CHANGES and saved.get(key) != current.get(key))
    if changed:
        details = ", ".join(f"{key}: saved {saved.get(key)!r}, now {current.get(key)!r}" for key in changed)
        raise ArtifactError(f"checkpoint {path} was saved by a run with another config ({details}); resume with the saved config")
    if state["step"] > config.steps:
        raise ArtifactError(f"checkpoint {path} is at step {state['step']}, past the {config.steps} steps requested; raise steps")
    if private:
        account = state.get("privacy_account")
        if not account or "history" not in account:
            raise ArtifactError(
                f"checkpoint {path} has no privacy account, so the ε of the resumed run could not cover the steps "
                "already taken; resume only from checkpoints written by a private run"
            )
        accounted = sum(int(entry[2]) for entry in account["history"])
        if accounted != state["step"]:
            raise ArtifactError(
                f"checkpoint {path} accounts {accounted} steps but is at step {state['step']}; the file was edited or damaged"
            )
    return state
