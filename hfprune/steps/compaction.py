"""Physically remove masked units, add compensation biases, and rewrite the config to the new widths.

After compaction the model is smaller and faster. Whether plain ``from_pretrained`` can load it depends on the
family's config: uniform widths are written into the config; fewer heads only where the config has ``head_dim``.
Everything else is recorded (per-group kept counts) so that `hfprune.load_pruned` can rebuild the shapes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..structure import Adapter, Layer, UnitGroup
from ..structure.layers import slice_layer
from ..structure.loaders import Loader


@dataclass
class Compaction:
    """What compaction did: which loader reads the result, and the kept units per group (or per axis)."""

    loader: Loader
    kept: dict[str, dict[str, Any]]


def _compact_channels(group: UnitGroup, keep: torch.Tensor) -> None:
    import torch_pruning as tp

    removed = (~keep).nonzero().flatten().tolist()
    if removed:
        dg, root = group.meta["tp_graph"], group.meta["tp_root"]
        dg.get_pruning_group(root, tp.prune_conv_out_channels, idxs=removed).prune()


def compact_units(model: nn.Module, groups: list[UnitGroup], masks: dict[str, torch.Tensor],
                  adapter: Adapter | None) -> None:
    """Remove every unit whose mask entry is False, in every coupled parameter; the family adapter then rewrites
    the attention modules' head counts."""
    heads_changed = False
    for g in groups:
        keep = masks[g.name].cpu()
        if keep.all():
            continue
        if "tp_graph" in g.meta:
            _compact_channels(g, keep)
            continue
        for c in g.couplings:
            idx = torch.sort(c.index[keep].flatten()).values
            slice_layer(model.get_submodule(c.layer), c.side, idx)
        heads_changed |= g.kind == "heads"
    if heads_changed and adapter is not None:
        adapter.fix_attention(model)


@torch.no_grad()
def add_bias(model: nn.Module, layer: Layer, delta: torch.Tensor, adapter: Adapter | None) -> None:
    """Add ``delta`` to the layer's bias, creating the bias (and flipping the family's bias flag) if needed."""
    module = layer.module
    if module.bias is None:
        module.bias = nn.Parameter(torch.zeros(layer.out_features, dtype=module.weight.dtype,
                                               device=module.weight.device))
        if adapter is not None:
            _enable_bias_flag(model, layer.name, adapter)
    module.bias += delta.to(module.bias.device, module.bias.dtype)


def _enable_bias_flag(model: nn.Module, layer_name: str, adapter: Adapter) -> None:
    """Configs such as Llama's add biases per block type (``mlp_bias``, ``attention_bias``; the adapter's
    `Adapter.bias_flags`): set the flag and give every layer it governs a zero bias, so the saved checkpoint loads
    with plain ``from_pretrained``."""
    found = adapter.bias_flag(layer_name)
    if found is None:
        return
    setattr(model.config, found[0], True)
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.bias is None and adapter.bias_flag(name) == found:
            m.bias = nn.Parameter(torch.zeros(m.out_features, dtype=m.weight.dtype, device=m.weight.device))


def rewrite_config(model: nn.Module, groups: list[UnitGroup], masks: dict[str, torch.Tensor],
                   adapter: Adapter | None) -> tuple[Loader, dict[str, Any]]:
    """Write uniform new widths into ``model.config``; return the loader that reads the result and the per-group
    kept counts that `load_pruned` needs."""
    kept = {g.name: {"kind": g.kind, "total": g.num_units, "kept": int(masks[g.name].sum())} for g in groups}
    cfg = getattr(model, "config", None)
    if cfg is None or adapter is None:
        return Loader.HFPRUNE, kept
    changed = any(v["kept"] < v["total"] for v in kept.values())
    if not changed:
        return Loader.TRANSFORMERS, kept
    new = copy.deepcopy(cfg)
    expressible = True
    ffn = [g for g in groups if g.kind == "neurons"]
    if ffn:
        widths = {kept[g.name]["kept"] for g in ffn}
        if len(widths) == 1:
            setattr(new, ffn[0].config_key, widths.pop())
        else:
            expressible = False
    heads = [g for g in groups if g.kind == "heads"]
    if heads:
        parents = {g.parent for g in heads}
        counts = {spec.head_counts(m) for name, m, spec in adapter.attention_modules(model) if name in parents}
        if len(counts) == 1 and adapter.heads_in_config:
            q, kv = counts.pop()
            new.head_dim = heads[0].meta["head_dim"]
            new.num_attention_heads = q
            if hasattr(new, "num_key_value_heads"):
                new.num_key_value_heads = kv
        elif any(kept[g.name]["kept"] < kept[g.name]["total"] for g in heads):
            expressible = False
    if expressible:
        try:
            type(cfg).from_dict(new.to_dict())
        except Exception:  # the family's own validation refuses the new shape (e.g. hidden % heads)
            expressible = False
    if expressible:
        model.config = new
        for m in model.modules():
            if hasattr(m, "config") and m.config is cfg:
                m.config = new
        return Loader.TRANSFORMERS, kept
    return Loader.HFPRUNE, kept
