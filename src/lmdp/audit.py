"""Phase D: layer-by-layer membership audit of a trained model.

The audit captures the IRs of every tap (and the output logits) on the
target's members and non-members and runs the attack suite in two settings:

- ``held_out``: attacks fitted on part of the target's own members and
  non-members and evaluated on the rest. This is the strongest estimate,
  because the attacker has some of the target's members.
- ``transfer``: attacks fitted on a shadow model and its public records,
  then applied to the target. Reference statistics are refitted on the
  target's IRs of the shadow's reference records (public non-members), so
  only attacks in ``lmdp.attacks.TRANSFERABLE_ATTACKS`` take part. This is
  the realistic adversary, who has public data and can query the target.

Each setting reports per-layer AUC, balanced accuracy, advantage and TPR at
1% and 0.1% FPR with bootstrap CIs, the output level, the peak over
tap × attack pairs and the permutation null distribution of that peak.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from torch import nn

from lmdp.attacks.assessment import (
    Assessment,
    assess_held_out,
    balanced_indices,
    evaluate_level_attacks,
    fit_level_attacks,
    split_records,
)
from lmdp.errors import ArtifactError, ConfigError
from lmdp.representations import Representations, capture_representations
from lmdp.risk import (
    RiskConfig,
    architecture_hash,
    dataset_provenance,
    library_versions,
    read_json_artifact,
    write_json_artifact,
)

if TYPE_CHECKING:
    from lmdp.data import ArrayDataset

logger = logging.getLogger(__name__)

AUDIT_FORMAT = "lmdp-audit"
AUDIT_VERSION = 1


@dataclass(frozen=True)
class ShadowSource:
    """A trained shadow model and its members and non-members (public records), for the transfer setting."""

    model: nn.Module
    members: ArrayDataset
    non_members: ArrayDataset


@dataclass(frozen=True)
class AuditResult:
    """Audit of one target model: the held-out setting and, with a shadow model, the transfer setting.

    ``peak_auc``, ``peak_layer``, ``peak_attack`` and ``peak_setting`` give
    the largest tap-level AUC over both settings. ``target`` and ``shadow``
    hold data provenance; ``shared_records`` counts records found both in
    the shadow data and among the target's records, which should be 0.
    """

    held_out: Assessment
    transfer: Assessment | None
    taps: tuple[str, ...]
    output_tap: str | None
    architecture: str
    architecture_hash: str
    target: dict[str, Any]
    shadow: dict[str, Any] | None
    config: dict[str, Any]
    versions: dict[str, str]
    created: str

    @property
    def settings(self) -> tuple[Assessment, ...]:
        return (self.held_out,) if self.transfer is None else (self.held_out, self.transfer)

    @property
    def peak_setting(self) -> str:
        return max(self.settings, key=lambda setting: setting.peak_auc).setting

    @property
    def peak(self) -> Assessment:
        return max(self.settings, key=lambda setting: setting.peak_auc)

    @property
    def peak_auc(self) -> float:
        return self.peak.peak_auc

    @property
    def peak_layer(self) -> str:
        return self.peak.peak_layer

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": AUDIT_FORMAT,
            "version": AUDIT_VERSION,
            "peak_auc": self.peak_auc,
            "peak_layer": self.peak_layer,
            "peak_attack": self.peak.peak_attack,
            "peak_setting": self.peak_setting,
            "taps": list(self.taps),
            "output_tap": self.output_tap,
            "architecture": self.architecture,
            "architecture_hash": self.architecture_hash,
            "target": self.target,
            "shadow": self.shadow,
            "config": self.config,
            "versions": dict(self.versions),
            "created": self.created,
            "held_out": self.held_out.to_dict(),
            "transfer": None if self.transfer is None else self.transfer.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditResult:
        return cls(
            held_out=Assessment.from_dict(data["held_out"]),
            transfer=None if data["transfer"] is None else Assessment.from_dict(data["transfer"]),
            taps=tuple(str(tap) for tap in data["taps"]),
            output_tap=None if data["output_tap"] is None else str(data["output_tap"]),
            architecture=str(data["architecture"]),
            architecture_hash=str(data["architecture_hash"]),
            target=dict(data["target"]),
            shadow=None if data["shadow"] is None else dict(data["shadow"]),
            config=dict(data["config"]),
            versions={str(k): str(v) for k, v in data["versions"].items()},
            created=str(data["created"]),
        )


def audit_model(
    model: nn.Module,
    members: ArrayDataset,
    non_members: ArrayDataset,
    *,
    taps: Sequence[str],
    config: RiskConfig = RiskConfig(),
    shadow: ShadowSource | None = None,
    progress: bool = False,
) -> AuditResult:
    """Audit ``model`` layer by layer on its ``members`` and ``non_members``.

    Runs the held-out setting always and the transfer setting when a
    ``shadow`` is given. ``config`` is shared with phase A, so an audit and
    a risk profile made with the same config measure the same way.
    """
    taps = tuple(taps)
    _check_same_task(members, non_members, "non-members")
    inputs = np.concatenate([members.x, non_members.x])
    labels = np.concatenate([members.y, non_members.y]).astype(np.int64)
    is_member = np.r_[np.ones(len(members), dtype=bool), np.zeros(len(non_members), dtype=bool)]
    num_classes = members.num_classes

    representations = capture_representations(model, inputs, taps=taps, config=config.capture, progress=progress)
    held_out = assess_held_out(
        representations, labels, is_member, num_classes=num_classes, config=config.attack, progress=progress
    )
    _log_setting(held_out)

    transfer = None
    shadow_provenance = None
    if shadow is not None:
        _check_same_task(members, shadow.members, "shadow members")
        transfer = _assess_transfer(model, representations, labels, is_member, shadow, taps=taps, config=config, progress=progress)
        _log_setting(transfer)
        shadow_provenance = _shadow_provenance(shadow, members, non_members)

    return AuditResult(
        held_out=held_out,
        transfer=transfer,
        taps=taps,
        output_tap=representations.output_tap,
        architecture=type(model).__name__,
        architecture_hash=architecture_hash(model),
        target={"members": dataset_provenance(members), "non_members": dataset_provenance(non_members)},
        shadow=shadow_provenance,
        config=config.to_dict(),
        versions=library_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _assess_transfer(
    model: nn.Module,
    target_representations: Representations,
    target_labels: np.ndarray,
    target_is_member: np.ndarray,
    shadow: ShadowSource,
    *,
    taps: tuple[str, ...],
    config: RiskConfig,
    progress: bool,
) -> Assessment:
    """Fit attacks on the shadow model, rebase them on the target, and evaluate on the target's records."""
    shadow_inputs = np.concatenate([shadow.members.x, shadow.non_members.x])
    shadow_labels = np.concatenate([shadow.members.y, shadow.non_members.y]).astype(np.int64)
    shadow_is_member = np.r_[np.ones(len(shadow.members), dtype=bool), np.zeros(len(shadow.non_members), dtype=bool)]
    shadow_representations = capture_representations(
        shadow.model, shadow_inputs, taps=taps, config=config.capture, progress=progress
    )

    # Every shadow record fits the attacks; the evaluation records are the target's.
    split = split_records(
        shadow_labels,
        shadow_is_member,
        reference_fraction=config.attack.reference_fraction,
        fit_fraction=None,
        seed=config.attack.seed,
    )
    fitted = fit_level_attacks(
        shadow_representations,
        shadow_labels,
        shadow_is_member,
        split,
        num_classes=shadow.members.num_classes,
        config=config.attack,
        progress=progress,
    )

    reference_labels = shadow_labels[split.reference]
    target_reference = capture_representations(
        model, shadow_inputs[split.reference], taps=taps, config=config.capture, progress=progress
    )
    rebased = {
        level: attacks.rebase(
            (target_reference.outputs if attacks.level == "output" else target_reference.features[level], reference_labels)
        )
        for level, attacks in fitted.items()
    }

    evaluate = balanced_indices(target_labels, target_is_member, seed=config.attack.seed)
    return evaluate_level_attacks(
        rebased,
        target_representations.subset(evaluate),
        target_labels[evaluate],
        target_is_member[evaluate],
        setting="transfer",
        config=config.attack,
        split_sizes={**split.sizes(), "evaluate": len(evaluate)},
        progress=progress,
    )


def _check_same_task(first: ArrayDataset, second: ArrayDataset, what: str) -> None:
    if first.num_classes != second.num_classes or first.input_shape != second.input_shape:
        raise ConfigError(
            f"members have input shape {first.input_shape} and {first.num_classes} classes, but {what} have "
            f"{second.input_shape} and {second.num_classes}; draw both from the same dataset"
        )


def _shadow_provenance(shadow: ShadowSource, members: ArrayDataset, non_members: ArrayDataset) -> dict[str, Any]:
    from lmdp.data import count_shared_records

    shared = sum(
        count_shared_records(public, private)
        for public in (shadow.members, shadow.non_members)
        for private in (members, non_members)
    )
    if shared:
        logger.warning(
            "%d records occur both in the shadow data and among the target's members or non-members; "
            "the transfer setting assumes the shadow data is public and disjoint from them",
            shared,
        )
    return {
        "architecture_hash": architecture_hash(shadow.model),
        "members": dataset_provenance(shadow.members),
        "non_members": dataset_provenance(shadow.non_members),
        "shared_records": shared,
    }


def _log_setting(assessment: Assessment) -> None:
    logger.info(
        "%s: peak AUC %.3f at %s (%s), null 95%% quantile %s, p-value %s",
        assessment.setting,
        assessment.peak_auc,
        assessment.peak_layer,
        assessment.peak_attack,
        assessment.null.quantiles.get("0.95"),
        assessment.null.p_value,
    )


def save_audit(result: AuditResult, path: str | Path) -> Path:
    """Write an audit result as JSON with a SHA-256 checksum, atomically."""
    return write_json_artifact(path, result.to_dict())


def load_audit(path: str | Path) -> AuditResult:
    """Read an audit result written by ``save_audit``.

    Raises:
        ArtifactError: the file is missing, truncated, edited, of another
            kind or version, or has invalid fields.
    """
    data = read_json_artifact(path, kind="audit", expected_format=AUDIT_FORMAT, version=AUDIT_VERSION)
    try:
        return AuditResult.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ArtifactError(f"audit {path} has a missing or invalid field ({type(error).__name__}: {error})") from error
