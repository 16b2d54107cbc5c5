"""Phase D: held-out and transfer audits, audit files, and the `lmdp risk` / `lmdp audit` commands."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lmdp.attacks import AttackConfig, TRANSFERABLE_ATTACKS
from lmdp.audit import ShadowSource, audit_model, load_audit, save_audit
from lmdp.cli import main
from lmdp.data import load_dataset, split_shadow
from lmdp.errors import ArtifactError, ConfigError
from lmdp.models import build_layer_map, build_model
from lmdp.risk import RiskConfig, load_risk_profile
from lmdp.training import TrainingConfig, train

FAST = RiskConfig(attack=AttackConfig(n_bootstrap=50, n_permutations=200))


def trained_mlp(data, seed, hidden_sizes=(64,)):
    torch.manual_seed(seed)
    model = build_model("mlp", input_shape=data.input_shape, num_classes=10, hidden_sizes=hidden_sizes)
    x, y = torch.tensor(data.x), torch.tensor(data.y)
    config = TrainingConfig(method="nonprivate", steps=150, sample_rate=0.2, learning_rate=3e-3, optimizer="adam", seed=seed)
    train(model, x, y, config=config, layer_map=build_layer_map(model, model.taps, x[:1]))
    return model


@pytest.fixture(scope="module")
def audited(digits):
    """Target trained on 400 digits; shadow trained on half of 600 disjoint public digits."""
    order = np.random.default_rng(0).permutation(len(digits))
    members = digits.subset(order[:400], name="digits/members")
    non_members = digits.subset(order[400:800], name="digits/non_members")
    public = digits.subset(order[800:1400], name="digits/public")
    shadow_members, shadow_non_members = split_shadow(public, seed=0)
    target = trained_mlp(members, seed=1)
    shadow = ShadowSource(trained_mlp(shadow_members, seed=2), shadow_members, shadow_non_members)
    result = audit_model(target, members, non_members, taps=target.taps, config=FAST, shadow=shadow)
    return result, target


def test_audit_reports_both_settings(audited):
    result, target = audited
    assert result.held_out.setting == "held_out"
    assert result.transfer.setting == "transfer"
    for setting in result.settings:
        assert [layer.name for layer in setting.layers] == list(target.taps)
        assert setting.output.name == "output"
        assert setting.null.n_permutations == 200
        assert setting.peak_layer in target.taps
        peak = max(outcome.metrics.auc for layer in setting.layers for outcome in layer.attacks)
        assert setting.peak_auc == pytest.approx(peak)
        for layer in (*setting.layers, setting.output):
            assert set(layer.metrics.tpr_at_fpr) == {"0.01", "0.001"}
            low, high = layer.metrics.ci["auc"]
            assert low <= layer.auc <= high
    assert result.peak_auc == max(result.held_out.peak_auc, result.transfer.peak_auc)
    assert result.shadow["shared_records"] == 0


def test_held_out_evaluates_the_rest(audited):
    split = audited[0].held_out.split
    # 400 + 400 records: 100 non-members form the reference set, then 300 of each class remain.
    assert split["reference"] == 100
    assert split["train"] == split["calibrate"] == 150
    assert split["members"] == split["non_members"] == 150


def test_transfer_uses_only_transferable_attacks(audited):
    transfer = audited[0].transfer
    for layer in (*transfer.layers, transfer.output):
        assert {outcome.name for outcome in layer.attacks} <= TRANSFERABLE_ATTACKS
    # Every target record is evaluated in the transfer setting.
    assert transfer.split["members"] == transfer.split["non_members"] == 400


def test_untrained_model_shows_no_leakage(digits):
    order = np.random.default_rng(1).permutation(len(digits))
    members = digits.subset(order[:300])
    non_members = digits.subset(order[300:600])
    torch.manual_seed(0)
    model = build_model("cnn", input_shape=digits.input_shape, num_classes=10)
    result = audit_model(model, members, non_members, taps=model.taps, config=FAST)
    held_out = result.held_out
    # Members and non-members are exchangeable, so the peak over 4 taps × 7 attacks
    # is selection noise: above 0.5 on average, inside its null distribution.
    assert held_out.null.quantiles["0.5"] > 0.52
    assert held_out.null.p_value > 0.01
    assert held_out.peak_auc < held_out.null.quantiles["0.99"]


def test_audit_file_round_trip(audited, tmp_path):
    result = audited[0]
    path = save_audit(result, tmp_path / "audit.json")
    assert load_audit(path) == result
    data = json.loads(path.read_text())
    for key in ("peak_auc", "peak_layer", "held_out", "transfer", "target", "shadow", "versions"):
        assert key in data
    assert data["held_out"]["null"]["p_value"] == result.held_out.null.p_value


def test_edited_audit_is_rejected(audited, tmp_path):
    path = save_audit(audited[0], tmp_path / "audit.json")
    data = json.loads(path.read_text())
    data["peak_auc"] = 0.5
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="does not match its checksum"):
        load_audit(path)


def test_mismatched_shadow_is_rejected(digits, audited):
    _, target = audited
    members = digits.subset(np.arange(100))
    other_task = load_dataset("fashion-mnist-builtin").subset(np.arange(100))
    shadow = ShadowSource(target, other_task, other_task)
    with pytest.raises(ConfigError, match="same dataset"):
        audit_model(target, members, digits.subset(np.arange(100, 200)), taps=target.taps, config=FAST, shadow=shadow)


def test_risk_and_audit_commands(digits, tmp_path):
    order = np.random.default_rng(2).permutation(len(digits))
    np.savetxt(tmp_path / "public.txt", order[:600], fmt="%d")
    np.save(tmp_path / "members.npy", order[600:900])
    np.savetxt(tmp_path / "non_members.txt", order[900:1200], fmt="%d", delimiter=",")
    runner = CliRunner()
    common = ["--dataset", "digits", "--model", "mlp", "--n-bootstrap", "20", "--n-permutations", "50", "--no-progress"]

    risk = runner.invoke(main, ["risk", *common, "--indices", str(tmp_path / "public.txt"), "--steps", "100",
                                "--sample-rate", "0.2", "--gamma", "2", "--min-weight", "0.2",
                                "--save-shadow", str(tmp_path / "shadow.pt"), "--out", str(tmp_path / "profile.json")])
    assert risk.exit_code == 0, risk.output
    assert "hidden1" in risk.output
    assert "weight" in risk.output
    assert "Peak AUC" in risk.output
    profile = load_risk_profile(tmp_path / "profile.json")
    assert profile.weighting == {"name": "error_proportional", "gamma": 2.0, "min_weight": 0.2, "beta": 0.5}
    assert all(0.2 <= weight <= 1 for weight in profile.layer_weights.values())

    # The target: the zoo's default MLP trained on the member indices, saved as a plain state_dict.
    target = trained_mlp(digits.subset(order[600:900]), seed=0, hidden_sizes=(256, 128))
    torch.save(target.state_dict(), tmp_path / "target.pt")
    audit = runner.invoke(main, ["audit", *common, "--checkpoint", str(tmp_path / "target.pt"),
                                 "--members", str(tmp_path / "members.npy"),
                                 "--non-members", str(tmp_path / "non_members.txt"),
                                 "--profile", str(tmp_path / "profile.json"),
                                 "--shadow-checkpoint", str(tmp_path / "shadow.pt"),
                                 "--public-indices", str(tmp_path / "public.txt"),
                                 "--out", str(tmp_path / "audit.json")])
    assert audit.exit_code == 0, audit.output
    assert "held_out setting" in audit.output
    assert "transfer setting" in audit.output
    result = load_audit(tmp_path / "audit.json")
    assert result.transfer is not None
    assert result.shadow["shared_records"] == 0


def test_audit_command_rejects_bad_indices(digits, tmp_path):
    torch.save(build_model("mlp", input_shape=digits.input_shape, num_classes=10).state_dict(), tmp_path / "m.pt")
    (tmp_path / "members.txt").write_text("1 2 3 1")
    (tmp_path / "non_members.txt").write_text("5 6 7")
    result = CliRunner().invoke(main, ["audit", "--dataset", "digits", "--model", "mlp", "--checkpoint", str(tmp_path / "m.pt"),
                                       "--members", str(tmp_path / "members.txt"),
                                       "--non-members", str(tmp_path / "non_members.txt")])
    assert result.exit_code != 0
    assert "more than once" in result.output


def test_audit_command_rejects_wrong_model(digits, tmp_path):
    torch.save(build_model("cnn", input_shape=digits.input_shape, num_classes=10).state_dict(), tmp_path / "m.pt")
    np.savetxt(tmp_path / "members.txt", np.arange(50), fmt="%d")
    np.savetxt(tmp_path / "non_members.txt", np.arange(50, 100), fmt="%d")
    result = CliRunner().invoke(main, ["audit", "--dataset", "digits", "--model", "mlp", "--checkpoint", str(tmp_path / "m.pt"),
                                       "--members", str(tmp_path / "members.txt"),
                                       "--non-members", str(tmp_path / "non_members.txt")])
    assert result.exit_code != 0
    assert "does not fit the model" in result.output
