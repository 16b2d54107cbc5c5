"""The training loop: methods, Poisson sampling, physical batches, resume, bad input."""

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from lmdp.errors import ArtifactError, ConfigError, NonFiniteLossError, PrivacyWarning, UnsupportedModuleError
from lmdp.models import build_layer_map, build_model
from lmdp.privacy import compute_epsilon
from lmdp.training import TrainingConfig, evaluate_accuracy, train


def small_problem(n=60, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=generator)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    model = build_model("cnn", input_shape=(1, 8, 8), num_classes=2)
    return model, x, y, build_layer_map(model, model.taps, x[:2])


def test_dpsgd_and_lmdpsgd_share_batches_and_noise():
    torch.manual_seed(0)
    model, x, y, layer_map = small_problem()
    twin = build_model("cnn", input_shape=(1, 8, 8), num_classes=2)
    twin.load_state_dict(model.state_dict())
    base = dict(steps=5, sample_rate=0.2, noise_multiplier=1.0, seed=7)
    uniform = {tap: 1.0 for tap in layer_map.taps}
    first = train(model, x, y, config=TrainingConfig(method="dpsgd", **base), layer_map=layer_map)
    second = train(twin, x, y, config=TrainingConfig(method="lmdpsgd", layer_weights=uniform, **base), layer_map=layer_map)
    assert first.loss_history == second.loss_history
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_empty_batches_still_step_and_add_noise():
    # N = 60, q = 0.01: P(empty) = 0.99^60 ≈ 0.55, so about half the steps are empty.
    for max_physical_batch_size in (1, 256):
        torch.manual_seed(0)
        model, x, y, layer_map = small_problem()
        before = [p.detach().clone() for p in model.parameters()]
        config = TrainingConfig(method="dpsgd", steps=200, sample_rate=0.01, noise_multiplier=1.0,
                                max_physical_batch_size=max_physical_batch_size, learning_rate=0.01)
        changes = []
        result = train(model, x, y, config=config, layer_map=layer_map, delta=1e-5,
                       on_step=lambda step, m: changes.append(step))
        assert result.empty_batches > 80
        assert sum(n for _, _, n in result.accountant_history) == 200 == len(changes)
        assert result.epsilon == pytest.approx(compute_epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=200, delta=1e-5))
        assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_physical_batches_do_not_change_the_step():
    results = []
    for max_physical_batch_size in (3, 1000):
        torch.manual_seed(0)
        model, x, y, layer_map = small_problem()
        config = TrainingConfig(method="dpsgd", steps=3, sample_rate=0.3, noise_multiplier=0.5,
                                max_physical_batch_size=max_physical_batch_size)
        train(model, x, y, config=config, layer_map=layer_map)
        results.append([p.detach().clone() for p in model.parameters()])
    for p, q in zip(*results):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_nonprivate_training_learns_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = build_model("cnn", input_shape=(1, 8, 8), num_classes=10)
    layer_map = build_layer_map(model, model.taps, x[:2])
    config = TrainingConfig(method="nonprivate", steps=150, sample_rate=0.05, learning_rate=0.05)
    train(model, x[:1400], y[:1400], config=config, layer_map=layer_map)
    assert evaluate_accuracy(model, x[1400:], y[1400:]) > 0.85


def test_nan_loss_stops_with_step_and_keeps_parameters():
    torch.manual_seed(0)
    model, x, y, layer_map = small_problem()
    x = x.clone()
    x[5] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    config = TrainingConfig(method="dpsgd", steps=3, sample_rate=1.0, noise_multiplier=1.0)
    with pytest.raises(NonFiniteLossError, match="step 1"):
        train(model, x, y, config=config, layer_map=layer_map)
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p)


def test_delta_above_one_over_n_warns():
    model, x, y, layer_map = small_problem()
    config = TrainingConfig(method="dpsgd", steps=1, sample_rate=0.1, noise_multiplier=1.0)
    with pytest.warns(PrivacyWarning, match="1/N"):
        train(model, x, y, config=config, layer_map=layer_map, delta=0.05)


def test_batchnorm_is_rejected_with_module_name():
    model = nn.Sequential(nn.Conv2d(3, 18, 3), nn.BatchNorm2d(18), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(18 * 6 * 6, 2))
    x = torch.randn(4, 3, 8, 8)
    layer_map = build_layer_map(model, ("0", "4"), x[:2])
    with pytest.raises(UnsupportedModuleError, match="module '1' is BatchNorm2d.*GroupNorm"):
        train(model, x, torch.zeros(4, dtype=torch.long),
              config=TrainingConfig(method="dpsgd", steps=1, sample_rate=0.5, noise_multiplier=1.0), layer_map=layer_map)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_grad_norm=0.0), "max_grad_norm must be > 0"),
        (dict(max_grad_norm=-1.0), "max_grad_norm must be > 0"),
        (dict(noise_multiplier=-0.5), "noise_multiplier must be a finite number ≥ 0; got -0.5"),
        (dict(sample_rate=0.0), "sample_rate must be in \\(0, 1\\]; got 0.0"),
        (dict(sample_rate=1.2), "sample_rate must be in \\(0, 1\\]; got 1.2"),
        (dict(method="dp"), "method must be one of"),
        (dict(method="lmdpsgd"), "needs layer_weights"),
        (dict(steps=-3), "steps must be an integer ≥ 0"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    arguments = dict(method="dpsgd", steps=1, sample_rate=0.1)
    arguments.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        TrainingConfig(**arguments)


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"block1": 1.5, "block2": 1, "fc": 1, "logits": 1}, "must be in \\(0, 1\\].*got 1.5"),
        ({"block1": 0.0, "block2": 1, "fc": 1, "logits": 1}, "must be in \\(0, 1\\].*got 0.0"),
        ({"block1": 1, "block2": 1, "fc": 1}, "missing weights for taps \\['logits'\\]"),
        ({"block1": 1, "block2": 1, "fc": 1, "logits": 1, "conv9": 1}, "unknown layer names \\['conv9'\\]"),
    ],
)
def test_bad_layer_weights_are_rejected(weights, message):
    model, x, y, layer_map = small_problem()
    config = TrainingConfig(method="lmdpsgd", steps=1, sample_rate=0.1, noise_multiplier=1.0, layer_weights=weights)
    with pytest.raises(ConfigError, match=message):
        train(model, x, y, config=config, layer_map=layer_map)


RESUME_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from lmdp.models import build_layer_map, build_model
    from lmdp.training import TrainingConfig, train
    steps, checkpoint, resume = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(80, 1, 8, 8, generator=generator)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=2, hidden_sizes=(16,))
    layer_map = build_layer_map(model, model.taps, x[:2])
    config = TrainingConfig(method="lmdpsgd", steps=steps, sample_rate=0.1, noise_multiplier=0.9, seed=3,
                            layer_weights={"hidden1": 0.5, "logits": 1.0})
    result = train(model, x, y, config=config, layer_map=layer_map, delta=1e-5, checkpoint_path=checkpoint,
                   resume_from=checkpoint if resume else None)
    print(json.dumps({"epsilon": result.epsilon, "weight_sum": float(sum(p.sum() for p in model.parameters()))}))
    """
)


def run_resume_script(tmp_path, steps, checkpoint, resume):
    script = tmp_path / "resume_run.py"
    script.write_text(RESUME_SCRIPT)
    output = subprocess.run([sys.executable, str(script), str(steps), str(checkpoint), "1" if resume else "0"],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def test_resume_in_new_process_reports_uninterrupted_epsilon(tmp_path):
    uninterrupted = run_resume_script(tmp_path, 400, tmp_path / "full.pt", resume=False)
    run_resume_script(tmp_path, 200, tmp_path / "part.pt", resume=False)
    resumed = run_resume_script(tmp_path, 400, tmp_path / "part.pt", resume=True)
    assert resumed["epsilon"] == pytest.approx(uninterrupted["epsilon"], rel=1e-12)
    assert resumed["epsilon"] == pytest.approx(compute_epsilon(noise_multiplier=0.9, sample_rate=0.1, steps=400, delta=1e-5))
    assert resumed["weight_sum"] == pytest.approx(uninterrupted["weight_sum"], rel=1e-5)


def test_resume_without_privacy_account_is_refused(tmp_path):
    model, x, y, layer_map = small_problem()
    checkpoint = tmp_path / "nonprivate.pt"
    train(model, x, y, config=TrainingConfig(method="nonprivate", steps=2, sample_rate=0.1), layer_map=layer_map,
          checkpoint_path=checkpoint)
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["method"] = "dpsgd"
    state["config"]["noise_multiplier"] = 1.0
    torch.save(state, checkpoint)
    config = TrainingConfig(method="dpsgd", steps=4, sample_rate=0.1, noise_multiplier=1.0)
    with pytest.raises(ArtifactError, match="no privacy account"):
        train(model, x, y, config=config, layer_map=layer_map, resume_from=checkpoint)


def test_truncated_checkpoint_is_rejected(tmp_path):
    model, x, y, layer_map = small_problem()
    checkpoint = tmp_path / "run.pt"
    config = TrainingConfig(method="dpsgd", steps=2, sample_rate=0.1, noise_multiplier=1.0)
    train(model, x, y, config=config, layer_map=layer_map, checkpoint_path=checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="truncated or not a checkpoint"):
        train(model, x, y, config=config, layer_map=layer_map, resume_from=checkpoint)


def test_unbounded_clip_with_noise_is_rejected():
    model, x, y, layer_map = small_problem()
    config = TrainingConfig(method="dpsgd", steps=1, sample_rate=0.1, noise_multiplier=1.0, max_grad_norm=math.inf)
    with pytest.raises(ConfigError, match="unbounded sensitivity"):
        train(model, x, y, config=config, layer_map=layer_map)
