"""The experiment config: typed sections, read from YAML and validated before any work.

Every field is checked once here, with errors that name the field, the value
and the accepted range; the rest of the library trusts these objects.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from lmdp.errors import ConfigError
from lmdp.privacy.accounting import ACCOUNTANTS
from lmdp.training import METHODS, OPTIMIZERS
from lmdp.weighting import POLICIES

SHADOW_RECIPES = ("nonprivate", "target")
MAX_RECORDS = 10_000_000
MAX_STEPS = 10_000_000


@dataclass(frozen=True)
class DatasetSection:
    """Dataset choice: a built-in name, or a file format plus ``path``."""

    name: str = "fashion-mnist-builtin"
    path: str | None = None
    label_column: str | None = None


@dataclass(frozen=True)
class ModelSection:
    """A zoo model (``mlp``, ``cnn``, ``resnet``) or a user model as ``module:factory``.

    ``taps`` overrides the model's declared taps; a user model without a
    ``taps`` attribute must name them here. ``options`` go to the constructor
    of a zoo model, or to the factory of a user model, with ``input_shape``
    and ``num_classes``.
    """

    name: str = "cnn"
    taps: tuple[str, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitSection:
    """Sizes of the disjoint parts drawn from the dataset for each seed."""

    n_public: int = 1000
    n_members: int = 500
    n_non_members: int = 500
    n_test: int = 1000


@dataclass(frozen=True)
class TrainingSection:
    """Training recipe shared by all methods; σ comes from each target ε."""

    steps: int = 1000
    sample_rate: float = 0.1
    learning_rate: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    max_grad_norm: float = 1.0
    max_physical_batch_size: int = 256
    accountant: str = "rdp"


@dataclass(frozen=True)
class ShadowSection:
    """Shadow training recipe: ``nonprivate``, or the ``target`` DP recipe at the largest ε."""

    recipe: str = "nonprivate"


@dataclass(frozen=True)
class WeightingSection:
    """Layer weighting policy (phase B)."""

    policy: str = "error_proportional"
    gamma: float = 1.0
    min_weight: float = 0.1
    beta: float = 0.5


@dataclass(frozen=True)
class AuditSection:
    """Audit settings: CIs, the permutation null, and audits during training.

    ``checkpoints`` are fractions of the steps (in (0, 1)) at which models are
    also audited, so methods can be compared at matched accuracy.
    """

    n_bootstrap: int = 200
    n_permutations: int = 200
    checkpoints: tuple[float, ...] = (0.5,)
    transfer: bool = True


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment: data, model, methods × target ε × seeds, and the audit."""

    dataset: DatasetSection = DatasetSection()
    model: ModelSection = ModelSection()
    splits: SplitSection = SplitSection()
    methods: tuple[str, ...] = METHODS
    target_epsilons: tuple[float, ...] = (8.0, 1000.0)
    delta: float = 1e-5
    seeds: tuple[int, ...] = (0, 1)
    training: TrainingSection = TrainingSection()
    shadow: ShadowSection = ShadowSection()
    weighting: WeightingSection = WeightingSection()
    audit: AuditSection = AuditSection()

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError("Invalid experiment config:\n  - " + "\n  - ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"]["options"] = dict(self.model.options)
        return data


QUICK_OVERRIDES = {
    "splits": {"n_public": 400, "n_members": 200, "n_non_members": 200, "n_test": 300},
    "target_epsilons": (1000.0,),
    "seeds": (0,),
    "training": {"steps": 150},
    "audit": {"n_bootstrap": 50, "n_permutations": 50, "checkpoints": ()},
}
"""A reduced version of the default experiment, for smoke tests (``lmdp run --quick``)."""


def config_from_dict(data: Mapping[str, Any] | None, *, source: str = "config") -> ExperimentConfig:
    """Build an ``ExperimentConfig`` from nested mappings; unknown fields are errors."""
    data = dict(data or {})
    sections = {f.name: f for f in fields(ExperimentConfig)}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"{source}: unknown fields {unknown}; accepted fields are {sorted(sections)}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(ExperimentConfig(), name)
        if hasattr(default, "__dataclass_fields__"):
            values[name] = _section_from_dict(type(default), value, f"{source}: {name}")
        elif isinstance(default, tuple):
            values[name] = _as_tuple(value, f"{source}: {name}")
        else:
            values[name] = value
    return ExperimentConfig(**values)


def load_config(path: str | Path | None = None, *, quick: bool = False) -> ExperimentConfig:
    """Read a YAML config (or the defaults when ``path`` is None).

    ``quick`` starts from ``QUICK_OVERRIDES`` instead of the defaults, so
    fields the file sets still take the file's values.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            with path.open(encoding="utf-8") as stream:
                loaded = yaml.safe_load(stream)
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of fields; got {type(loaded).__name__}")
        data = loaded or {}
    source = str(path) if path else "config"
    config_from_dict(data, source=source)  # report the file's own errors against the file
    if quick:
        data = _merge(apply_overrides(ExperimentConfig(), QUICK_OVERRIDES).to_dict(), data)
    return config_from_dict(data, source=source)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with the fields of ``override`` replacing its own, one section level deep."""
    merged = dict(base)
    for name, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(name), dict):
            merged[name] = {**merged[name], **value}
        else:
            merged[name] = value
    return merged


def apply_overrides(config: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """Return ``config`` with the given sections or fields replaced, validated again."""
    data = config.to_dict()
    for name, value in overrides.items():
        if isinstance(value, Mapping):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return config_from_dict(data)


def _section_from_dict(section_type: type, value: Any, where: str):
    if value is None:
        return section_type()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping of fields; got {value!r}")
    known = {f.name: f for f in fields(section_type)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown fields {unknown}; accepted fields are {sorted(known)}")
    converted = {}
    for name, item in value.items():
        default = getattr(section_type(), name)
        if isinstance(default, tuple) or (name == "taps" and item is not None):
            converted[name] = _as_tuple(item, f"{where}.{name}")
        else:
            converted[name] = item
    return replace(section_type(), **converted)


def _as_tuple(value: Any, where: str) -> tuple:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return (value,)
    raise ConfigError(f"{where} must be a list; got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _problems(config: ExperimentConfig) -> list[str]:
    """Return every out-of-range field of ``config``, each with its value and accepted range."""
    problems: list[str] = []

    def check(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    dataset, model, splits, training = config.dataset, config.model, config.splits, config.training
    check(isinstance(dataset.name, str) and dataset.name != "", f"dataset.name must be a dataset name; got {dataset.name!r}")
    check(dataset.path is None or isinstance(dataset.path, str), f"dataset.path must be a path string; got {dataset.path!r}")
    check(isinstance(model.name, str) and model.name != "", f"model.name must be a zoo name or 'module:factory'; got {model.name!r}")
    check(model.taps is None or (len(model.taps) > 0 and all(isinstance(t, str) for t in model.taps)),
          f"model.taps must be a non-empty list of module names; got {model.taps!r}")
    check(isinstance(model.options, Mapping), f"model.options must be a mapping; got {model.options!r}")

    for name in ("n_public", "n_members", "n_non_members", "n_test"):
        value = getattr(splits, name)
        check(_is_int(value) and 2 <= value <= MAX_RECORDS, f"splits.{name} must be an integer in [2, {MAX_RECORDS:,}]; got {value!r}")

    check(len(config.methods) > 0 and all(m in METHODS for m in config.methods) and len(set(config.methods)) == len(config.methods),
          f"methods must be distinct names from {list(METHODS)}; got {list(config.methods)}")
    private = [m for m in config.methods if m != "nonprivate"]
    check(not private or len(config.target_epsilons) > 0, "target_epsilons must list at least one ε when dpsgd or lmdpsgd runs")
    check(all(_is_number(e) and e > 0 for e in config.target_epsilons),
          f"target_epsilons must be finite numbers > 0; got {list(config.target_epsilons)}")
    check(len(set(config.target_epsilons)) == len(config.target_epsilons), f"target_epsilons must be distinct; got {list(config.target_epsilons)}")
    check(_is_number(config.delta) and 0 < config.delta < 1, f"delta must be in (0, 1); got {config.delta!r}")
    check(len(config.seeds) > 0 and all(_is_int(s) and 0 <= s < 2**31 for s in config.seeds) and len(set(config.seeds)) == len(config.seeds),
          f"seeds must be distinct integers in [0, 2^31); got {list(config.seeds)}")

    check(_is_int(training.steps) and 1 <= training.steps <= MAX_STEPS, f"training.steps must be an integer in [1, {MAX_STEPS:,}]; got {training.steps!r}")
    check(_is_number(training.sample_rate) and 0 < training.sample_rate <= 1, f"training.sample_rate must be in (0, 1]; got {training.sample_rate!r}")
    check(_is_number(training.learning_rate) and training.learning_rate > 0, f"training.learning_rate must be > 0; got {training.learning_rate!r}")
    check(training.optimizer in OPTIMIZERS, f"training.optimizer must be one of {list(OPTIMIZERS)}; got {training.optimizer!r}")
    check(_is_number(training.momentum) and 0 <= training.momentum < 1, f"training.momentum must be in [0, 1); got {training.momentum!r}")
    check(_is_number(training.max_grad_norm) and training.max_grad_norm > 0, f"training.max_grad_norm must be > 0; got {training.max_grad_norm!r}")
    check(_is_int(training.max_physical_batch_size) and 1 <= training.max_physical_batch_size <= 1_000_000,
          f"training.max_physical_batch_size must be an integer in [1, 1,000,000]; got {training.max_physical_batch_size!r}")
    check(training.accountant in ACCOUNTANTS, f"training.accountant must be one of {list(ACCOUNTANTS)}; got {training.accountant!r}")

    check(config.shadow.recipe in SHADOW_RECIPES, f"shadow.recipe must be one of {list(SHADOW_RECIPES)}; got {config.shadow.recipe!r}")
    weighting = config.weighting
    check(weighting.policy in POLICIES, f"weighting.policy must be one of {list(POLICIES)}; got {weighting.policy!r}")
    check(_is_number(weighting.gamma) and weighting.gamma >= 0, f"weighting.gamma must be a finite number ≥ 0; got {weighting.gamma!r}")
    check(_is_number(weighting.min_weight) and 0 < weighting.min_weight <= 1, f"weighting.min_weight must be in (0, 1]; got {weighting.min_weight!r}")
    check(_is_number(weighting.beta) and 0 <= weighting.beta <= 1, f"weighting.beta must be in [0, 1]; got {weighting.beta!r}")

    audit = config.audit
    check(_is_int(audit.n_bootstrap) and 0 <= audit.n_bootstrap <= 100_000, f"audit.n_bootstrap must be an integer in [0, 100,000]; got {audit.n_bootstrap!r}")
    check(_is_int(audit.n_permutations) and 0 <= audit.n_permutations <= 100_000,
          f"audit.n_permutations must be an integer in [0, 100,000]; got {audit.n_permutations!r}")
    check(all(_is_number(c) and 0 < c < 1 for c in audit.checkpoints), f"audit.checkpoints must be fractions in (0, 1); got {list(audit.checkpoints)}")
    check(isinstance(audit.transfer, bool), f"audit.transfer must be true or false; got {audit.transfer!r}")
    return problems
