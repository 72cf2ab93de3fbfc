"""Find what can be pruned in a model: target layers (unstructured) or unit groups (structured). ``config`` is a
`PruningConfig`, typed ``Any`` here because structure sits below config in the layering (docs/architecture.md).

FFN neurons and attention heads of Hugging Face families come from the family adapters; conv channels (plain and
residual CNNs, any architecture) come from Torch-Pruning's `DependencyGraph`, which traces the coupling through
BatchNorm, residual additions and concatenations.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import torch
from torch import nn

from ..errors import StructureError
from .adapters import Adapter, AttentionSpec, FFNSpec, adapter_for, known_model_types, register_adapter
from .groups import Coupling, UnitGroup
from .layers import Layer, find_layers
from .widths import group_multiple

__all__ = ["Layer", "UnitGroup", "Coupling", "Adapter", "AttentionSpec", "FFNSpec", "adapter_for",
           "register_adapter", "target_layers",
           "find_groups", "find_layers"]


def _selected(name: str, config: Any) -> bool:
    if any(fnmatch.fnmatchcase(name, p) for p in config.ignore):
        return False
    return not config.targets or any(fnmatch.fnmatchcase(name, p) for p in config.targets)


def target_layers(model: nn.Module, config: Any) -> dict[str, Layer]:
    """Scorable layers that the config's `targets` / `ignore` patterns select."""
    layers = {n: l for n, l in find_layers(model).items() if _selected(n, config)}
    if not layers:
        raise StructureError("No prunable layer matches targets="
                             f"{config.targets} and ignore={config.ignore}; loosen the patterns.")
    return layers


def find_groups(model: nn.Module, config: Any, example_inputs: Any = None) -> list[UnitGroup]:
    """Unit groups of every kind named in ``config.granularity``, filtered by `targets` / `ignore`."""
    all_layers = find_layers(model)
    kinds = config.parts
    adapter = adapter_for(model)
    groups: list[UnitGroup] = []
    hf_kinds = [k for k in kinds if k in ("neurons", "heads")]
    if hf_kinds:
        if adapter is None:
            types = known_model_types()
            mt = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
            raise StructureError(f"Granularity {config.granularity!r} needs a transformer family hfprune knows "
                                 f"(model types {', '.join(types)}); {mt!r} is not one. Use 'weights', an N:M "
                                 "pattern, or 'channels' for CNNs.")
        found = adapter.groups(model, all_layers, hf_kinds, config.gqa_mode)
        for kind in hf_kinds:
            if not any(g.kind == kind for g in found):
                raise StructureError(f"The model has no {kind} hfprune can prune.")
        groups += found
    if "channels" in kinds:
        groups += channel_groups(model, config, example_inputs)
    # a group is pruned when its producers are selected; an ignored consumer (a classifier) just gets narrower inputs
    groups = [g for g in groups if all(_selected(c.layer, config) for c in g.producers)]
    if not groups:
        raise StructureError(f"No {config.granularity} unit is left after targets={config.targets} and "
                             f"ignore={config.ignore}; loosen the patterns.")
    for g in groups:
        g.multiple = group_multiple(model, g, config.round_to)
    return groups


def channel_groups(model: nn.Module, config: Any, example_inputs: Any) -> list[UnitGroup]:
    """Conv output-channel groups from Torch-Pruning's dependency graph."""
    import torch_pruning as tp

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    if not convs:
        mt = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise StructureError(f"Granularity 'channels' needs convolutions; {mt!r} has none. Use 'neurons' or "
                             "'heads' for transformers, or 'weights'.")
    if example_inputs is None:
        raise StructureError("Channel pruning traces the model: pass calibration data or example_inputs.")
    names = {m: n for n, m in model.named_modules()}
    ignored = [m for n, m in model.named_modules() if n and not _selected(n, config)
               and isinstance(m, (nn.Conv2d, nn.Linear))]
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
    out_fns = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
    in_fns = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
    groups = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d,)):
        root = group[0].dep.target.module
        n = root.out_channels
        couplings = []
        for item in group:
            module, handler = item.dep.target.module, item.dep.handler
            idx = torch.as_tensor(list(item.idxs), dtype=torch.long)
            if module not in names or idx.numel() % n:
                continue
            side = "out" if handler in out_fns else "in" if handler in in_fns else "param"
            couplings.append(Coupling(names[module], side, idx.view(n, -1)))
        groups.append(UnitGroup(f"{names[root]}.channels", "channels", n, couplings,
                                meta={"tp_graph": dg, "tp_root": root}))
    return groups
