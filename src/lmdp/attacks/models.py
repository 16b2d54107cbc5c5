"""Membership attacks on one layer's IRs or on the model output.

Each attack maps a record (its IR or logits, and its label) to a score,
higher = more likely a member. Fitting uses two disjoint balanced parts of
the fitting data. The *train* part trains a classifier, or fixes the
score's direction where it is not fixed in advance. The *calibrate* part
fixes the decision threshold and measures the AUC by which the strongest
attack is chosen. Evaluation data never changes either.

IR attacks (``IR_ATTACKS``):

- ``centroid``, ``knn``, ``probe``: one statistic of ``ReferenceStatistics``
  each, thresholded (see ``FIXED_DIRECTIONS`` for which directions are
  fixed in advance and which are learned);
- ``member_probe``: the loss of a linear probe fitted on the train part's
  members, thresholded;
- ``logreg``, ``mlp``: a logistic regression or a one-hidden-layer MLP on
  the standardised, projected IR plus the one-hot label;
- ``boosted``: gradient boosting on reduced features, namely the three
  reference statistics plus the one-hot label.

Output attacks (``OUTPUT_ATTACKS``): ``loss``, ``confidence`` and ``margin``
of the model's logits, thresholded.

Attacks in ``TRANSFERABLE_ATTACKS`` use only statistics relative to a
reference set, so they can be fitted on a shadow model and applied to a
target model whose reference statistics were refitted on the target's IRs.
``member_probe``, ``logreg`` and ``mlp`` read raw IR coordinates, which
differ between two independently trained networks, so they are not
transferable.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from lmdp.attacks.metrics import auc, best_threshold
from lmdp.attacks.statistics import (
    IR_STATISTICS,
    OUTPUT_STATISTICS,
    ReferenceStatistics,
    label_loss,
    one_hot,
    output_statistics,
)
from lmdp.errors import ConfigError

IR_ATTACKS: tuple[str, ...] = ("centroid", "knn", "probe", "member_probe", "logreg", "mlp", "boosted")
OUTPUT_ATTACKS: tuple[str, ...] = OUTPUT_STATISTICS
TRANSFERABLE_ATTACKS: frozenset[str] = frozenset({*IR_STATISTICS, "boosted", *OUTPUT_STATISTICS})
_CLASSIFIER_ATTACKS = ("logreg", "mlp", "boosted")


@dataclass(frozen=True)
class RecordInputs:
    """Inputs of the attacks for one set of records, derived from IRs or logits.

    ``statistics`` maps a statistic name to one value per record;
    ``embedded`` is the standardised, projected IR (None at the output level).
    """

    labels: np.ndarray
    statistics: dict[str, np.ndarray]
    embedded: np.ndarray | None


#: Fixed score directions: −1 where a lower statistic means "member" (a loss), +1 where a higher one does.
#: The model was fitted to its members, so their loss is lower, their confidence and margin are
#: higher, and their IRs are easier for a linear probe to classify. Distances in IR space have no
#: such prior, because a member's logits may lie further from the class centroid when they are more
#: confident. So ``centroid`` and ``knn`` learn their direction on the train part.
FIXED_DIRECTIONS: dict[str, int] = {"loss": -1, "confidence": 1, "margin": 1, "probe": -1}


class ThresholdAttack:
    """Score = direction × one statistic, with direction ∈ {+1, −1}.

    The direction comes from ``FIXED_DIRECTIONS`` when the statistic has
    one. Otherwise ``fit`` picks the sign under which train-part members
    score higher than train-part non-members (AUC ≥ 0.5).
    """

    transferable = True

    def __init__(self, name: str):
        self.name = name
        self.direction = FIXED_DIRECTIONS.get(name, 0)

    def fit(self, train: RecordInputs, train_is_member: np.ndarray) -> None:
        if self.name in FIXED_DIRECTIONS:
            return
        statistic = train.statistics[self.name]
        train_auc = auc(statistic[train_is_member], statistic[~train_is_member])
        self.direction = 1 if train_auc >= 0.5 else -1

    def score(self, inputs: RecordInputs) -> np.ndarray:
        return self.direction * inputs.statistics[self.name]


class MemberProbeAttack:
    """Score = −loss of a linear probe fitted on the train part's members to predict the label.

    Training shapes members' IRs so that the network's next layers map
    them to their labels. A probe fitted on known members learns that
    mapping and gives other members a lower loss than non-members, even
    where non-members show no class structure a reference probe could
    learn. The direction is −1 (lower loss = member) by construction.
    """

    transferable = False
    direction = -1

    def __init__(self, name: str = "member_probe"):
        self.name = name

    def fit(self, train: RecordInputs, train_is_member: np.ndarray) -> None:
        members = train.embedded[train_is_member]
        labels = train.labels[train_is_member]
        self.single_label_ = labels[0] if np.unique(labels).size < 2 else None
        if self.single_label_ is None:
            self.probe_ = LogisticRegression(max_iter=1000).fit(members, labels)

    def score(self, inputs: RecordInputs) -> np.ndarray:
        if self.single_label_ is not None:
            # Every train member has one label: the probe predicts it with certainty.
            return np.where(inputs.labels == self.single_label_, 0.0, -1.0)
        return -label_loss(self.probe_, inputs.embedded, inputs.labels)


class ClassifierAttack:
    """Score = a classifier's predicted probability of "member" (direction +1 by construction)."""

    def __init__(self, name: str, *, num_classes: int, seed: int):
        self.name = name
        self.num_classes = num_classes
        self.seed = seed
        self.direction = 1
        self.transferable = name in TRANSFERABLE_ATTACKS

    def fit(self, train: RecordInputs, train_is_member: np.ndarray) -> None:
        with warnings.catch_warnings():
            # An MLP stopped at max_iter is still a valid attack; its calibrate AUC shows how good it is.
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.estimator_ = self._make_estimator().fit(self._features(train), train_is_member.astype(int))

    def score(self, inputs: RecordInputs) -> np.ndarray:
        return self.estimator_.predict_proba(self._features(inputs))[:, 1]

    def _make_estimator(self):
        if self.name == "logreg":
            return LogisticRegression(max_iter=1000)
        if self.name == "mlp":
            return MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=300, random_state=self.seed)
        # The exact (not histogram) learner: on a few thousand rows it is faster, without thread start-up costs.
        return GradientBoostingClassifier(n_estimators=100, max_depth=3, learning_rate=0.1, random_state=self.seed)

    def _features(self, inputs: RecordInputs) -> np.ndarray:
        labels = one_hot(inputs.labels, self.num_classes)
        if self.name == "boosted":
            statistics = np.column_stack([inputs.statistics[name] for name in IR_STATISTICS])
            return np.hstack([statistics, labels])
        return np.hstack([inputs.embedded, labels])


class LayerAttacks:
    """The attacks of one level (a tap, or ``"output"``), fitted together.

    ``level`` is ``"ir"`` for a tap and ``"output"`` for the model output.
    After ``fit``: ``fit_auc`` maps each attack to its AUC on the calibrate
    part, ``thresholds`` to its decision threshold, and ``chosen`` is the
    attack with the highest ``fit_auc`` (the first listed on a tie).
    """

    def __init__(
        self,
        level: str,
        attacks: tuple[str, ...],
        *,
        num_classes: int,
        n_neighbours: int = 5,
        max_components: int = 64,
        seed: int = 0,
    ):
        known = IR_ATTACKS if level == "ir" else OUTPUT_ATTACKS
        unknown = [name for name in attacks if name not in known]
        if unknown or not attacks:
            raise ConfigError(f"unknown or missing {level} attacks {unknown or list(attacks)}; choose from {list(known)}")
        self.level = level
        self.num_classes = num_classes
        self.n_neighbours = n_neighbours
        self.max_components = max_components
        self.seed = seed
        self.attacks = {name: self._make_attack(name) for name in attacks}

    def _make_attack(self, name: str):
        if name in _CLASSIFIER_ATTACKS:
            return ClassifierAttack(name, num_classes=self.num_classes, seed=self.seed)
        if name == "member_probe":
            return MemberProbeAttack()
        return ThresholdAttack(name)

    def fit(
        self,
        reference: tuple[np.ndarray, np.ndarray] | None,
        train: tuple[np.ndarray, np.ndarray, np.ndarray],
        calibrate: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> LayerAttacks:
        """Fit every attack on parts given as ``(features, labels)`` or ``(features, labels, is_member)``.

        ``reference`` contains non-members only and is required at the IR
        level. It must be disjoint from ``train`` and ``calibrate``.
        """
        if self.level == "ir":
            if reference is None:
                raise ConfigError("IR attacks need a reference set of non-members")
            self.reference_statistics_ = ReferenceStatistics(
                n_neighbours=self.n_neighbours, max_components=self.max_components, seed=self.seed
            ).fit(*reference)

        train_inputs = self.inputs(train[0], train[1])
        calibrate_inputs = self.inputs(calibrate[0], calibrate[1])
        calibrate_is_member = calibrate[2]
        self.fit_auc: dict[str, float] = {}
        self.thresholds: dict[str, float] = {}
        for name, attack in self.attacks.items():
            attack.fit(train_inputs, train[2])
            scores = attack.score(calibrate_inputs)
            self.fit_auc[name] = auc(scores[calibrate_is_member], scores[~calibrate_is_member])
            self.thresholds[name] = best_threshold(scores[calibrate_is_member], scores[~calibrate_is_member])
        self.chosen = max(self.attacks, key=lambda name: self.fit_auc[name])
        return self

    def rebase(self, reference: tuple[np.ndarray, np.ndarray]) -> LayerAttacks:
        """Return a copy restricted to transferable attacks, with reference statistics refitted on ``reference``.

        Used to apply attacks fitted on a shadow model to a target model:
        ``reference`` is the target's IRs of the records that formed the
        shadow's reference set, so the statistics mean the same thing on
        both models. Directions, thresholds and classifiers are kept.
        """
        rebased = copy.copy(self)
        rebased.attacks = {name: attack for name, attack in self.attacks.items() if attack.transferable}
        if not rebased.attacks:
            raise ConfigError(
                f"none of the attacks {list(self.attacks)} is transferable; "
                f"the transfer setting needs one of {sorted(TRANSFERABLE_ATTACKS)}"
            )
        if self.level == "ir":
            rebased.reference_statistics_ = ReferenceStatistics(
                n_neighbours=self.n_neighbours, max_components=self.max_components, seed=self.seed
            ).fit(*reference)
        rebased.fit_auc = {name: self.fit_auc[name] for name in rebased.attacks}
        rebased.thresholds = {name: self.thresholds[name] for name in rebased.attacks}
        rebased.chosen = max(rebased.attacks, key=lambda name: rebased.fit_auc[name])
        return rebased

    def inputs(self, features: np.ndarray, labels: np.ndarray) -> RecordInputs:
        """Derive the attack inputs (statistics, embedding) of a set of records."""
        if self.level == "output":
            return RecordInputs(labels=labels, statistics=output_statistics(features, labels), embedded=None)
        statistics = self.reference_statistics_
        return RecordInputs(
            labels=labels,
            statistics=statistics.transform(features, labels),
            embedded=statistics.embed(features),
        )

    def score(self, features: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Return each attack's scores (higher = more likely a member) on a set of records."""
        inputs = self.inputs(features, labels)
        return {name: attack.score(inputs) for name, attack in self.attacks.items()}
