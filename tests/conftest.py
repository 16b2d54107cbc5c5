"""Shared test setup."""

import torch

# The tests train small models; on a 2-core machine shared with other work,
# two torch threads were measured 5-30x slower than one.
torch.set_num_threads(1)
