"""Per-record attack statistics: IR statistics against a reference set, and output statistics.

Raw IRs carry little membership signal on their own, so every IR statistic
uses the record's label. The reference set contains records known to be
non-members. Training pulls a member towards its class in IR space, so a
member tends to sit closer to its class there and to be easier to classify.

The statistics are raw numbers without a membership direction. The attack
that uses one (``lmdp.attacks.models``) fixes the sign on its fitting data.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from lmdp.errors import ConfigError

logger = logging.getLogger(__name__)

#: Names of the statistics that ``ReferenceStatistics.transform`` returns, in column order.
IR_STATISTICS: tuple[str, ...] = ("centroid", "knn", "probe")

#: Names of the statistics that ``output_statistics`` returns, in column order.
OUTPUT_STATISTICS: tuple[str, ...] = ("loss", "confidence", "margin")

# Lower bound on a predicted probability before taking its logarithm.
_MIN_PROBABILITY = 1e-12


class ReferenceStatistics:
    """Class-conditional statistics of IRs relative to a reference set of non-members.

    ``fit`` standardises the reference IRs (per feature), projects them on
    at most ``max_components`` principal components, and fits on that
    embedding:

    - ``centroid``: Euclidean distance to the centroid of the record's class;
    - ``knn``: mean distance to the ``n_neighbours`` nearest reference
      records of the record's class;
    - ``probe``: cross-entropy loss of the record's label under a
      multinomial logistic regression (the linear probe) fitted to predict
      the label from the reference embedding.

    A label absent from the reference set falls back to the whole reference
    set for ``centroid`` and ``knn`` and gets the maximum probe loss.
    """

    def __init__(self, *, n_neighbours: int = 5, max_components: int = 64, seed: int = 0):
        self.n_neighbours = n_neighbours
        self.max_components = max_components
        self.seed = seed

    def fit(self, features: np.ndarray, labels: np.ndarray) -> ReferenceStatistics:
        """Fit the embedding, class centroids, neighbour sets and probe on reference records."""
        if features.shape[0] < 2:
            raise ConfigError(f"the reference set needs at least 2 records; got {features.shape[0]}")
        self.scaler_ = StandardScaler().fit(features)
        standardised = self.scaler_.transform(features)
        n_components = min(self.max_components, standardised.shape[0] - 1, standardised.shape[1])
        self.pca_: PCA | None = None
        if standardised.shape[1] > n_components:
            self.pca_ = PCA(n_components=n_components, random_state=self.seed).fit(standardised)
        reference = self._project(standardised)

        self.reference_ = reference
        self.reference_labels_ = labels.copy()
        self.classes_ = np.unique(labels)
        self.centroids_ = {int(c): reference[labels == c].mean(axis=0) for c in self.classes_}
        self.global_centroid_ = reference.mean(axis=0)

        self.probe_: LogisticRegression | None = None
        if self.classes_.size >= 2:
            self.probe_ = LogisticRegression(max_iter=1000).fit(reference, labels)
        return self

    def embed(self, features: np.ndarray) -> np.ndarray:
        """Return the standardised, projected features (n_records, n_components)."""
        return self._project(self.scaler_.transform(features))

    def transform(self, features: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Return each statistic of ``IR_STATISTICS`` for every record, as 1-D arrays."""
        embedded = self.embed(features)
        centroid = np.empty(len(labels))
        knn = np.empty(len(labels))
        for label in np.unique(labels):
            rows = labels == label
            if label in self.centroids_:
                centroid_of_class = self.centroids_[int(label)]
                neighbours = self.reference_[self.reference_labels_ == label]
            else:
                centroid_of_class = self.global_centroid_
                neighbours = self.reference_
            centroid[rows] = np.linalg.norm(embedded[rows] - centroid_of_class, axis=1)
            distances = cdist(embedded[rows], neighbours)
            k = min(self.n_neighbours, neighbours.shape[0])
            knn[rows] = np.partition(distances, k - 1, axis=1)[:, :k].mean(axis=1)
        return {"centroid": centroid, "knn": knn, "probe": self._probe_loss(embedded, labels)}

    def _project(self, standardised: np.ndarray) -> np.ndarray:
        return standardised if self.pca_ is None else self.pca_.transform(standardised)

    def _probe_loss(self, embedded: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if self.probe_ is None:
            # One class in the reference set: the probe predicts it with certainty.
            return np.where(labels == self.classes_[0], 0.0, -np.log(_MIN_PROBABILITY))
        return label_loss(self.probe_, embedded, labels)


def label_loss(probe: LogisticRegression, embedded: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return each record's cross-entropy under a fitted probe; a label the probe never saw gets the maximum."""
    probabilities = probe.predict_proba(embedded)
    loss = np.full(len(labels), -np.log(_MIN_PROBABILITY))
    for index, label in enumerate(probe.classes_):
        rows = labels == label
        loss[rows] = -np.log(np.maximum(probabilities[rows, index], _MIN_PROBABILITY))
    return loss


def output_statistics(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Return the model's loss, confidence and margin for each record.

    ``logits`` is (n_records, n_classes). ``loss`` is the cross-entropy of
    the label, ``confidence`` the softmax probability of the label, and
    ``margin`` the label's logit minus the largest other logit.
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ConfigError(
            f"output-level attacks need logits of shape (n_records, n_classes) with n_classes >= 2; got {logits.shape}"
        )
    if labels.max(initial=0) >= logits.shape[1] or labels.min(initial=0) < 0:
        raise ConfigError(
            f"labels must be in [0, {logits.shape[1] - 1}] for {logits.shape[1]} output logits; "
            f"got labels from {labels.min()} to {labels.max()}"
        )
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    label_log_probability = log_probabilities[rows, labels]

    others = logits.copy()
    others[rows, labels] = -np.inf
    return {
        "loss": -label_log_probability,
        "confidence": np.exp(label_log_probability),
        "margin": logits[rows, labels] - others.max(axis=1),
    }


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Return labels as a (n_records, num_classes) float matrix of 0 and 1."""
    encoded = np.zeros((len(labels), num_classes))
    encoded[np.arange(len(labels)), labels] = 1.0
    return encoded
