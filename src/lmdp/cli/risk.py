"""``lmdp risk`` and ``lmdp audit``: layer-wise membership risk from the command line."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np

from lmdp.cli import main
from lmdp.data import DATASET_NAMES
from lmdp.errors import ArtifactError, ConfigError, LayerMapError, ProfileMismatchError, UnsupportedModuleError

_POLICIES = ("error_proportional", "relative_risk")
_ERRORS = (ConfigError, ArtifactError, LayerMapError, ProfileMismatchError, UnsupportedModuleError, FileNotFoundError)


def _dataset_options(function):
    options = [
        click.option("--dataset", type=click.Choice(DATASET_NAMES), default="fashion-mnist-builtin", show_default=True,
                     help="Dataset to read; formats read from disk need --path."),
        click.option("--path", "data_path", default=None, help="File or folder of the dataset, for on-disk formats."),
        click.option("--label-column", default=None, help="Label column of a csv dataset."),
        click.option("--model", "model_name", default="cnn", show_default=True,
                     help="Zoo model (mlp, cnn, resnet) or a user model as module:factory."),
        click.option("--taps", default=None,
                     help="Comma-separated qualified module names to tap, in forward order; default: the model's own taps."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _attack_options(function):
    options = [
        click.option("--attacks", default=None,
                     help="Comma-separated IR attacks (centroid, knn, probe, logreg, mlp, boosted); default: all."),
        click.option("--n-bootstrap", type=int, default=200, show_default=True,
                     help="Bootstrap resamples for the confidence intervals (0 skips them)."),
        click.option("--n-permutations", type=int, default=1000, show_default=True,
                     help="Label permutations for the null baseline of the peak AUC (0 skips it)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the splits and attacks."),
        click.option("--no-progress", is_flag=True, help="Hide progress bars."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@main.command()
@_dataset_options
@click.option("--indices", "indices_path", type=click.Path(dir_okay=False), default=None,
              help="File of record indices (.npy, or integers separated by spaces, commas or newlines) that form "
                   "the public pool; default: every record of the dataset is public.")
@click.option("--method", type=click.Choice(("nonprivate", "dpsgd")), default="nonprivate", show_default=True,
              help="Shadow recipe: nonprivate shows where leakage arises, dpsgd (the target's recipe) where it survives DP.")
@click.option("--steps", type=int, default=1000, show_default=True, help="Training steps of the shadow model.")
@click.option("--sample-rate", type=float, default=0.02, show_default=True,
              help="Sample rate q of the shadow training (expected batch size / shadow members).")
@click.option("--learning-rate", type=float, default=1e-3, show_default=True, help="Learning rate of the shadow training.")
@click.option("--optimizer", type=click.Choice(("sgd", "adam")), default="adam", show_default=True, help="Shadow optimizer.")
@click.option("--noise-multiplier", type=float, default=0.0, show_default=True, help="σ of a dpsgd shadow recipe.")
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True, help="Clip norm C of a dpsgd shadow recipe.")
@click.option("--policy", type=click.Choice(_POLICIES), default="error_proportional", show_default=True,
              help="Weighting policy that turns attack errors into layer weights.")
@click.option("--gamma", type=float, default=1.0, show_default=True,
              help="Exponent of error_proportional: w_l = max(min_weight, (e_l / max_k e_k) ** gamma); 0 gives DP-SGD.")
@click.option("--beta", type=float, default=0.5, show_default=True,
              help="Strength of relative_risk: w_l = max(min_weight, 1 - beta * r_l / max_k r_k), in [0, 1].")
@click.option("--min-weight", type=float, default=0.1, show_default=True, help="Smallest layer weight, in (0, 1].")
@_attack_options
@click.option("--save-shadow", type=click.Path(dir_okay=False), default=None,
              help="Also save the trained shadow model's state_dict here, for the transfer setting of `lmdp audit`.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="risk_profile.json", show_default=True,
              help="Where to write the risk profile (JSON).")
def risk(
    dataset: str, data_path: str | None, label_column: str | None, model_name: str, taps: str | None,
    indices_path: str | None, method: str, steps: int, sample_rate: float, learning_rate: float, optimizer: str,
    noise_multiplier: float, max_grad_norm: float, policy: str, gamma: float, beta: float, min_weight: float,
    attacks: str | None, n_bootstrap: int, n_permutations: int, seed: int, no_progress: bool,
    save_shadow: str | None, out_path: str,
) -> None:
    """Train a shadow model on public data, measure each layer's membership risk, and write a risk profile."""
    from lmdp.data import DatasetError, load_dataset
    from lmdp.risk import build_risk_profile, save_risk_profile, shadow_trainer
    from lmdp.training import TrainingConfig
    from lmdp.weighting import WeightingPolicy, assign_layer_weights

    try:
        data = load_dataset(dataset, path=data_path, label_column=label_column)
        public = data if indices_path is None else data.subset(_read_indices(indices_path, len(data)), name=f"{data.name}/public")
        weighting = WeightingPolicy(name=policy, gamma=gamma, min_weight=min_weight, beta=beta)
        recipe = TrainingConfig(
            method=method, steps=steps, sample_rate=sample_rate, learning_rate=learning_rate, optimizer=optimizer,
            noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, seed=seed,
        )
        config = _risk_config(attacks, n_bootstrap, n_permutations, seed)
        model, tap_names = _build_model(model_name, taps, public, seed)
        profile = build_risk_profile(
            public, shadow_model=model, taps=tap_names, train_shadow=shadow_trainer(recipe),
            split_seed=seed, config=config, progress=not no_progress,
        )
        profile = assign_layer_weights(profile, weighting)
        written = save_risk_profile(profile, out_path)
        if save_shadow is not None:
            _save_state_dict(model, save_shadow)
    except (*_ERRORS, DatasetError) as error:
        raise click.ClickException(str(error)) from error

    click.echo(f"Shadow model: {profile.architecture} trained ({method}) on {profile.shadow['members']['size']} of "
               f"{len(public)} public records; {profile.shadow['non_members']['size']} held out as non-members.")
    click.echo(_layer_table(profile.risk, weights=profile.layer_weights))
    click.echo(_peak_line(profile.risk))
    click.echo(f"\nRisk profile: {Path(written).resolve()}")
    if save_shadow is not None:
        click.echo(f"Shadow model: {Path(save_shadow).resolve()}")


@main.command()
@_dataset_options
@click.option("--checkpoint", type=click.Path(dir_okay=False), required=True,
              help="Trained target model: an lmdp training checkpoint or a file written by torch.save(model.state_dict()).")
@click.option("--members", "members_path", type=click.Path(dir_okay=False), required=True,
              help="File of the dataset indices the target was trained on (.npy or integers in text).")
@click.option("--non-members", "non_members_path", type=click.Path(dir_okay=False), required=True,
              help="File of dataset indices the target never trained on, from the same distribution.")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None,
              help="Risk profile written by `lmdp risk`; with --shadow-checkpoint it adds the transfer setting.")
@click.option("--shadow-checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Shadow model saved by `lmdp risk --save-shadow`.")
@click.option("--public-indices", type=click.Path(dir_okay=False), default=None,
              help="The --indices file given to `lmdp risk`, if any; the public pool is re-split with the profile's seed.")
@_attack_options
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="audit.json", show_default=True,
              help="Where to write the audit (JSON).")
def audit(
    dataset: str, data_path: str | None, label_column: str | None, model_name: str, taps: str | None,
    checkpoint: str, members_path: str, non_members_path: str, profile_path: str | None,
    shadow_checkpoint: str | None, public_indices: str | None, attacks: str | None, n_bootstrap: int,
    n_permutations: int, seed: int, no_progress: bool, out_path: str,
) -> None:
    """Audit a trained model layer by layer and print AUC, advantage and TPR at low FPR per layer."""
    from lmdp.audit import audit_model, save_audit
    from lmdp.data import DatasetError, load_dataset

    if (profile_path is None) != (shadow_checkpoint is None):
        raise click.UsageError("the transfer setting needs both --profile and --shadow-checkpoint; give both or neither")
    try:
        data = load_dataset(dataset, path=data_path, label_column=label_column)
        member_indices = _read_indices(members_path, len(data))
        non_member_indices = _read_indices(non_members_path, len(data))
        overlap = np.intersect1d(member_indices, non_member_indices)
        if overlap.size:
            raise ConfigError(f"{overlap.size} indices are listed as both members and non-members, e.g. {overlap[:5].tolist()}")
        members = data.subset(member_indices, name=f"{data.name}/members")
        non_members = data.subset(non_member_indices, name=f"{data.name}/non_members")

        model, tap_names = _build_model(model_name, taps, data, seed)
        _load_weights(model, checkpoint)
        shadow = None
        if profile_path is not None:
            shadow = _shadow_source(profile_path, shadow_checkpoint, public_indices, data, model, tap_names, model_name, seed)
        config = _risk_config(attacks, n_bootstrap, n_permutations, seed)
        result = audit_model(
            model, members, non_members, taps=tap_names, config=config, shadow=shadow, progress=not no_progress
        )
        written = save_audit(result, out_path)
    except (*_ERRORS, DatasetError) as error:
        raise click.ClickException(str(error)) from error

    for setting in result.settings:
        click.echo(f"\n{setting.setting} setting ({setting.split['members']} members, "
                   f"{setting.split['non_members']} non-members evaluated)")
        click.echo(_layer_table(setting))
        click.echo(_peak_line(setting))
    click.echo(f"\nAudit: {Path(written).resolve()}")


def _risk_config(attacks: str | None, n_bootstrap: int, n_permutations: int, seed: int):
    from lmdp.attacks import AttackConfig
    from lmdp.risk import RiskConfig

    attack_kwargs: dict[str, Any] = {"n_bootstrap": n_bootstrap, "n_permutations": n_permutations, "seed": seed}
    if attacks is not None:
        attack_kwargs["attacks"] = tuple(name.strip() for name in attacks.split(",") if name.strip())
    return RiskConfig(attack=AttackConfig(**attack_kwargs))


def _build_model(model_name: str, taps: str | None, data, seed: int):
    import torch

    from lmdp.models import build_model, model_taps

    torch.manual_seed(seed)
    model = build_model(model_name, input_shape=data.input_shape, num_classes=data.num_classes)
    tap_names = model_taps(model) if taps is None else tuple(tap.strip() for tap in taps.split(",") if tap.strip())
    return model, tap_names


def _read_indices(path: str | Path, n_records: int) -> np.ndarray:
    """Read record indices from a .npy file or a text file of integers; check their range and uniqueness."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"index file {path} not found")
    try:
        if path.suffix == ".npy":
            indices = np.load(path, allow_pickle=False)
        else:
            text = path.read_text(encoding="utf-8").replace(",", " ")
            indices = np.array([int(token) for token in text.split()], dtype=np.int64)
    except ValueError as error:
        raise ConfigError(f"index file {path} must hold integers only: {error}") from error
    if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
        raise ConfigError(f"index file {path} must hold a non-empty list of integers; got shape {indices.shape}, dtype {indices.dtype}")
    if indices.min() < 0 or indices.max() >= n_records:
        raise ConfigError(f"index file {path} has indices from {indices.min()} to {indices.max()}; the dataset has {n_records} records")
    if np.unique(indices).size != indices.size:
        raise ConfigError(f"index file {path} lists {indices.size - np.unique(indices).size} indices more than once")
    return indices.astype(np.int64)


def _load_weights(model, path: str | Path) -> None:
    """Load an lmdp checkpoint's model weights, or a plain state_dict, into ``model``."""
    import torch

    from lmdp.checkpoint import CHECKPOINT_FORMAT

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises several types for damaged or foreign files
        raise ArtifactError(f"model file {path} cannot be read ({type(error).__name__}: {error})") from error
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        state = state["model"]
    if not isinstance(state, dict):
        raise ArtifactError(f"model file {path} contains a {type(state).__name__}, not a state_dict or an lmdp checkpoint")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        # torch lists missing keys, unexpected keys and shape mismatches on the lines after its header.
        details = "; ".join(line.strip() for line in str(error).splitlines()[1:4] if line.strip())
        raise ArtifactError(
            f"model file {path} does not fit the model ({details}). "
            "Pass the --model and --dataset the model was trained with"
        ) from error


def _save_state_dict(model, path: str | Path) -> None:
    import torch

    from lmdp.io import atomic_write

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write(path, lambda stream: stream.write(buffer.getvalue()))


def _shadow_source(profile_path, shadow_checkpoint, public_indices, data, target_model, taps, model_name, seed):
    """Rebuild the shadow model and its split from a risk profile, checking both against the profile."""
    from lmdp.audit import ShadowSource
    from lmdp.data import split_shadow
    from lmdp.risk import load_risk_profile

    profile = load_risk_profile(profile_path, model=target_model, taps=taps)
    public = data if public_indices is None else data.subset(_read_indices(public_indices, len(data)), name=f"{data.name}/public")
    expected = profile.shadow.get("public", {}).get("fingerprint")
    if expected is not None and public.fingerprint() != expected:
        raise ConfigError(
            f"the public records differ from those risk profile {profile_path} was made from; pass the dataset "
            "and --public-indices that were given to `lmdp risk`"
        )
    members, non_members = split_shadow(public, seed=int(profile.shadow.get("split_seed", seed)))
    shadow_model, _ = _build_model(model_name, ",".join(taps), data, seed)
    _load_weights(shadow_model, shadow_checkpoint)
    return ShadowSource(model=shadow_model, members=members, non_members=non_members)


def _format_interval(value: float, interval: Sequence[float] | None) -> str:
    if interval is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _layer_table(assessment, weights: dict[str, float] | None = None) -> str:
    header = ["layer", "attack", "AUC [CI]", "attack_error [CI]", "layer_risk", "advantage", "TPR@1%", "TPR@0.1%", "p-value"]
    if weights is not None:
        header.append("weight")
    rows = [header]
    for layer in (*assessment.layers, assessment.output):
        metrics = layer.metrics
        row = [
            layer.name,
            layer.attack,
            _format_interval(metrics.auc, metrics.ci.get("auc")),
            _format_interval(metrics.attack_error, metrics.ci.get("attack_error")),
            f"{layer.layer_risk:.3f}",
            f"{metrics.advantage:.3f}",
            f"{metrics.tpr_at_fpr.get('0.01', float('nan')):.3f}",
            f"{metrics.tpr_at_fpr.get('0.001', float('nan')):.3f}",
            "–" if layer.p_value is None else f"{layer.p_value:.3g}",
        ]
        if weights is not None:
            row.append(f"{weights[layer.name]:.3f}" if layer.name in weights else "–")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _peak_line(assessment) -> str:
    null = assessment.null
    line = f"Peak AUC {assessment.peak_auc:.3f} at {assessment.peak_layer} ({assessment.peak_attack})"
    if null.p_value is None:
        return line + "; no null baseline (--n-permutations 0)."
    return (
        line + f"; with labels permuted {null.n_permutations} times the peak has median {null.quantiles['0.5']:.3f} "
        f"and 95% quantile {null.quantiles['0.95']:.3f}, p-value {null.p_value:.3g}."
    )
