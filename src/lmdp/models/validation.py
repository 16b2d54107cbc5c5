"""Checks that a model supports per-example gradients before any training."""

from __future__ import annotations

from opacus.validators import ModuleValidator
from torch import nn

from lmdp.errors import UnsupportedModuleError

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def validate_model(model: nn.Module) -> None:
    """Raise once, naming every module that breaks per-example gradients.

    BatchNorm mixes the examples of a batch, so one record's gradient depends
    on the others and the per-example clip no longer bounds its influence.
    An in-place activation such as ``ReLU(inplace=True)`` overwrites the
    output of the module before it, which Opacus's backward hooks wrap, and
    torch raises in the forward pass. Other problems come from Opacus's
    ``ModuleValidator``.
    """
    problems = []
    for name, module in model.named_modules():
        if isinstance(module, _BATCH_NORMS):
            problems.append(
                f"module {name!r} is {type(module).__name__}, which mixes examples in a batch; "
                f"replace it with nn.GroupNorm (for example nn.GroupNorm(min(32, C), C) with C={module.num_features}), "
                "or call lmdp.models.fix_model(model), which does this with Opacus's ModuleValidator.fix"
            )
        if getattr(module, "inplace", False) is True:
            problems.append(
                f"module {name!r} is {type(module).__name__}(inplace=True), which overwrites an output that the "
                "per-example gradient hooks keep; set inplace=False, or call lmdp.models.fix_model(model)"
            )
    if not problems:
        for error in ModuleValidator.validate(model, strict=False):
            problems.append(str(error))
    if problems:
        raise UnsupportedModuleError(
            f"The model has {len(problems)} module(s) that DP training cannot handle: " + "; ".join(problems)
        )


def fix_model(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` with BatchNorm replaced by GroupNorm (Opacus's fix) and no in-place activations."""
    fixed = ModuleValidator.fix(model)
    for module in fixed.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    return fixed
