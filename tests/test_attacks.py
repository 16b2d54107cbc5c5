"""Attack statistics, attack fitting, record splits and the permutation null baseline."""

import numpy as np
import pytest

from lmdp.attacks import (
    IR_ATTACKS,
    OUTPUT,
    Assessment,
    AttackConfig,
    LayerAttacks,
    assess_held_out,
    auc,
    split_records,
)
from lmdp.attacks.models import RecordInputs, ThresholdAttack
from lmdp.attacks.statistics import ReferenceStatistics, output_statistics
from lmdp.errors import ConfigError
from lmdp.representations import Representations

FAST = AttackConfig(n_bootstrap=50, n_permutations=200)


def synthetic_layers(n_records=600, seed=0):
    """Members of layer "leak" sit close to their class centre, non-members further out; "noise" is pure noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n_records)
    is_member = rng.permutation(np.arange(n_records) < n_records // 2)
    centres = rng.normal(scale=3.0, size=(5, 16))
    spread = np.where(is_member, 0.6, 1.0)[:, None]
    leak = centres[labels] + rng.normal(size=(n_records, 16)) * spread
    noise = rng.normal(size=(n_records, 24))
    logits = rng.normal(size=(n_records, 5))
    logits[np.arange(n_records), labels] += np.where(is_member, 3.0, 1.5)
    representations = Representations(
        features={"leak": leak.astype(np.float32), "noise": noise.astype(np.float32)},
        outputs=logits.astype(np.float32),
        taps=("leak", "noise"),
    )
    return representations, labels, is_member


def test_output_statistics_hand_oracle():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    labels = np.array([0, 1])
    statistics = output_statistics(logits, labels)
    # Record 0: p(label) = e² / (e² + 2); record 1: p = e / (1 + e + e³).
    p0 = np.exp(2) / (np.exp(2) + 2)
    p1 = np.e / (1 + np.e + np.exp(3))
    np.testing.assert_allclose(statistics["confidence"], [p0, p1])
    np.testing.assert_allclose(statistics["loss"], [-np.log(p0), -np.log(p1)])
    # Margin: label logit minus the largest other logit.
    np.testing.assert_allclose(statistics["margin"], [2.0, -2.0])


def test_output_statistics_reject_bad_labels():
    with pytest.raises(ConfigError, match="labels must be in \\[0, 2\\]"):
        output_statistics(np.zeros((2, 3)), np.array([0, 3]))


def test_reference_statistics_are_class_conditional():
    reference = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    reference_labels = np.array([0, 0, 1, 1])
    statistics = ReferenceStatistics(n_neighbours=1, max_components=8).fit(reference, reference_labels)
    # A record at the class-0 centroid; the same point labelled 1 is far from class 1.
    query = np.array([[1.0, 0.0], [1.0, 0.0]])
    values = statistics.transform(query, np.array([0, 1]))
    assert values["centroid"][0] == pytest.approx(0.0, abs=1e-9)
    assert values["centroid"][1] > 1.0
    assert values["knn"][0] < values["knn"][1]
    assert values["probe"][0] < values["probe"][1]


def test_direction_is_fixed_on_training_part():
    attack = ThresholdAttack("centroid")
    train = RecordInputs(labels=np.zeros(4, int), statistics={"centroid": np.array([1.0, 2.0, 3.0, 4.0])}, embedded=None)
    # Members have the smaller distance, so the score is the negated distance.
    attack.fit(train, np.array([True, True, False, False]))
    assert attack.direction == -1
    # On data where members have the larger distance the AUC drops below 0.5; nothing flips it back.
    evaluation = RecordInputs(labels=np.zeros(4, int), statistics={"centroid": np.array([4.0, 3.0, 1.0, 2.0])}, embedded=None)
    scores = attack.score(evaluation)
    assert auc(scores[:2], scores[2:]) == pytest.approx(0.0)


def test_split_is_disjoint_balanced_and_stratified():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 1000)
    is_member = np.arange(1000) < 550
    split = split_records(labels, is_member, reference_fraction=0.25, fit_fraction=0.5, seed=1)
    parts = [split.reference, split.train, split.calibrate, split.evaluate]
    combined = np.concatenate(parts)
    assert len(np.unique(combined)) == len(combined)
    assert not is_member[split.reference].any()
    for part in (split.train, split.calibrate, split.evaluate):
        assert is_member[part].sum() == (~is_member[part]).sum()
    # Label shares of each part stay within a few points of the pool's.
    pool_share = np.bincount(labels, minlength=4) / len(labels)
    for part in parts:
        share = np.bincount(labels[part], minlength=4) / len(part)
        assert np.abs(share - pool_share).max() < 0.06


def test_split_rejects_too_few_records():
    with pytest.raises(ConfigError, match="too few records"):
        split_records(np.zeros(12, int), np.arange(12) < 6, reference_fraction=0.25, fit_fraction=0.5, seed=0)


def test_leaking_layer_beats_noise_layer():
    representations, labels, is_member = synthetic_layers()
    assessment = assess_held_out(representations, labels, is_member, num_classes=5, config=FAST)
    leak, noise = assessment.layer("leak"), assessment.layer("noise")
    assert leak.auc > 0.8
    assert leak.layer_risk > 0.4
    assert 0.4 < noise.auc < 0.6
    assert leak.layer_risk > noise.layer_risk
    assert leak.p_value == pytest.approx(1 / 201)
    assert assessment.peak_layer == "leak"
    assert assessment.null.p_value == pytest.approx(1 / 201)
    assert assessment.output.name == OUTPUT
    assert assessment.output.auc > 0.7


def test_strongest_attack_is_chosen_on_fitting_data():
    representations, labels, is_member = synthetic_layers()
    assessment = assess_held_out(representations, labels, is_member, num_classes=5, config=FAST)
    for layer in (*assessment.layers, assessment.output):
        fit_aucs = {outcome.name: outcome.fit_auc for outcome in layer.attacks}
        assert layer.attack == max(fit_aucs, key=fit_aucs.get)
        chosen = next(outcome for outcome in layer.attacks if outcome.name == layer.attack)
        assert layer.metrics == chosen.metrics


def test_null_baseline_of_pure_noise():
    # Members and non-members are exchangeable, so the peak is selection noise:
    # the null median is above 0.5 and the observed peak is not significant.
    rng = np.random.default_rng(4)
    n_records = 400
    labels = rng.integers(0, 4, n_records)
    is_member = np.arange(n_records) < n_records // 2
    representations = Representations(
        features={f"layer{i}": rng.normal(size=(n_records, 8)).astype(np.float32) for i in range(3)},
        outputs=rng.normal(size=(n_records, 4)).astype(np.float32),
        taps=("layer0", "layer1", "layer2"),
    )
    assessment = assess_held_out(representations, labels, is_member, num_classes=4, config=FAST)
    null = assessment.null
    assert null.n_permutations == 200
    assert null.quantiles["0.5"] > 0.52
    assert null.quantiles["0.5"] <= null.quantiles["0.95"] <= null.quantiles["0.99"]
    assert null.p_value > 0.01
    assert assessment.peak_auc < null.quantiles["0.99"]


def test_assessment_json_round_trip():
    representations, labels, is_member = synthetic_layers(n_records=300)
    assessment = assess_held_out(representations, labels, is_member, num_classes=5, config=FAST)
    assert Assessment.from_dict(assessment.to_dict()) == assessment
    layer = assessment.to_dict()["layers"][0]
    for key in ("name", "attack", "auc", "balanced_accuracy", "advantage", "tpr_at_fpr", "attack_error", "layer_risk"):
        assert key in layer


def test_every_attack_scores_all_records():
    representations, labels, is_member = synthetic_layers(n_records=300)
    split = split_records(labels, is_member, reference_fraction=0.25, fit_fraction=0.5, seed=0)
    features = representations.features["leak"]
    attacks = LayerAttacks("ir", IR_ATTACKS, num_classes=5).fit(
        (features[split.reference], labels[split.reference]),
        (features[split.train], labels[split.train], is_member[split.train]),
        (features[split.calibrate], labels[split.calibrate], is_member[split.calibrate]),
    )
    scores = attacks.score(features[split.evaluate], labels[split.evaluate])
    assert set(scores) == set(IR_ATTACKS)
    assert all(values.shape == (len(split.evaluate),) and np.isfinite(values).all() for values in scores.values())
    # The transfer copy drops the attacks that read raw IR coordinates.
    rebased = attacks.rebase((features[split.reference], labels[split.reference]))
    assert set(rebased.attacks) == {"centroid", "knn", "probe", "boosted"}


def test_invalid_attack_config():
    with pytest.raises(ConfigError, match="attacks must be a non-empty subset"):
        AttackConfig(attacks=("centroid", "lira"))
    with pytest.raises(ConfigError, match="fit_fraction must be in \\(0, 1\\); got 1.0"):
        AttackConfig(fit_fraction=1.0)
    with pytest.raises(ConfigError, match="n_bootstrap and n_permutations"):
        AttackConfig(n_permutations=-1)
