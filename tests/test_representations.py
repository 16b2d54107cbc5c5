"""IR capture: pooling of every tensor rank, eval mode, batching, projection and output detection."""

import numpy as np
import pytest
import torch
from torch import nn

from lmdp.errors import ConfigError
from lmdp.models import build_model
from lmdp.representations import CaptureConfig, capture_representations, pool_activation


class Shapes(nn.Module):
    """Taps of every rank: conv (4-D), pooled (4-D, 1×1), flattened (2-D), 1-D conv (3-D), 3-D conv (5-D)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.conv1d = nn.Conv1d(1, 2, 3, padding=1)
        self.conv3d = nn.Conv3d(1, 2, 3, padding=1)
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        feature_map = self.conv(x)
        pooled = self.flat(self.pool(feature_map))
        sequence = self.conv1d(x.reshape(x.shape[0], 1, -1))
        volume = self.conv3d(x.reshape(x.shape[0], 1, 2, 4, 8))
        return self.head(pooled) + 0 * sequence.sum() + 0 * volume.sum()


def test_stats_pooling_of_a_conv_map():
    activation = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    pooled = pool_activation(activation, pooling="stats", spatial_grid=2)
    # 3 channels × (mean, max, std) + a 2×2 layout of the channel mean.
    assert pooled.shape == (2, 3 * 3 + 4)
    channels = activation.reshape(2, 3, 16)
    torch.testing.assert_close(pooled[:, 0:3], channels.mean(dim=2))
    torch.testing.assert_close(pooled[:, 3:6], channels.amax(dim=2))
    torch.testing.assert_close(pooled[:, 6:9], channels.std(dim=2, unbiased=False))
    # Top-left 2×2 cell of the channel-mean map of record 0.
    expected_cell = activation[0].mean(dim=0)[:2, :2].mean()
    torch.testing.assert_close(pooled[0, 9], expected_cell)


def test_mean_and_flatten_pooling():
    activation = torch.randn(5, 4, 3, 3)
    assert pool_activation(activation, pooling="mean").shape == (5, 4)
    torch.testing.assert_close(pool_activation(activation, pooling="flatten"), activation.reshape(5, -1))


def test_two_and_one_dimensional_outputs_are_kept():
    torch.testing.assert_close(pool_activation(torch.ones(5, 7)), torch.ones(5, 7))
    assert pool_activation(torch.ones(5)).shape == (5, 1)


def test_capture_every_rank():
    model = Shapes()
    x = torch.randn(10, 1, 8, 8)
    taps = ("conv", "pool", "flat", "conv1d", "conv3d")
    representations = capture_representations(model, x, taps=taps, config=CaptureConfig(batch_size=4))
    widths = {tap: values.shape[1] for tap, values in representations.features.items()}
    assert widths == {
        "conv": 3 * 3 + 4,  # 8×8 map: 2×2 layout
        "pool": 3 * 3 + 1,  # 1×1 map: std 0, one layout cell
        "flat": 3,
        "conv1d": 2 * 3 + 2,  # 64 positions: 2 layout cells
        "conv3d": 2 * 3 + 8,  # 2×4×8 volume: 2×2×2 layout
    }
    assert all(values.shape[0] == 10 for values in representations.features.values())
    assert representations.outputs.shape == (10, 4)
    np.testing.assert_allclose(representations.features["pool"][:, 6:9], 0.0, atol=1e-6)


def test_capture_matches_direct_forward():
    model = Shapes()
    x = torch.randn(6, 1, 8, 8)
    representations = capture_representations(model, x, taps=("flat",))
    with torch.no_grad():
        expected = model.flat(model.pool(model.conv(x))).numpy()
        logits = model(x).numpy()
    np.testing.assert_allclose(representations.features["flat"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(representations.outputs, logits, rtol=1e-5, atol=1e-6)


def test_capture_runs_in_eval_mode_and_restores_flags():
    model = nn.Sequential(nn.Linear(5, 50), nn.Dropout(0.5), nn.Linear(50, 3))
    model.train()
    model[2].eval()  # a mixed state must come back unchanged
    x = torch.randn(20, 5)
    first = capture_representations(model, x, taps=("1",))
    second = capture_representations(model, x, taps=("1",))
    # Dropout off: two captures agree, and the dropout output equals its input.
    np.testing.assert_array_equal(first.features["1"], second.features["1"])
    with torch.no_grad():
        np.testing.assert_allclose(first.features["1"], model[0](x).numpy(), rtol=1e-6)
    assert model.training
    assert model[0].training
    assert model[1].training
    assert not model[2].training


def test_capture_keeps_no_gradients():
    model = build_model("mlp", input_shape=(1, 4, 4), num_classes=3)
    capture_representations(model, torch.randn(8, 1, 4, 4), taps=model.taps)
    assert all(parameter.grad is None for parameter in model.parameters())


def test_batch_size_does_not_change_features():
    model = build_model("cnn", input_shape=(1, 8, 8), num_classes=10)
    x = np.random.default_rng(0).random((23, 1, 8, 8), dtype=np.float32)
    small = capture_representations(model, x, taps=model.taps, config=CaptureConfig(batch_size=5))
    large = capture_representations(model, x, taps=model.taps, config=CaptureConfig(batch_size=64))
    for tap in model.taps:
        np.testing.assert_allclose(small.features[tap], large.features[tap], rtol=1e-5, atol=1e-6)


def test_read_only_numpy_inputs_are_accepted():
    model = build_model("mlp", input_shape=(4,), num_classes=2)
    x = np.zeros((3, 4), dtype=np.float32)
    x.flags.writeable = False
    assert capture_representations(model, x, taps=model.taps).outputs.shape == (3, 2)


def test_wide_layers_are_projected_consistently():
    model = nn.Sequential(nn.Linear(4, 300), nn.ReLU(), nn.Linear(300, 2))
    x = torch.randn(40, 4)
    config = CaptureConfig(projection_dim=64, seed=3)
    first = capture_representations(model, x, taps=("1",), config=config)
    second = capture_representations(model, x[:20], taps=("1",), config=config)
    assert first.features["1"].shape == (40, 64)
    np.testing.assert_allclose(first.features["1"][:20], second.features["1"], rtol=1e-5, atol=1e-6)
    # A Gaussian projection keeps pairwise distances up to a modest factor.
    with torch.no_grad():
        full = torch.relu(model[0](x)).numpy()
    ratio = np.linalg.norm(first.features["1"][0] - first.features["1"][1]) / np.linalg.norm(full[0] - full[1])
    assert 0.6 < ratio < 1.4
    unprojected = capture_representations(model, x, taps=("1",), config=CaptureConfig(projection_dim=None))
    assert unprojected.features["1"].shape == (40, 300)


def test_capture_survives_inplace_relu():
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    x = torch.randn(30, 3)
    representations = capture_representations(model, x, taps=("0",))
    with torch.no_grad():
        before_relu = model[0](x).numpy()
    assert (before_relu < 0).any()
    np.testing.assert_allclose(representations.features["0"], before_relu, rtol=1e-5, atol=1e-6)


def test_output_tap_is_detected():
    cnn = build_model("cnn", input_shape=(1, 8, 8), num_classes=10)
    x = torch.randn(4, 1, 8, 8)
    assert capture_representations(cnn, x, taps=cnn.taps).output_tap == "logits"
    assert capture_representations(cnn, x, taps=("block1", "fc")).output_tap is None


def test_tuple_output_uses_first_tensor():
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(3, 5, batch_first=True)
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            sequence, _ = self.lstm(x)
            return self.head(sequence[:, -1])

    representations = capture_representations(Recurrent(), torch.randn(4, 7, 3), taps=("lstm",))
    # (batch, time=7, hidden=5): 7 "channels" × 3 statistics + a 2-cell layout over the hidden axis.
    assert representations.features["lstm"].shape == (4, 7 * 3 + 2)


@pytest.mark.parametrize("name, input_shape", [("mlp", (1, 8, 8)), ("cnn", (1, 28, 28)), ("resnet", (3, 32, 32))])
def test_zoo_models_capture_all_taps(name, input_shape):
    model = build_model(name, input_shape=input_shape, num_classes=10)
    representations = capture_representations(model, torch.randn(3, *input_shape), taps=model.taps)
    assert tuple(representations.features) == model.taps
    assert representations.output_tap == "logits"
    assert all(np.isfinite(values).all() for values in representations.features.values())


def test_unknown_tap_lists_modules():
    model = build_model("mlp", input_shape=(4,), num_classes=2)
    with pytest.raises(ConfigError, match="unknown taps \\['nope'\\].*hidden1"):
        capture_representations(model, torch.randn(2, 4), taps=("nope",))


def test_invalid_capture_config():
    with pytest.raises(ConfigError, match="pooling"):
        CaptureConfig(pooling="median")
    with pytest.raises(ConfigError, match="projection_dim"):
        CaptureConfig(projection_dim=0)
    with pytest.raises(ConfigError, match="batch_size"):
        CaptureConfig(batch_size=0)
