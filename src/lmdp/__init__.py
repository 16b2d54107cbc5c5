"""lmdp: layer-wise membership-risk-aware DP-SGD (LM-DP-SGD) for PyTorch.

LM-DP-SGD (Meng et al., arXiv:2602.22611) estimates, on a shadow model trained
on public data, how much each layer's intermediate representations leak
training-set membership, then scales each layer's block of the per-example
gradient by a weight in (0, 1] before one global clip. The sensitivity stays
at ``max_grad_norm``, so the privacy accounting is that of plain DP-SGD.
"""

import logging

from lmdp.errors import ConfigError, LayerMapError, PrivacyWarning, UnsupportedModuleError

__version__ = "0.1.0"

# The library never configures logging beyond this; the CLI does.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ConfigError",
    "LayerMapError",
    "PrivacyWarning",
    "UnsupportedModuleError",
    "__version__",
]
