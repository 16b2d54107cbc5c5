"""``lmdp epsilon`` and ``lmdp calibrate``: privacy accounting from the command line."""

from __future__ import annotations

import json

import click

from lmdp.cli import main
from lmdp.errors import ConfigError
from lmdp.privacy.accounting import ACCOUNTANTS, calibrate_noise_multiplier, compute_epsilon, steps_for_epochs

_accountant_option = click.option(
    "--accountant", type=click.Choice(ACCOUNTANTS), default="rdp", show_default=True, help="Privacy accountant."
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
_delta_option = click.option("--delta", type=float, required=True, help="Target δ; use less than 1/N.")
_sample_rate_option = click.option(
    "--sample-rate", type=float, required=True, help="Poisson sampling rate q = expected batch size / N."
)


def _fail(error: Exception) -> None:
    raise click.ClickException(str(error).splitlines()[0])


@main.command()
@click.option("--noise-multiplier", type=float, required=True, help="Noise std divided by max_grad_norm (σ).")
@_sample_rate_option
@click.option("--steps", type=int, required=True, help="Number of logical (noisy) steps.")
@_delta_option
@_accountant_option
@_json_option
def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str, as_json: bool) -> None:
    """Print the ε of --steps steps of DP-SGD or LM-DP-SGD (both have the same mechanism)."""
    try:
        value = compute_epsilon(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant
        )
    except ConfigError as error:
        _fail(error)
    result = {
        "epsilon": value,
        "delta": delta,
        "noise_multiplier": noise_multiplier,
        "sample_rate": sample_rate,
        "steps": steps,
        "accountant": accountant,
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"epsilon = {value:.6g} at delta = {delta:g} ({accountant}, noise_multiplier {noise_multiplier:g}, sample_rate {sample_rate:g}, {steps} steps)")


@main.command()
@click.option("--target-epsilon", type=float, required=True, help="The ε to reach at the end of training.")
@_delta_option
@_sample_rate_option
@click.option("--steps", type=int, default=None, help="Number of logical steps (or give --epochs).")
@click.option("--epochs", type=float, default=None, help="Number of epochs; steps = floor(epochs / sample_rate).")
@_accountant_option
@_json_option
def calibrate(
    target_epsilon: float, delta: float, sample_rate: float, steps: int | None, epochs: float | None, accountant: str, as_json: bool
) -> None:
    """Print the smallest noise multiplier whose ε stays at most TARGET-EPSILON."""
    if (steps is None) == (epochs is None):
        raise click.UsageError("give exactly one of --steps and --epochs")
    try:
        if steps is None:
            steps = steps_for_epochs(epochs=epochs, sample_rate=sample_rate) if 0 < sample_rate <= 1 else 0
        calibration = calibrate_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant
        )
    except ConfigError as error:
        _fail(error)
    if as_json:
        click.echo(json.dumps(calibration.to_dict()))
    else:
        click.echo(
            f"noise_multiplier = {calibration.noise_multiplier:.6g} reaches epsilon = {calibration.epsilon:.6g} "
            f"at delta = {delta:g} ({accountant}, sample_rate {sample_rate:g}, {steps} steps)"
        )
