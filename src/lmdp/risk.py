"""Phase A of LM-DP-SGD: layer risk from public data only, saved as a risk profile.

Public data is split into shadow members and shadow non-members, and a
shadow model of the target's architecture is trained on the members. The
attack suite of ``lmdp.attacks`` then measures, in the held-out setting,
how well each tap's IRs separate the two halves. The resulting ``RiskProfile``
stores, per layer, the attack error e_l, the layer risk r_l, AUC and TPR at
low FPR with bootstrap CIs and the attack chosen, plus the provenance that
ties it to one architecture, one set of taps and one shadow dataset.
Phase B (``lmdp.weighting``) adds the layer weights to it.

The measuring step, ``measure_risk``, needs only a trained model and its
members and non-members, so it also works on a shadow model trained
elsewhere; ``build_risk_profile`` runs the whole phase.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from lmdp.attacks.assessment import Assessment, AttackConfig, assess_held_out
from lmdp.errors import ArtifactError, ConfigError, ProfileMismatchError
from lmdp.io import atomic_write_json
from lmdp.models.layer_map import HEAD, LayerMap, build_layer_map
from lmdp.representations import CaptureConfig, capture_representations

if TYPE_CHECKING:
    from lmdp.data import ArrayDataset
    from lmdp.training import TrainingConfig

logger = logging.getLogger(__name__)

RISK_PROFILE_FORMAT = "lmdp-risk-profile"
RISK_PROFILE_VERSION = 1

#: Trains a shadow model in place on (x, y); the returned value is ignored.
ShadowTrainer = Callable[[nn.Module, torch.Tensor, torch.Tensor, LayerMap], Any]


@dataclass(frozen=True)
class RiskConfig:
    """Settings of risk measurement: the attack suite and IR capture."""

    attack: AttackConfig = AttackConfig()
    capture: CaptureConfig = CaptureConfig()

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack.to_dict(), "capture": dataclasses.asdict(self.capture)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RiskConfig:
        return cls(attack=AttackConfig.from_dict(data["attack"]), capture=CaptureConfig(**data["capture"]))


def architecture_summary(model: nn.Module) -> tuple[str, ...]:
    """Describe every module as ``"name: Class(extra_repr)"``, e.g. ``"fc.1: Linear(in_features=512, ...)"``.

    ``extra_repr`` carries the shapes and hyperparameters (kernel size,
    stride, widths) but not the parameter values, so two models of the same
    architecture trained differently have the same summary.
    """
    return tuple(f"{name or '<root>'}: {type(module).__name__}({module.extra_repr()})" for name, module in model.named_modules())


def architecture_hash(model: nn.Module) -> str:
    """Return the SHA-256 hex digest of ``architecture_summary(model)``."""
    return hashlib.sha256("\n".join(architecture_summary(model)).encode("utf-8")).hexdigest()


def library_versions() -> dict[str, str]:
    """Return the versions of lmdp and of the libraries that shape its numbers."""
    import opacus
    import sklearn

    from lmdp import __version__

    return {
        "lmdp": __version__,
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
    }


def dataset_provenance(dataset: ArrayDataset) -> dict[str, Any]:
    """Return the name, size and SHA-256 content fingerprint of a dataset."""
    return {"name": dataset.name, "size": len(dataset), "fingerprint": dataset.fingerprint()}


@dataclass(frozen=True)
class RiskProfile:
    """Layer risk of one architecture and set of taps, measured on a shadow model.

    ``risk`` is the held-out assessment of the shadow model: one
    ``LayerResult`` per tap (attack error, layer risk, AUC, TPR at low FPR,
    CIs, attack chosen) and one for the output. ``shadow`` records the
    shadow data (fingerprints and sizes of members and non-members, split
    seed) and training recipe. ``layer_weights`` has one weight in (0, 1]
    per tap plus ``"head"``, set by ``lmdp.weighting``; ``weighting`` is the
    policy that produced them.
    """

    taps: tuple[str, ...]
    output_tap: str | None
    architecture: str
    architecture_hash: str
    architecture_summary: tuple[str, ...]
    risk: Assessment
    shadow: dict[str, Any]
    config: dict[str, Any]
    versions: dict[str, str]
    created: str
    layer_weights: dict[str, float] | None = None
    weighting: dict[str, Any] | None = None

    @property
    def attack_errors(self) -> dict[str, float]:
        """Attack error e_l of each tap."""
        return {layer.name: layer.attack_error for layer in self.risk.layers}

    @property
    def layer_risks(self) -> dict[str, float]:
        """Layer risk r_l = max(0, 1 − 2·e_l) of each tap."""
        return {layer.name: layer.layer_risk for layer in self.risk.layers}

    def with_weights(self, layer_weights: dict[str, float], weighting: dict[str, Any]) -> RiskProfile:
        """Return a copy with ``layer_weights`` and the ``weighting`` policy that produced them."""
        return dataclasses.replace(self, layer_weights=dict(layer_weights), weighting=dict(weighting))

    def check_compatible(self, model: nn.Module | None = None, taps: Sequence[str] | None = None) -> None:
        """Raise ProfileMismatchError unless the profile was made for ``model``'s architecture and ``taps``."""
        problems = []
        if taps is not None and tuple(taps) != self.taps:
            problems.append(f"the profile's taps are {list(self.taps)}, the model's taps are {list(taps)}")
        if model is not None and architecture_hash(model) != self.architecture_hash:
            summary = architecture_summary(model)
            only_profile = [entry for entry in self.architecture_summary if entry not in summary]
            only_model = [entry for entry in summary if entry not in self.architecture_summary]
            problems.append(
                f"the profile was made for {self.architecture} with layers {_layer_names(self.architecture_summary)}; "
                f"the model is {type(model).__name__} with layers {_layer_names(summary)}. "
                f"Modules only in the profile: {only_profile[:10]}; only in the model: {only_model[:10]}"
            )
        if problems:
            raise ProfileMismatchError(
                "The risk profile does not match this model: " + "; ".join(problems) + ". "
                "Build a profile for this model and taps with `lmdp risk` (or lmdp.risk.build_risk_profile)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RISK_PROFILE_FORMAT,
            "version": RISK_PROFILE_VERSION,
            "taps": list(self.taps),
            "output_tap": self.output_tap,
            "architecture": self.architecture,
            "architecture_hash": self.architecture_hash,
            "architecture_summary": list(self.architecture_summary),
            "layer_weights": None if self.layer_weights is None else dict(self.layer_weights),
            "weighting": self.weighting,
            "shadow": self.shadow,
            "config": self.config,
            "versions": dict(self.versions),
            "created": self.created,
            **self.risk.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RiskProfile:
        """Rebuild a profile from ``to_dict`` output; raise KeyError, TypeError or ValueError on bad fields."""
        weights = data["layer_weights"]
        return cls(
            taps=tuple(str(tap) for tap in data["taps"]),
            output_tap=None if data["output_tap"] is None else str(data["output_tap"]),
            architecture=str(data["architecture"]),
            architecture_hash=str(data["architecture_hash"]),
            architecture_summary=tuple(str(entry) for entry in data["architecture_summary"]),
            risk=Assessment.from_dict(data),
            shadow=dict(data["shadow"]),
            config=dict(data["config"]),
            versions={str(k): str(v) for k, v in data["versions"].items()},
            created=str(data["created"]),
            layer_weights=None if weights is None else {str(k): float(v) for k, v in weights.items()},
            weighting=None if data["weighting"] is None else dict(data["weighting"]),
        )


def _layer_names(summary: Sequence[str]) -> list[str]:
    return [entry.split(":", 1)[0] for entry in summary if not entry.startswith("<root>")]


def measure_risk(
    model: nn.Module,
    members: ArrayDataset,
    non_members: ArrayDataset,
    *,
    taps: Sequence[str],
    config: RiskConfig = RiskConfig(),
    shadow: dict[str, Any] | None = None,
    progress: bool = False,
) -> RiskProfile:
    """Measure the layer risk of a trained (shadow) model from its members and non-members.

    Captures the IRs of every tap on all records and runs the attack suite
    in the held-out setting. ``shadow`` adds provenance (split seed,
    training recipe) to the data fingerprints recorded here. The profile
    has no layer weights yet; see ``lmdp.weighting.assign_layer_weights``.
    """
    taps = tuple(taps)
    if members.num_classes != non_members.num_classes:
        raise ConfigError(
            f"members have num_classes={members.num_classes} but non-members {non_members.num_classes}; "
            "draw both from the same dataset"
        )
    inputs = np.concatenate([members.x, non_members.x])
    labels = np.concatenate([members.y, non_members.y]).astype(np.int64)
    is_member = np.r_[np.ones(len(members), dtype=bool), np.zeros(len(non_members), dtype=bool)]

    representations = capture_representations(model, inputs, taps=taps, config=config.capture, progress=progress)
    assessment = assess_held_out(
        representations, labels, is_member, num_classes=members.num_classes, config=config.attack, progress=progress
    )
    for layer in assessment.layers:
        logger.info(
            "layer %s: attack_error %.3f, layer_risk %.3f, auc %.3f (%s)",
            layer.name, layer.attack_error, layer.layer_risk, layer.auc, layer.attack,
        )

    return RiskProfile(
        taps=taps,
        output_tap=representations.output_tap,
        architecture=type(model).__name__,
        architecture_hash=architecture_hash(model),
        architecture_summary=architecture_summary(model),
        risk=assessment,
        shadow={
            **(shadow or {}),
            "members": dataset_provenance(members),
            "non_members": dataset_provenance(non_members),
            # Per-record hashes let a later run check that no private member was shadow data.
            "record_fingerprints": sorted(set(members.record_fingerprints()) | set(non_members.record_fingerprints())),
        },
        config=config.to_dict(),
        versions=library_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def shadow_trainer(config: TrainingConfig) -> ShadowTrainer:
    """Return a ``ShadowTrainer`` that trains with ``lmdp.training.train`` and ``config``.

    The recipe (``config.to_dict()``) goes into the profile's provenance.
    Use a ``nonprivate`` config to see where leakage would arise, or the
    target's own DP config to see where it survives DP.
    """
    from lmdp.training import train

    def train_shadow(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer_map: LayerMap):
        return train(model, x, y, config=config, layer_map=layer_map)

    train_shadow.recipe = config.to_dict()  # type: ignore[attr-defined]
    return train_shadow


def build_risk_profile(
    public: ArrayDataset,
    *,
    shadow_model: nn.Module,
    taps: Sequence[str],
    train_shadow: ShadowTrainer,
    split_seed: int = 0,
    config: RiskConfig = RiskConfig(),
    progress: bool = False,
) -> RiskProfile:
    """Run phase A: split ``public``, train ``shadow_model`` in place on one half, measure the layer risk.

    ``shadow_model`` must be untrained and have the target's architecture.
    ``train_shadow`` gets the model, the shadow members as tensors and the
    layer map; its ``recipe`` attribute, if any, is stored as provenance.
    The shadow split is ``lmdp.data.split_shadow(public, seed=split_seed)``.
    """
    from lmdp.data import split_shadow

    members, non_members = split_shadow(public, seed=split_seed)
    # Copies: dataset arrays may be read-only, and training needs tensors of its own.
    x = torch.tensor(members.x)
    y = torch.tensor(members.y)
    layer_map = build_layer_map(shadow_model, taps, x[:1])
    logger.info("training the shadow model on %d of %d public records", len(members), len(public))
    train_shadow(shadow_model, x, y, layer_map)

    recipe = getattr(train_shadow, "recipe", {"trainer": getattr(train_shadow, "__qualname__", repr(train_shadow))})
    return measure_risk(
        shadow_model,
        members,
        non_members,
        taps=taps,
        config=config,
        shadow={"public": dataset_provenance(public), "split_seed": split_seed, "recipe": recipe},
        progress=progress,
    )


def check_public_only(profile: RiskProfile, members: ArrayDataset) -> None:
    """Raise ConfigError when records of the private ``members`` were shadow data of ``profile``.

    LM-DP-SGD's guarantee assumes the layer weights depend on public data
    only; weights measured on a shadow set that contains private members would
    themselves depend on those members.
    """
    shadow_records = profile.shadow.get("record_fingerprints")
    if shadow_records is None:
        raise ConfigError(
            "the risk profile has no record fingerprints of its shadow data, so it cannot be checked against the "
            "private members; rebuild it with this version of lmdp (lmdp risk)"
        )
    overlap = set(shadow_records) & set(members.record_fingerprints())
    if overlap:
        raise ConfigError(
            f"{len(overlap)} of the {len(members)} private member records were also shadow data of this risk "
            "profile; the layer weights must come from public data only. Build the profile from a public pool "
            "disjoint from the members"
        )


def save_risk_profile(profile: RiskProfile, path: str | Path) -> Path:
    """Write ``profile`` as JSON with a SHA-256 checksum of its content, atomically."""
    return write_json_artifact(path, profile.to_dict())


def load_risk_profile(
    path: str | Path, *, model: nn.Module | None = None, taps: Sequence[str] | None = None
) -> RiskProfile:
    """Read a risk profile and, when ``model`` or ``taps`` is given, check that it was made for them.

    Raises:
        ArtifactError: the file is missing, truncated, edited after it was
            written (checksum mismatch), of another kind or version, or has
            invalid fields.
        ProfileMismatchError: the profile was made for another architecture
            or other taps; the message lists both sets of layer names.
    """
    data = read_json_artifact(path, kind="risk profile", expected_format=RISK_PROFILE_FORMAT, version=RISK_PROFILE_VERSION)
    try:
        profile = RiskProfile.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ArtifactError(f"risk profile {path} has a missing or invalid field ({type(error).__name__}: {error})") from error
    _check_profile_values(profile, path)
    profile.check_compatible(model=model, taps=taps)
    return profile


def _check_profile_values(profile: RiskProfile, path: str | Path) -> None:
    layer_names = tuple(layer.name for layer in profile.risk.layers)
    if layer_names != profile.taps:
        raise ArtifactError(f"risk profile {path} lists taps {list(profile.taps)} but has results for {list(layer_names)}")
    for layer in profile.risk.layers:
        if not 0.0 <= layer.attack_error <= 1.0:
            raise ArtifactError(f"risk profile {path}: attack_error of {layer.name!r} is {layer.attack_error}, outside [0, 1]")
    if profile.layer_weights is not None:
        expected = {*profile.taps, HEAD}
        if set(profile.layer_weights) != expected:
            raise ArtifactError(
                f"risk profile {path}: layer_weights has keys {sorted(profile.layer_weights)}, expected {sorted(expected)}"
            )
        invalid = {name: w for name, w in profile.layer_weights.items() if not 0.0 < w <= 1.0}
        if invalid:
            raise ArtifactError(f"risk profile {path}: layer weights must be in (0, 1]; got {invalid}")


def write_json_artifact(path: str | Path, payload: dict[str, Any]) -> Path:
    """Add a ``checksum`` field to ``payload`` and write it as JSON atomically (temporary file, then rename)."""
    return atomic_write_json(path, {**payload, "checksum": _checksum(payload)})


def read_json_artifact(path: str | Path, *, kind: str, expected_format: str, version: int) -> dict[str, Any]:
    """Read a JSON artifact written with a checksum and return its content without the checksum.

    Raises ArtifactError, naming ``path`` and ``kind``, for a missing file,
    invalid JSON (often a truncated file), another format or version, and a
    checksum that no longer matches (an edited file).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{kind} {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ArtifactError(
            f"{kind} {path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
            "the file is truncated or damaged. Write it again"
        ) from error
    if not isinstance(data, dict) or data.get("format") != expected_format:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ArtifactError(f"{path} is not a {kind}: its format field is {found!r}, expected {expected_format!r}")
    if data.get("version") != version:
        raise ArtifactError(f"{kind} {path} has version {data.get('version')!r}; this lmdp reads version {version}")
    stored = data.pop("checksum", None)
    if stored is None:
        raise ArtifactError(f"{kind} {path} has no checksum field; it was not written by lmdp or was edited")
    if stored != _checksum(data):
        raise ArtifactError(
            f"{kind} {path} does not match its checksum, so it was edited or damaged after lmdp wrote it. "
            "Write it again instead of editing it"
        )
    return data


def _checksum(payload: dict[str, Any]) -> str:
    """Return "sha256:<hex>" of the canonical JSON of ``payload`` (keys sorted, no spaces)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
