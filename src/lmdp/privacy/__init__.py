"""Accountants, noise calibration and the LM-DP-SGD optimizer and engine."""

from lmdp.privacy.accounting import (
    ACCOUNTANTS,
    Calibration,
    calibrate_noise_multiplier,
    compute_epsilon,
    smallest_reachable_epsilon,
    steps_for_epochs,
)
from lmdp.privacy.engine import LMDPEngine
from lmdp.privacy.ghost import GRAD_SAMPLE_MODES, GhostLMDPOptimizer, resolve_grad_sample_mode
from lmdp.privacy.mechanism import PrivacyMechanism, resolve_layer_weights
from lmdp.privacy.optimizer import LMDPOptimizer

__all__ = [
    "ACCOUNTANTS",
    "Calibration",
    "GRAD_SAMPLE_MODES",
    "GhostLMDPOptimizer",
    "LMDPEngine",
    "LMDPOptimizer",
    "PrivacyMechanism",
    "calibrate_noise_multiplier",
    "compute_epsilon",
    "resolve_grad_sample_mode",
    "resolve_layer_weights",
    "smallest_reachable_epsilon",
    "steps_for_epochs",
]
