"""Model zoo with declared taps, layer maps and module validation."""

from lmdp.models.layer_map import HEAD, LayerMap, build_layer_map
from lmdp.models.validation import fix_model, validate_model
from lmdp.models.zoo import CNN, MLP, ZOO, ResNet, build_model, model_taps

__all__ = [
    "CNN",
    "HEAD",
    "LayerMap",
    "MLP",
    "ResNet",
    "ZOO",
    "build_layer_map",
    "build_model",
    "fix_model",
    "model_taps",
    "validate_model",
]
