"""``lmdp privacy-audit``: an empirical lower bound on ε from gradient canaries, checked against the accountant."""

from __future__ import annotations

import json
import sys

import click

from lmdp.cli import main
from lmdp.errors import ConfigError
from lmdp.io import atomic_write_json
from lmdp.privacy.accounting import ACCOUNTANTS
from lmdp.privacy.empirical_audit import (
    DEFAULT_CANARIES_PER_STEP,
    DEFAULT_TRIALS,
    MAX_CANARIES_PER_STEP,
    PrivacyAuditConfig,
    run_privacy_audit,
)

EXIT_CLAIM_EXCEEDED = 3
"""Exit status when the lower bound exceeds the accountant's ε; click already uses 1 for errors and 2 for usage."""


def _parse_weights(context: click.Context, parameter: click.Parameter, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers such as 1,1,0.5,0.25; got {text!r}") from None


@main.command("privacy-audit")
@click.option("--noise-multiplier", type=float, required=True, help="Noise multiplier σ given to the accountant: the claim under test.")
@click.option("--max-grad-norm", type=float, default=1.0, show_default=True, help="Clip norm C.")
@click.option("--layer-weights", default="1", show_default=True, callback=_parse_weights,
              help="Comma-separated layer weights in (0, 1], one per layer of the canary model, e.g. 1,1,0.5,0.25.")
@click.option("--delta", type=float, default=1e-5, show_default=True, help="δ of the claimed and the measured ε.")
@click.option("--accountant", type=click.Choice(ACCOUNTANTS), default="rdp", show_default=True,
              help="Accountant whose ε for one step at sample rate 1 is the claim under test.")
@click.option("--trials", type=int, default=DEFAULT_TRIALS, show_default=True,
              help="Canary trials; half choose the threshold, half give the bound.")
@click.option("--canaries-per-step", type=int, default=DEFAULT_CANARIES_PER_STEP, show_default=True,
              help=f"Canaries audited by one optimizer step, half of them members (at most {MAX_CANARIES_PER_STEP}).")
@click.option("--confidence", type=float, default=0.95, show_default=True,
              help="Probability with which the lower bound holds (Clopper–Pearson).")
@click.option("--noise-scale", type=float, default=1.0, show_default=True,
              help="Multiply the optimizer's noise by this factor while the accountant keeps the original σ; "
                   "values below 1 simulate a broken mechanism to show that the audit detects it.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the memberships and the noise.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the result with its config and versions to this JSON file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def privacy_audit(
    noise_multiplier: float, max_grad_norm: float, layer_weights: tuple[float, ...], delta: float, accountant: str, trials: int,
    canaries_per_step: int, confidence: float, noise_scale: float, seed: int, out_path: str | None, as_json: bool,
) -> None:
    """Measure a lower bound on ε of one LM-DP-SGD step with white-box gradient canaries.

    Exits with status 3 when the bound exceeds the accountant's ε, that is,
    when the mechanism is measurably less private than claimed.
    """
    try:
        config = PrivacyAuditConfig(
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            layer_weights=layer_weights,
            delta=delta,
            accountant=accountant,
            trials=trials,
            canaries_per_step=canaries_per_step,
            confidence=confidence,
            noise_scale=noise_scale,
            seed=seed,
        )
        result = run_privacy_audit(config)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None

    if out_path is not None:
        atomic_write_json(out_path, result.to_dict())
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        verdict = "EXCEEDS the claim" if result.exceeds_claim else "is consistent with the claim"
        click.echo(
            f"empirical epsilon >= {result.epsilon_lower_bound:.4g} at {result.confidence:.0%} confidence "
            f"(delta = {result.delta:g}, {result.members} member / {result.non_members} non-member trials); "
            f"the {result.accountant} accountant claims epsilon = {result.epsilon:.4g}: the bound {verdict}"
        )
        click.echo(
            f"threshold {result.threshold:.4g}: TPR {result.tpr:.4g} (lower {result.tpr_lower:.4g}), "
            f"FPR {result.fpr:.4g} (upper {result.fpr_upper:.4g}); measured noise multiplier "
            f"{result.estimated_noise_multiplier:.4g}, noise_multiplier given to the accountant {noise_multiplier:g}"
        )
    if result.exceeds_claim:
        sys.exit(EXIT_CLAIM_EXCEEDED)
