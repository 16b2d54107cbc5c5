"""Datasets read from disk or shipped offline, and the splits of an experiment.

``load_dataset`` returns an immutable ``ArrayDataset``. ``split_experiment``
draws the public, member, non-member and test parts from it, and
``split_shadow`` halves the public part for the shadow model.
"""

from lmdp.data.dataset import ArrayDataset, DatasetError, count_shared_records
from lmdp.data.loading import DATASET_NAMES, DEFAULT_DATASET, load_dataset
from lmdp.data.preprocessing import encode_labels
from lmdp.data.splits import SPLIT_NAMES, ExperimentSplits, split_experiment, split_shadow

__all__ = [
    "ArrayDataset",
    "DATASET_NAMES",
    "DEFAULT_DATASET",
    "DatasetError",
    "ExperimentSplits",
    "SPLIT_NAMES",
    "count_shared_records",
    "encode_labels",
    "load_dataset",
    "split_experiment",
    "split_shadow",
]
