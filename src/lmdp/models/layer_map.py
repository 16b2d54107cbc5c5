"""Layer maps: the tapped modules of a model and the parameter group of each tap.

A tap is a module, named by its qualified name, whose output is an
intermediate representation (IR). Group ``G_l`` contains the trainable parameters
of the modules that run after tap ``l-1`` and up to tap ``l`` in the forward
pass; the head group contains everything after the last tap. Execution order is
read from one forward pass on an example input, because registration order
(``named_modules``) need not match the order in which modules run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from lmdp.errors import LayerMapError

HEAD = "head"


@dataclass(frozen=True)
class LayerMap:
    """Taps in forward order and the trainable parameter names of each group.

    ``groups`` has one entry per tap, in the order of ``taps``, then the head
    group under the key ``"head"`` (possibly empty). Every trainable parameter
    of the model appears in exactly one group; frozen parameters in none.
    """

    taps: tuple[str, ...]
    groups: dict[str, tuple[str, ...]]

    @property
    def group_names(self) -> tuple[str, ...]:
        """Names of all groups: the taps in order, then ``"head"``."""
        return (*self.taps, HEAD)

    def group_of(self) -> dict[str, str]:
        """Map each trainable parameter name to the name of its group."""
        return {param: group for group, params in self.groups.items() for param in params}


def build_layer_map(model: nn.Module, taps: Sequence[str], example_input: torch.Tensor) -> LayerMap:
    """Derive the parameter groups of ``taps`` from one forward pass on ``example_input``.

    Raises:
        LayerMapError: listing, in one message, every unknown or repeated tap,
            taps out of forward order, and every trainable parameter that is
            not run in the forward pass or is shared between two groups.
    """
    taps = tuple(taps)
    modules = dict(model.named_modules())
    problems: list[str] = []

    if not taps:
        problems.append("no taps were given; name at least one module, e.g. one of " + _module_list(modules))
    unknown = [tap for tap in taps if tap not in modules]
    if unknown:
        problems.append(f"unknown taps {unknown}; the model's modules are: {_module_list(modules)}")
    repeated = sorted({tap for tap in taps if taps.count(tap) > 1})
    if repeated:
        problems.append(f"taps named more than once: {repeated}")
    if problems:
        raise LayerMapError("Invalid layer map: " + "; ".join(problems))

    completion_order = _record_completion_order(model, example_input)

    tap_positions = {}
    for tap in taps:
        positions = completion_order.get(tap)
        if not positions:
            problems.append(f"tap {tap!r} did not run in the forward pass")
        elif len(positions) > 1:
            problems.append(f"tap {tap!r} ran {len(positions)} times in one forward pass; tap a module that runs once")
        else:
            tap_positions[tap] = positions[0]
    if problems:
        raise LayerMapError("Invalid layer map: " + "; ".join(problems))

    ordered = sorted(taps, key=tap_positions.__getitem__)
    if list(ordered) != list(taps):
        raise LayerMapError(
            f"Invalid layer map: taps must be listed in forward order; got {list(taps)}, "
            f"the forward pass runs them as {ordered}"
        )

    groups: dict[str, list[str]] = {tap: [] for tap in taps}
    groups[HEAD] = []
    for module_name, module in modules.items():
        own_params = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own_params:
            continue
        positions = completion_order.get(module_name, [])
        prefix = f"{module_name}." if module_name else ""
        if not positions:
            problems.append(
                "trainable parameters " + str([prefix + n for n, _ in own_params]) + " are not used in the forward pass; "
                "freeze them (requires_grad=False) or remove the module"
            )
            continue
        owner_groups = {_group_at(position, taps, tap_positions) for position in positions}
        if len(owner_groups) > 1:
            problems.append(
                f"module {module_name!r} runs in several groups {sorted(owner_groups)}; "
                "a shared module must sit between the same two taps"
            )
            continue
        groups[owner_groups.pop()].extend(prefix + n for n, _ in own_params)
    if problems:
        raise LayerMapError("Invalid layer map: " + "; ".join(problems))

    return LayerMap(taps=taps, groups={name: tuple(params) for name, params in groups.items()})


def _group_at(position: int, taps: tuple[str, ...], tap_positions: dict[str, int]) -> str:
    """Return the first tap that completes at or after ``position``, else the head."""
    for tap in taps:
        if tap_positions[tap] >= position:
            return tap
    return HEAD


def _record_completion_order(model: nn.Module, example_input: torch.Tensor) -> dict[str, list[int]]:
    """Run one forward pass and return, per module name, the positions at which it finished."""
    order: dict[str, list[int]] = {}
    counter = [0]
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, _output):
            order.setdefault(name, []).append(counter[0])
            counter[0] += 1

        return hook

    for name, module in model.named_modules():
        handles.append(module.register_forward_hook(make_hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return order


def _module_list(modules: dict[str, nn.Module], limit: int = 40) -> str:
    names = [name for name in modules if name]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
