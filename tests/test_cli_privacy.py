"""``lmdp epsilon`` and ``lmdp calibrate`` through the command line."""

import json

import pytest
from click.testing import CliRunner

from lmdp.cli import main

KEYS = {"epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "accountant"}


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_epsilon_json_has_the_documented_keys():
    result = invoke("epsilon", "--noise-multiplier", "1.1", "--sample-rate", str(250 / 60000), "--steps", "480", "--delta", "1e-5", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == KEYS
    assert data["epsilon"] == pytest.approx(0.80, abs=0.005)  # TF Privacy MNIST tutorial value


def test_calibrate_with_epochs_prints_sigma_and_epsilon():
    result = invoke("calibrate", "--target-epsilon", "1", "--delta", "1e-5", "--sample-rate", str(256 / 60000), "--epochs", "10", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == KEYS
    assert data["steps"] == 2343
    assert data["noise_multiplier"] == pytest.approx(1.157, abs=0.002)
    assert 0.99 <= data["epsilon"] <= 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["epsilon", "--noise-multiplier", "1", "--sample-rate", "0", "--steps", "10", "--delta", "1e-5"], "sample_rate must be in (0, 1]"),
        (["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "10", "--delta", "2"], "delta must be in (0, 1)"),
        (["calibrate", "--target-epsilon", "0", "--delta", "1e-5", "--sample-rate", "0.01", "--steps", "10"], "target_epsilon must be"),
        (["calibrate", "--target-epsilon", "0.1", "--delta", "1e-5", "--sample-rate", str(256 / 60000), "--epochs", "10"], "smallest ε"),
        (["calibrate", "--target-epsilon", "1", "--delta", "1e-5", "--sample-rate", "0.01"], "exactly one of --steps and --epochs"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(args, message):
    result = invoke(*args)
    assert result.exit_code != 0
    assert message in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1
