"""Metric oracles computed by hand, and agreement between the scalar and bootstrap code paths."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from lmdp.attacks.metrics import (
    AttackMetrics,
    _metrics_per_row,
    advantage,
    attack_error,
    auc,
    balanced_accuracy,
    best_threshold,
    compute_metrics,
    roc_curve_exact,
    tpr_at_fpr,
)
from lmdp.errors import ConfigError

# Higher score = more likely a member.
MEMBERS = [0.9, 0.8, 0.7, 0.1]
NON_MEMBERS = [0.6, 0.5, 0.4, 0.3]


def test_auc_hand_oracle():
    # 0.9, 0.8 and 0.7 beat all 4 non-members, 0.1 beats none: 12 of 16 pairs.
    assert auc(MEMBERS, NON_MEMBERS) == pytest.approx(0.75)


def test_advantage_hand_oracle():
    # Threshold 0.7: TPR 3/4, FPR 0/4, so TPR − FPR = 0.75; no threshold does better.
    assert advantage(MEMBERS, NON_MEMBERS) == pytest.approx(0.75)


def test_tpr_at_zero_fpr_hand_oracle():
    # The three members above 0.6 are caught before the first non-member.
    assert tpr_at_fpr(MEMBERS, NON_MEMBERS, 0.0) == pytest.approx(0.75)


def test_swapped_classes_change_low_fpr_tpr():
    # With the sides swapped the top three scores (0.9, 0.8, 0.7) are non-members,
    # so any threshold that catches a member has FPR >= 3/4: TPR at FPR 0 is 0.
    assert auc(NON_MEMBERS, MEMBERS) == pytest.approx(0.25)
    assert tpr_at_fpr(NON_MEMBERS, MEMBERS, 0.0) == 0.0
    assert tpr_at_fpr(NON_MEMBERS, MEMBERS, 0.0) != tpr_at_fpr(MEMBERS, NON_MEMBERS, 0.0)


def test_always_member_balanced_accuracy_is_half():
    # TPR 1 and TNR 0 give 0.5, whereas plain accuracy would be 1000/1100 = 0.91.
    members, non_members = np.ones(1000), np.ones(100)
    assert balanced_accuracy(members, non_members, threshold=0.5) == pytest.approx(0.5)
    assert attack_error(members, non_members, threshold=0.5) == pytest.approx(0.5)


def test_auc_counts_ties_half():
    assert auc([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.5)
    # Pairs: 1 > 0.5, 1 > 0, 0.5 = 0.5 (half), 0.5 > 0: 3.5 of 4.
    assert auc([1.0, 0.5], [0.5, 0.0]) == pytest.approx(0.875)


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    members = rng.integers(0, 5, size=300).astype(float)
    non_members = rng.integers(0, 4, size=200).astype(float)
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[members, non_members])
    assert auc(members, non_members) == pytest.approx(expected)


def test_roc_keeps_tied_scores_together():
    fpr, tpr, thresholds = roc_curve_exact([1.0, 1.0], [1.0, 0.0])
    # One step for the three records tied at 1.0, none that splits them.
    assert fpr.tolist() == [0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 1.0, 1.0]
    assert thresholds.tolist() == [np.inf, 1.0, 0.0]


def test_tpr_at_low_fpr_from_exact_roc():
    non_members = np.arange(1000.0)
    # 10 members above every non-member, 40 above all but one (FPR 1/1000),
    # 50 above all but ten (FPR 10/1000).
    members = np.r_[np.full(10, 1e4), np.full(40, 998.5), np.full(50, 989.5)]
    assert tpr_at_fpr(members, non_members, 0.0) == pytest.approx(0.10)
    assert tpr_at_fpr(members, non_members, 0.001) == pytest.approx(0.50)
    assert tpr_at_fpr(members, non_members, 0.009) == pytest.approx(0.50)
    assert tpr_at_fpr(members, non_members, 0.01) == pytest.approx(1.0)


def test_best_threshold_sits_between_scores():
    # Between 0.7 (the last member before any non-member) and 0.6.
    threshold = best_threshold(MEMBERS, NON_MEMBERS)
    assert threshold == pytest.approx(0.65)
    assert balanced_accuracy(MEMBERS, NON_MEMBERS, threshold) == pytest.approx(0.875)


def test_compute_metrics_values():
    metrics = compute_metrics(MEMBERS, NON_MEMBERS, threshold=0.65, n_bootstrap=0)
    assert metrics.auc == pytest.approx(0.75)
    assert metrics.advantage == pytest.approx(0.75)
    assert metrics.balanced_accuracy == pytest.approx(0.875)
    assert metrics.attack_error == pytest.approx(0.125)
    assert metrics.tpr_at_fpr == {"0.01": pytest.approx(0.75), "0.001": pytest.approx(0.75)}
    assert metrics.members == 4
    assert metrics.non_members == 4
    assert metrics.ci == {}


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(1)
    members, non_members = rng.normal(0.3, 1, 200), rng.normal(0, 1, 200)
    first = compute_metrics(members, non_members, threshold=0.1, n_bootstrap=100, seed=5)
    second = compute_metrics(members, non_members, threshold=0.1, n_bootstrap=100, seed=5)
    other = compute_metrics(members, non_members, threshold=0.1, n_bootstrap=100, seed=6)
    assert first == second
    assert first.ci["auc"] != other.ci["auc"]


def test_bootstrap_intervals_contain_estimates():
    rng = np.random.default_rng(2)
    members, non_members = rng.normal(0.5, 1, 300), rng.normal(0, 1, 300)
    metrics = compute_metrics(members, non_members, threshold=0.25, n_bootstrap=200, seed=0)
    for name in ("auc", "balanced_accuracy", "attack_error", "advantage"):
        low, high = metrics.ci[name]
        assert low <= getattr(metrics, name) <= high, name
        assert high - low < 0.2, name
    for key, (low, high) in metrics.ci["tpr_at_fpr"].items():
        assert 0.0 <= low <= high <= 1.0, key


def test_bootstrap_resamples_each_class_separately():
    # 1,000 members and 10 non-members: every resample keeps both counts, so an
    # "always member" attack has balanced accuracy exactly 0.5 in every resample,
    # and perfectly separated scores keep AUC 1.
    always = compute_metrics(np.ones(1000), np.ones(10), threshold=0.5, n_bootstrap=100)
    assert always.ci["balanced_accuracy"] == (0.5, 0.5)
    separated = compute_metrics(np.ones(1000), np.zeros(10), threshold=0.5, n_bootstrap=100)
    assert separated.ci["auc"] == (1.0, 1.0)


def test_vectorised_metrics_match_scalar_functions():
    rng = np.random.default_rng(3)
    members = rng.integers(0, 20, size=(5, 50)).astype(float)
    non_members = rng.integers(0, 18, size=(5, 40)).astype(float)
    rows = _metrics_per_row(members, non_members, 9.5, (0.01, 0.05, 0.2))
    for i in range(5):
        assert rows["auc"][i] == pytest.approx(auc(members[i], non_members[i]))
        assert rows["advantage"][i] == pytest.approx(advantage(members[i], non_members[i]))
        assert rows["balanced_accuracy"][i] == pytest.approx(balanced_accuracy(members[i], non_members[i], 9.5))
        for target in (0.01, 0.05, 0.2):
            assert rows["tpr_at_fpr"][target][i] == pytest.approx(tpr_at_fpr(members[i], non_members[i], target))


def test_metrics_json_round_trip():
    metrics = compute_metrics(MEMBERS, NON_MEMBERS, threshold=float("inf"), n_bootstrap=20)
    data = metrics.to_dict()
    assert data["threshold"] == "inf"
    assert AttackMetrics.from_dict(data) == metrics


@pytest.mark.parametrize(
    "members, non_members",
    [([], [0.1]), ([0.1], []), ([float("nan")], [0.1]), ([[0.1, 0.2]], [0.1])],
)
def test_invalid_scores_are_rejected(members, non_members):
    with pytest.raises(ConfigError):
        auc(members, non_members)


def test_invalid_bootstrap_settings_are_rejected():
    with pytest.raises(ConfigError, match="n_bootstrap"):
        compute_metrics(MEMBERS, NON_MEMBERS, threshold=0.5, n_bootstrap=-1)
    with pytest.raises(ConfigError, match="ci_level"):
        compute_metrics(MEMBERS, NON_MEMBERS, threshold=0.5, ci_level=1.0)
