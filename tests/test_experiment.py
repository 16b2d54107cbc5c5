"""The main job end to end on real digits data, config validation, and resume."""

import json
import textwrap

import pytest
import yaml
from click.testing import CliRunner

from lmdp.cli import main
from lmdp.config import ExperimentConfig, config_from_dict, load_config
from lmdp.errors import ConfigError

TINY = {
    "dataset": {"name": "digits"},
    "model": {"name": "cnn"},
    "splits": {"n_public": 300, "n_members": 150, "n_non_members": 150, "n_test": 200},
    "methods": ["nonprivate", "dpsgd", "lmdpsgd"],
    "target_epsilons": [50, 1000],
    "seeds": [0, 1],
    "training": {"steps": 60, "sample_rate": 0.1, "learning_rate": 0.1},
    "audit": {"n_bootstrap": 20, "n_permutations": 20, "checkpoints": [0.5], "transfer": True},
}


def write_config(tmp_path, data):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_run_end_to_end_on_digits(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(tmp_path, TINY)), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "report.md" in result.output

    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").read_text().startswith("# lmdp experiment report")
    assert (out / "per_layer_auc.png").stat().st_size > 1000
    assert (out / "privacy_utility.png").stat().st_size > 1000

    runs = report["runs"]
    assert len(runs) == 2 * (1 + 2 * 2)  # seeds × (nonprivate + 2 methods × 2 ε)
    for run in runs:
        for key in ("method", "seed", "target_epsilon", "epsilon", "delta", "noise_multiplier", "sample_rate", "steps",
                    "test_accuracy", "layers", "peak_auc", "peak_layer"):
            assert key in run
        assert [layer["name"] for layer in run["layers"]] == ["block1", "block2", "fc", "logits", "output"]
        for layer in run["layers"]:
            assert 0 <= layer["auc"] <= 1
            assert set(layer) >= {"name", "auc", "balanced_accuracy", "advantage", "tpr_at_fpr"}
        assert len(run["trajectory"]) == 2  # the checkpoint at half the steps and the end

    for target in (50, 1000):
        pair = [r for r in runs if r["target_epsilon"] == target]
        assert len({r["epsilon"] for r in pair}) == 1  # dpsgd and lmdpsgd: equal ε by construction
        assert len({r["noise_multiplier"] for r in pair}) == 1
        assert all(r["epsilon"] <= target for r in pair)

    profile = report["risk_profile"]
    assert set(profile["attack_error"]) == {"block1", "block2", "fc", "logits"}
    for seed_profile in profile["by_seed"].values():
        assert all(0 < w <= 1 for w in seed_profile["layer_weights"].values())
    for run in runs:
        if run["method"] == "lmdpsgd":
            assert run["layer_weights"] == report["risk_profile"]["by_seed"][str(run["seed"])]["layer_weights"]

    checks = report["checks"]
    assert checks["equal_epsilon_for_dpsgd_and_lmdpsgd"]
    assert checks["layer_weights_in_unit_interval"]
    assert checks["aucs_in_unit_interval"]
    assert checks["nonprivate_has_highest_peak_auc"] or "note" in checks
    for entry in report["comparison"]:
        assert entry["paired_difference"]["peak_auc"]["n"] == 2
        assert entry["paired_difference"]["peak_auc"]["ci"] is not None
        assert entry["meaningful_privacy"] is False  # ε of 50 and 1,000 give no meaningful guarantee

    # Rerunning the same config reuses every finished run instead of training again.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    again = CliRunner().invoke(main, ["run", "--config", str(write_config(tmp_path, TINY)), "--out", str(out), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}


def test_different_config_does_not_overwrite_results(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"fingerprint": "0123456789abcdef", "config": {}}))
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(tmp_path, TINY)), "--out", str(out)])
    assert result.exit_code != 0
    assert "different experiment" in result.output
    assert "--overwrite" in result.output
    assert json.loads((out / "config.json").read_text())["fingerprint"] == "0123456789abcdef"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"target_epsilons": [0]}, "target_epsilons must be finite numbers > 0"),
        ({"delta": 2}, "delta must be in \\(0, 1\\); got 2"),
        ({"training": {"sample_rate": 1.5}}, "training.sample_rate must be in \\(0, 1\\]; got 1.5"),
        ({"training": {"steps": -1}}, "training.steps must be an integer"),
        ({"splits": {"n_members": -5}}, "splits.n_members must be an integer"),
        ({"methods": ["dpsgd", "sgd"]}, "methods must be distinct names"),
        ({"weighting": {"min_weight": 0}}, "weighting.min_weight must be in \\(0, 1\\]"),
        ({"training": {"learnng_rate": 0.1}}, "unknown fields \\['learnng_rate'\\]"),
        ({"epsilon": 3}, "unknown fields \\['epsilon'\\]"),
    ],
)
def test_config_errors_name_field_and_value(change, message):
    data = {key: (dict(value) if isinstance(value, dict) else value) for key, value in TINY.items()}
    for key, value in change.items():
        if isinstance(value, dict) and key in data:
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_several_config_errors_are_reported_together():
    with pytest.raises(ConfigError) as raised:
        config_from_dict({"delta": 5, "training": {"max_grad_norm": 0}})
    assert "delta" in str(raised.value)
    assert "training.max_grad_norm" in str(raised.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dataset": {"name": "imagenet"}}, "imagenet"),
        ({"model": {"name": "cnn", "taps": ["block1", "nonexistent"]}}, "unknown taps \\['nonexistent'\\]"),
        ({"model": {"name": "transformer"}}, "unknown model 'transformer'"),
        ({"splits": {"n_public": 1500, "n_members": 150, "n_non_members": 150, "n_test": 200}}, "has 1,797"),
    ],
)
def test_bad_setup_fails_before_training(tmp_path, change, message):
    data = {**TINY, **change}
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(tmp_path, data)), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert message.replace("\\", "") in result.output or pytest.fail(result.output)
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs").iterdir())


def test_user_model_from_module_factory(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent(
        """
        from torch import nn

        def make(input_shape, num_classes, width=8):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))
        """
    ))
    monkeypatch.syspath_prepend(str(tmp_path))
    from lmdp.experiment import build_experiment_model

    config = config_from_dict({"dataset": {"name": "digits"}, "model": {"name": "my_models:make", "taps": ["2", "3"], "options": {"width": 4}}})
    model, taps = build_experiment_model(config, input_shape=(1, 8, 8), num_classes=10)
    assert taps == ("2", "3")
    assert model[1].out_features == 4


def test_quick_config_is_reduced():
    quick, default = load_config(None, quick=True), ExperimentConfig()
    assert quick.training.steps < default.training.steps
    assert quick.splits.n_members < default.splits.n_members
    assert quick.methods == default.methods


@pytest.mark.slow
def test_interrupted_run_resumes_from_checkpoint(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    data = {**TINY, "seeds": [0], "target_epsilons": [1000], "training": {"steps": 400, "sample_rate": 0.1},
            "audit": {"n_bootstrap": 10, "n_permutations": 10, "checkpoints": [0.5], "transfer": False}}
    config, out = write_config(tmp_path, data), tmp_path / "out"
    command = [sys.executable, "-m", "lmdp.cli", "run", "--config", str(config), "--out", str(out), "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((out / "runs").glob("*.checkpoint.pt")):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    checkpoints = list((out / "runs").glob("*.checkpoint.pt"))
    assert checkpoints, "the interrupted run left no checkpoint"
    for finished in (out / "runs").glob("*.json"):
        json.loads(finished.read_text())  # every file left behind is complete

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((out / "report.json").read_text())
    assert len(report["runs"]) == 3
    assert not list((out / "runs").glob("*.checkpoint.pt"))
    for run in report["runs"]:
        assert [point["step"] for point in run["trajectory"]] == [200, 400]


def test_quick_keeps_fields_the_config_sets(tmp_path):
    path = write_config(tmp_path, {"dataset": {"name": "digits"}, "seeds": [3], "splits": {"n_public": 100}})
    config = load_config(path, quick=True)
    assert config.seeds == (3,)
    assert config.splits.n_public == 100
    assert config.splits.n_members == 200  # from the quick settings
    assert config.training.steps == 150


def test_user_model_module_in_working_folder(tmp_path, monkeypatch):
    (tmp_path / "folder_models.py").write_text(
        "from torch import nn\n\ndef make(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    from lmdp.models import build_model

    model = build_model("folder_models:make", input_shape=(1, 8, 8), num_classes=10)
    assert model[1].in_features == 64


def test_user_model_with_wrong_shape_fails_clearly(tmp_path, monkeypatch):
    (tmp_path / "bad_models.py").write_text(
        "from torch import nn\n\ndef make(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    data = {**TINY, "model": {"name": "bad_models:make", "taps": ["1"]}}
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(tmp_path, data)), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "failed on inputs of shape (1, 8, 8)" in result.output
