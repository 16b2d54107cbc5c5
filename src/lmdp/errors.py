"""Exception and warning types shared by every stage of the pipeline."""


class ConfigError(ValueError):
    """An invalid parameter or combination of parameters, found before any work."""


class LayerMapError(ValueError):
    """A layer map that does not match the model (unknown taps, unmapped parameters)."""


class UnsupportedModuleError(ValueError):
    """A module that breaks per-example gradients, such as BatchNorm."""


class NonFiniteLossError(FloatingPointError):
    """A NaN or infinite loss or gradient; the parameters are left as they were."""


class ProfileMismatchError(ValueError):
    """A risk profile that was made for another architecture or other taps."""


class ArtifactError(ValueError):
    """A checkpoint, profile or report file that is truncated, edited or of another kind."""


class PrivacyWarning(UserWarning):
    """A setting that weakens the privacy guarantee (for example δ ≥ 1/N)."""
