"""``padded``: every layer zero-padded to the widest layer's width, so the config states one width per axis and
plain ``from_pretrained`` loads the model, with no hfprune and no remote code.

Padding adds units whose weights are zero on both sides: an FFN neuron with zero input rows outputs ``act(0) = 0``
(SiLU, GELU, ReLU; gated FFNs multiply by ``up(0) = 0``) into zero output columns; a query head or KV group with
zero rows attends somewhere but its output meets zero columns of ``o_proj``. The outputs are those of the pruned
model; the size is that of the widest layer (no size win past it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..structure import UnitGroup, adapter_for
from ..structure.layers import Layer, pad_layer


def _check_contiguous(model: nn.Module, group: UnitGroup) -> None:
    """Units can be appended at the end only where unit ``u`` owns block ``u`` of the whole dimension (not
    GPT-2's fused ``c_attn``, not query heads interleaved across KV groups)."""
    for c in group.couplings:
        layer = Layer(c.layer, model.get_submodule(c.layer)) if c.side != "param" else None
        size = None if layer is None else (layer.out_features if c.side == "out" else layer.in_features)
        if layer is None or not torch.equal(c.index.flatten().cpu(), torch.arange(size)):
            raise ConfigError(f"The padded export cannot pad {group.name}: its units do not fill {c.layer} in "
                              "order (a fused projection, or query heads removed inside KV groups with "
                              "gqa_mode='query_heads'). Prune with gqa_mode='kv_groups' or scope='local', or load "
                              "the folder with hfprune.load_pruned.")


def pad_units(model: nn.Module, group: UnitGroup, extra: int) -> None:
    """Append ``extra`` zero units to ``group`` in every coupled layer."""
    _check_contiguous(model, group)
    for c in group.couplings:
        pad_layer(model.get_submodule(c.layer), c.side, extra * c.index.shape[1])


def pad_to_widest(model: nn.Module, groups: list[UnitGroup]) -> dict[str, Any]:
    """Pad every group to the widest of its kind and write the uniform widths into ``model.config``; returns the
    widths per kind before ({group: units}) and after."""
    adapter = adapter_for(model)
    before = {g.name: g.num_units for g in groups}
    after: dict[str, int] = {}
    for kind in sorted({g.kind for g in groups}):
        same = [g for g in groups if g.kind == kind]
        widest = max(g.num_units for g in same)
        for g in same:
            if g.num_units < widest:
                pad_units(model, g, widest - g.num_units)
        after[kind] = widest
        if kind == "neurons":
            key = same[0].config_key
            if key is None:
                raise ConfigError(f"{type(model).__name__}'s config cannot state an FFN width; it has no padded "
                                  "export. Load the folder with hfprune.load_pruned.")
            setattr(model.config, key, widest)
    if any(g.kind == "heads" for g in groups) and adapter is not None:
        adapter.fix_attention(model)
        counts = {spec.head_counts(m) for _, m, spec in adapter.attention_modules(model)}
        dims = {spec.head_dim(m) for _, m, spec in adapter.attention_modules(model)}
        if len(counts) != 1 or not adapter.heads_in_config:
            raise ConfigError(f"{type(model).__name__}'s heads stay non-uniform after padding ({sorted(counts)}); "
                              "its config cannot state them. Load the folder with hfprune.load_pruned.")
        (q, kv), = counts
        model.config.num_attention_heads = q
        if hasattr(model.config, "num_key_value_heads"):
            model.config.num_key_value_heads = kv
        model.config.head_dim = dims.pop()
    return {"before": before, "after": after}
