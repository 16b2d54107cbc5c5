"""The main job: phases A–D for every method, target ε and seed, and the comparison.

For each seed, the data is split into public, member, non-member and test
parts. A shadow model trained on half the public pool gives the per-layer
risk and the layer weights (phases A and B). Then the target model is trained
with every method and target ε and audited at checkpoints during training and
at the end (phase D). Within a seed, ``dpsgd`` and ``lmdpsgd`` at one ε share the
initialisation, σ, the batches and the noise draws, so their paired
difference isolates the effect of the layer weights.

Every finished run is written to ``runs/`` in the output folder at once, and a
run in progress writes a training checkpoint every tenth of its steps, so an
interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from lmdp import __version__
from lmdp.attacks.assessment import AttackConfig
from lmdp.audit import AuditResult, ShadowSource, audit_model
from lmdp.config import ExperimentConfig
from lmdp.data import ArrayDataset, ExperimentSplits, count_shared_records, load_dataset, split_experiment, split_shadow
from lmdp.errors import ArtifactError, ConfigError
from lmdp.io import atomic_write_json
from lmdp.models import build_layer_map, build_model, model_taps, validate_model
from lmdp.privacy.accounting import calibrate_noise_multiplier, compute_epsilon
from lmdp.risk import RiskConfig, RiskProfile, build_risk_profile, check_public_only, library_versions, save_risk_profile, shadow_trainer
from lmdp.training import TrainingConfig, evaluate_accuracy, train
from lmdp.weighting import WeightingPolicy, assign_layer_weights

logger = logging.getLogger(__name__)

MEANINGFUL_EPSILON = 10.0
"""Above this ε a run is labelled as having no meaningful formal privacy guarantee."""

RUN_FORMAT = "lmdp-run"
RUN_VERSION = 1


@dataclass(frozen=True)
class RunSpec:
    """One cell of the experiment grid."""

    method: str
    seed: int
    target_epsilon: float | None

    @property
    def key(self) -> str:
        epsilon = "none" if self.target_epsilon is None else f"{self.target_epsilon:g}"
        return f"{self.method}_eps{epsilon}_seed{self.seed}"


def config_fingerprint(config: ExperimentConfig) -> str:
    """Return a short hash of the config, so finished runs are reused only by the same experiment."""
    text = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def build_experiment_model(config: ExperimentConfig, *, input_shape: Sequence[int], num_classes: int) -> tuple[nn.Module, tuple[str, ...]]:
    """Build the configured model and return it with its taps (zoo name or ``module:factory``)."""
    section = config.model
    model = build_model(section.name, input_shape=input_shape, num_classes=num_classes, **dict(section.options))
    taps = tuple(section.taps) if section.taps else model_taps(model)
    return model, taps


def _tensor(array: np.ndarray) -> torch.Tensor:
    """Copy a (read-only) dataset array into a tensor that torch may write to."""
    return torch.from_numpy(np.array(array))


class Experiment:
    """Prepare and run one experiment into ``out_dir``.

    ``prepare`` does every check that can fail before any training: the
    dataset loads, the splits fit, the model builds with its taps, and the
    layer map covers every parameter.
    """

    def __init__(self, config: ExperimentConfig, out_dir: str | Path, *, progress: bool = False):
        self.config = config
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.fingerprint = config_fingerprint(config)
        self.dataset: ArrayDataset | None = None
        self.timings: dict[str, float] = {}

    # -- checks before any work --------------------------------------------

    def prepare(self, *, overwrite: bool = False) -> None:
        """Load the data, check splits, model, taps and output folder; raise ConfigError on the first failure."""
        self._check_output_folder(overwrite=overwrite)
        dataset_section = self.config.dataset
        self.dataset = load_dataset(dataset_section.name, path=dataset_section.path, label_column=dataset_section.label_column)
        splits = self.config.splits
        needed = splits.n_public + splits.n_members + splits.n_non_members + splits.n_test
        if needed > len(self.dataset):
            raise ConfigError(
                f"splits need {needed:,} records (n_public {splits.n_public} + n_members {splits.n_members} + "
                f"n_non_members {splits.n_non_members} + n_test {splits.n_test}) but dataset "
                f"{self.dataset.name!r} has {len(self.dataset):,}; lower the split sizes"
            )
        model, taps = self._new_model(seed=0)
        validate_model(model)
        try:
            build_layer_map(model, taps, _tensor(self.dataset.x[:2]))
        except (RuntimeError, TypeError) as error:
            raise ConfigError(
                f"model {self.config.model.name!r} failed on inputs of shape {self.dataset.input_shape} from dataset "
                f"{self.dataset.name!r} ({type(error).__name__}: {error}); build the model from the input_shape "
                "its factory receives"
            ) from error
        (self.out_dir / "runs").mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out_dir / "config.json", {"fingerprint": self.fingerprint, "config": self.config.to_dict()})

    def _check_output_folder(self, *, overwrite: bool) -> None:
        saved = self.out_dir / "config.json"
        if not saved.exists() or overwrite:
            if overwrite and (self.out_dir / "runs").is_dir():
                # Finished runs, profiles and checkpoints of the replaced experiment.
                for stale in (self.out_dir / "runs").iterdir():
                    if stale.is_file():
                        stale.unlink()
            return
        try:
            fingerprint = json.loads(saved.read_text(encoding="utf-8"))["fingerprint"]
        except (ValueError, KeyError, TypeError) as error:
            raise ArtifactError(f"{saved} is damaged ({error}); choose another --out folder or pass --overwrite") from error
        if fingerprint != self.fingerprint:
            raise ConfigError(
                f"{self.out_dir} contains results of a different experiment (config {fingerprint}, now {self.fingerprint}); "
                "choose another --out folder, or pass --overwrite to replace them"
            )
        logger.info("resuming the experiment in %s: finished runs are reused", self.out_dir)

    # -- the grid ----------------------------------------------------------

    def grid(self) -> list[RunSpec]:
        """Return every run: nonprivate once per seed, each private method once per seed and ε."""
        specs = []
        for seed in self.config.seeds:
            for method in self.config.methods:
                if method == "nonprivate":
                    specs.append(RunSpec(method, seed, None))
                else:
                    specs.extend(RunSpec(method, seed, epsilon) for epsilon in self.config.target_epsilons)
        return specs

    def run(self, *, on_run_done: Callable[[RunSpec, dict], None] | None = None) -> dict[str, Any]:
        """Run every missing cell of the grid and return the records of all runs, by key."""
        if self.dataset is None:
            self.prepare()
        calibrations = self._calibrate()
        records: dict[str, dict] = {}
        profiles: dict[int, dict] = {}
        for seed in self.config.seeds:
            pending = [spec for spec in self.grid() if spec.seed == seed]
            finished = {spec.key: self._load_run(spec) for spec in pending}
            if all(record is not None for record in finished.values()) and (self._profile_path(seed)).exists():
                records.update(finished)
                profiles[seed] = json.loads(self._profile_path(seed).read_text(encoding="utf-8"))
                logger.info("seed %d: all %d runs already finished; reusing them", seed, len(pending))
                continue
            splits = self._splits(seed)
            profile, shadow = self._risk_phase(seed, splits, calibrations)
            profiles[seed] = profile.to_dict()
            for spec in pending:
                record = finished[spec.key]
                if record is None:
                    record = self._train_and_audit(spec, splits, profile, shadow, calibrations)
                    atomic_write_json(self._run_path(spec), record)
                    self._discard_checkpoints(spec)
                records[spec.key] = record
                if on_run_done is not None:
                    on_run_done(spec, record)
        return {"records": records, "profiles": profiles, "calibrations": calibrations}

    # -- phases --------------------------------------------------------------

    def _calibrate(self) -> dict[float, dict]:
        """Calibrate σ once per target ε: dpsgd and lmdpsgd share it, so they have the same ε by construction."""
        training = self.config.training
        calibrations = {}
        for target in self.config.target_epsilons:
            calibration = calibrate_noise_multiplier(
                target_epsilon=target,
                target_delta=self.config.delta,
                sample_rate=training.sample_rate,
                steps=training.steps,
                accountant=training.accountant,
            )
            calibrations[target] = calibration.to_dict()
            logger.info("target ε %g: noise_multiplier %.4g gives ε %.4g", target, calibration.noise_multiplier, calibration.epsilon)
        return calibrations

    def _splits(self, seed: int) -> ExperimentSplits:
        sizes = self.config.splits
        splits = split_experiment(
            self.dataset,
            seed=seed,
            n_public=sizes.n_public,
            n_members=sizes.n_members,
            n_non_members=sizes.n_non_members,
            n_test=sizes.n_test,
        )
        shared = count_shared_records(splits.public, splits.members)
        if shared:
            raise ConfigError(
                f"{shared} records of the public pool are also private members (seed {seed}); the layer weights must "
                "come from public data only. Remove duplicate records from the dataset"
            )
        return splits

    def _risk_phase(self, seed: int, splits: ExperimentSplits, calibrations: dict) -> tuple[RiskProfile, ShadowSource | None]:
        """Phase A and B: train the shadow model on public data, measure layer risk, derive weights."""
        started = time.perf_counter()
        shadow_model, taps = self._new_model(seed=seed + 1_000_003)  # independent of the target's initialisation
        recipe = self._training_config("nonprivate", seed=seed, noise_multiplier=0.0)
        if self.config.shadow.recipe == "target":
            strongest = max(self.config.target_epsilons)  # the recipe with the least noise
            recipe = self._training_config("dpsgd", seed=seed, noise_multiplier=calibrations[strongest]["noise_multiplier"])
        profile = build_risk_profile(
            splits.public,
            shadow_model=shadow_model,
            taps=taps,
            train_shadow=shadow_trainer(recipe),
            split_seed=seed,
            config=self._risk_config(seed),
            progress=self.progress,
        )
        weighting = self.config.weighting
        policy = WeightingPolicy(name=weighting.policy, gamma=weighting.gamma, min_weight=weighting.min_weight, beta=weighting.beta)
        profile = assign_layer_weights(profile, policy)
        check_public_only(profile, splits.members)
        save_risk_profile(profile, self._profile_path(seed))
        self.timings[f"risk_seed{seed}"] = time.perf_counter() - started
        logger.info("seed %d: layer_weights %s", seed, profile.layer_weights)

        shadow = None
        if self.config.audit.transfer:
            shadow_members, shadow_non_members = split_shadow(splits.public, seed=seed)
            shadow = ShadowSource(model=shadow_model, members=shadow_members, non_members=shadow_non_members)
        return profile, shadow

    def _train_and_audit(self, spec: RunSpec, splits: ExperimentSplits, profile: RiskProfile, shadow, calibrations) -> dict:
        """Phase C and D for one run: train, audit at checkpoints and at the end, and return the run record."""
        started = time.perf_counter()
        model, taps = self._new_model(seed=spec.seed)
        sigma = 0.0 if spec.target_epsilon is None else calibrations[spec.target_epsilon]["noise_multiplier"]
        weights = profile.layer_weights if spec.method == "lmdpsgd" else None
        config = self._training_config(spec.method, seed=spec.seed, noise_multiplier=sigma, layer_weights=weights)
        x, y = _tensor(splits.members.x), _tensor(splits.members.y)
        evaluation = (x, y, _tensor(splits.test.x), _tensor(splits.test.y))
        layer_map = build_layer_map(model, taps, x[:2])

        audit_steps = sorted({max(1, round(f * config.steps)) for f in self.config.audit.checkpoints} - {config.steps})
        checkpoint, partial = self._checkpoint_paths(spec)
        resume_from, trajectory = self._resume_state(spec)

        def on_step(step: int, trained: nn.Module) -> None:
            if step in audit_steps:
                audit = self._audit(trained, taps, splits, None, spec.seed)
                trajectory.append(self._trajectory_point(step, trained, audit, config, evaluation))
                atomic_write_json(partial, {"trajectory": trajectory})

        result = train(
            model, x, y,
            config=config,
            layer_map=layer_map,
            delta=self.config.delta if config.is_private else None,
            on_step=on_step,
            checkpoint_path=checkpoint,
            checkpoint_every=max(1, config.steps // 10),
            resume_from=resume_from,
            progress=self.progress,
        )
        audit = self._audit(model, taps, splits, shadow, spec.seed)
        final = self._trajectory_point(config.steps, model, audit, config, evaluation)
        trajectory.append(final)
        record = self._run_record(spec, config, result, audit, final, trajectory, splits, profile)
        record["wall_time_s"] = time.perf_counter() - started
        logger.info("%s: test_accuracy %.3f, peak_auc %.3f at %s", spec.key, final["test_accuracy"], audit.peak_auc, audit.peak_layer)
        return record

    # -- helpers -------------------------------------------------------------

    def _new_model(self, *, seed: int) -> tuple[nn.Module, tuple[str, ...]]:
        torch.manual_seed(seed)
        return build_experiment_model(self.config, input_shape=self.dataset.input_shape, num_classes=self.dataset.num_classes)

    def _training_config(self, method: str, *, seed: int, noise_multiplier: float, layer_weights=None) -> TrainingConfig:
        training = self.config.training
        return TrainingConfig(
            method=method,
            steps=training.steps,
            sample_rate=training.sample_rate,
            learning_rate=training.learning_rate,
            optimizer=training.optimizer,
            momentum=training.momentum,
            max_grad_norm=training.max_grad_norm,
            noise_multiplier=noise_multiplier,
            layer_weights=layer_weights,
            accountant=training.accountant,
            max_physical_batch_size=training.max_physical_batch_size,
            seed=seed,
        )

    def _risk_config(self, seed: int) -> RiskConfig:
        audit = self.config.audit
        return RiskConfig(attack=AttackConfig(n_bootstrap=audit.n_bootstrap, n_permutations=audit.n_permutations, seed=seed))

    def _audit(self, model: nn.Module, taps, splits: ExperimentSplits, shadow, seed: int) -> AuditResult:
        return audit_model(model, splits.members, splits.non_members, taps=taps, config=self._risk_config(seed), shadow=shadow)

    def _trajectory_point(self, step, model, audit: AuditResult, config: TrainingConfig, evaluation) -> dict:
        x_train, y_train, x_test, y_test = evaluation
        epsilon = None
        if config.is_private:
            epsilon = compute_epsilon(noise_multiplier=config.noise_multiplier, sample_rate=config.sample_rate, steps=step,
                                      delta=self.config.delta, accountant=config.accountant)
        return {
            "step": step,
            "epsilon": epsilon,
            "test_accuracy": evaluate_accuracy(model, x_test, y_test),
            "train_accuracy": evaluate_accuracy(model, x_train, y_train),
            "peak_auc": audit.held_out.peak_auc,
            "peak_layer": audit.held_out.peak_layer,
        }

    def _run_record(self, spec: RunSpec, config: TrainingConfig, result, audit: AuditResult, final: dict, trajectory,
                    splits: ExperimentSplits, profile: RiskProfile) -> dict:
        held_out = audit.held_out
        layers = [_layer_entry(layer) for layer in (*held_out.layers, held_out.output)]
        record = {
            "format": RUN_FORMAT,
            "version": RUN_VERSION,
            "config_fingerprint": self.fingerprint,
            "key": spec.key,
            "method": spec.method,
            "seed": spec.seed,
            "target_epsilon": spec.target_epsilon,
            "epsilon": result.epsilon,
            "delta": self.config.delta if config.is_private else None,
            "noise_multiplier": config.noise_multiplier,
            "max_grad_norm": config.max_grad_norm if config.is_private else None,
            "sample_rate": config.sample_rate,
            "steps": result.steps,
            "empty_batches": result.empty_batches,
            "layer_weights": None if result.mechanism is None else result.mechanism.layer_weights,
            "meaningful_privacy": config.is_private and result.epsilon is not None and result.epsilon <= MEANINGFUL_EPSILON,
            "test_accuracy": final["test_accuracy"],
            "train_accuracy": final["train_accuracy"],
            "layers": layers,
            "peak_auc": held_out.peak_auc,
            "peak_layer": held_out.peak_layer,
            "peak_attack": held_out.peak_attack,
            "output_auc": held_out.output.auc,
            "null_peak_auc": {"mean": held_out.null.mean, "quantiles": held_out.null.quantiles, "p_value": held_out.null.p_value,
                              "n_permutations": held_out.null.n_permutations},
            "transfer": None if audit.transfer is None else {
                "peak_auc": audit.transfer.peak_auc, "peak_layer": audit.transfer.peak_layer,
                "layers": [_layer_entry(layer) for layer in (*audit.transfer.layers, audit.transfer.output)],
            },
            "trajectory": trajectory,
            "final_loss": result.loss_history[-1] if result.loss_history else None,
            "data_fingerprints": splits.fingerprints(),
            "risk_profile_shadow": profile.shadow,
        }
        return record

    def _checkpoint_paths(self, spec: RunSpec) -> tuple[Path, Path]:
        """Return the training checkpoint and the file of audits during training of an unfinished run."""
        runs = self.out_dir / "runs"
        return runs / f"{spec.key}.checkpoint.pt", runs / f"{spec.key}.trajectory.json"

    def _resume_state(self, spec: RunSpec) -> tuple[Path | None, list[dict]]:
        """Return the checkpoint to resume from (None for a fresh start) and the audits made before it."""
        checkpoint, partial = self._checkpoint_paths(spec)
        if not checkpoint.exists():
            return None, []
        try:
            saved_step = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["step"])
            trajectory = json.loads(partial.read_text(encoding="utf-8"))["trajectory"] if partial.exists() else []
        except Exception as error:  # a damaged file of an interrupted run: start that run again
            logger.warning("cannot resume %s from %s (%s); training it from the start", spec.key, checkpoint, error)
            checkpoint.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
            return None, []
        logger.info("resuming %s from step %d", spec.key, saved_step)
        return checkpoint, [point for point in trajectory if point["step"] <= saved_step]

    def _discard_checkpoints(self, spec: RunSpec) -> None:
        for path in self._checkpoint_paths(spec):
            path.unlink(missing_ok=True)

    def _run_path(self, spec: RunSpec) -> Path:
        return self.out_dir / "runs" / f"{spec.key}.json"

    def _profile_path(self, seed: int) -> Path:
        return self.out_dir / "runs" / f"risk_profile_seed{seed}.json"

    def _load_run(self, spec: RunSpec) -> dict | None:
        path = self._run_path(spec)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            logger.warning("run file %s is damaged; running %s again", path, spec.key)
            return None
        if record.get("format") != RUN_FORMAT or record.get("config_fingerprint") != self.fingerprint:
            logger.warning("run file %s belongs to another experiment; running %s again", path, spec.key)
            return None
        return record


def _layer_entry(layer) -> dict:
    metrics = layer.metrics
    return {
        "name": layer.name,
        "attack": layer.attack,
        "auc": metrics.auc,
        "balanced_accuracy": metrics.balanced_accuracy,
        "attack_error": metrics.attack_error,
        "advantage": metrics.advantage,
        "tpr_at_fpr": dict(metrics.tpr_at_fpr),
        "layer_risk": layer.layer_risk,
        "p_value": layer.p_value,
        "ci": {name: list(interval) if isinstance(interval, (list, tuple)) else interval for name, interval in metrics.ci.items()},
        "roc": layer.roc,
    }


def provenance() -> dict[str, Any]:
    """Versions of lmdp and its main dependencies."""
    return {"lmdp": __version__, **library_versions()}



def run_experiment(
    config: ExperimentConfig, out_dir: str | Path, *, overwrite: bool = False, progress: bool = False
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Run the whole experiment into ``out_dir`` and write the report; return it and the written paths.

    Finished runs already in ``out_dir`` (from an interrupted run of the same
    config) are reused. Results of a different config are never replaced
    unless ``overwrite`` is set.
    """
    from lmdp.report import build_report, write_report

    started = time.perf_counter()
    experiment = Experiment(config, out_dir, progress=progress)
    experiment.prepare(overwrite=overwrite)
    outcome = experiment.run()
    dataset = experiment.dataset
    experiment.timings["total_s"] = time.perf_counter() - started
    report = build_report(
        config=config.to_dict(),
        config_fingerprint=experiment.fingerprint,
        records=outcome["records"],
        profiles=outcome["profiles"],
        calibrations=outcome["calibrations"],
        dataset={"name": dataset.name, "source": dataset.source, "records": len(dataset), "fingerprint": dataset.fingerprint()},
        versions=provenance(),
        timings=experiment.timings,
    )
    return report, write_report(report, out_dir)
