"""Shared test setup and fixtures."""

import pytest
import torch

from lmdp.data import load_dataset

# The tests train small models; on a 2-core machine shared with other work,
# two torch threads were measured 5-30x slower than one.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits as an ArrayDataset (1,797 real 8×8 images)."""
    return load_dataset("digits")


@pytest.fixture
def float64_default():
    """Set float64 as torch's default dtype for one test, then restore it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
