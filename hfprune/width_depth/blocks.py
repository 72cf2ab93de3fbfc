"""Depth pruning: remove whole transformer blocks and rewrite what the config says per block.

After removal the kept blocks are renumbered (every ``layer_idx`` attribute, which the KV cache indexes by),
``num_hidden_layers`` and the family's per-block config lists (``layer_types``: sliding / full attention) are
rewritten, so the model generates with a cache and reloads with plain ``from_pretrained``.
"""

from __future__ import annotations

from torch import nn

from ..calibration.sequential import find_blocks
from ..config.pruning_config import PruningConfig
from ..errors import ConfigError, StructureError
from ..structure import adapter_for
from ..structure.adapters import known_model_types


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, ModuleList) of the model's transformer blocks, from its family adapter."""
    adapter = adapter_for(model)
    if adapter is None or not adapter.blocks:
        types = known_model_types()
        mt = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise StructureError(f"Granularity 'layers' needs a transformer family hfprune knows (model types "
                             f"{', '.join(types)}); {mt!r} is not one.")
    return find_blocks(model)


def blocks_to_remove(num_blocks: int, fraction: float) -> int:
    """Blocks removed for a fraction: the nearest whole number."""
    return int(round(fraction * num_blocks))


def check_layers(model: nn.Module, config: PruningConfig, fraction: float | None = None) -> int:
    """Validate a depth-pruning request before any work; return the number of blocks to remove."""
    _, blocks = block_list(model)
    fraction = config.sparsity_for("layers") if fraction is None else fraction
    n = blocks_to_remove(len(blocks), fraction)
    if n >= len(blocks):
        raise ConfigError(f"layer_sparsity={fraction:g} removes {n} of the model's {len(blocks)} blocks, i.e. "
                          "every block; use a fraction below "
                          f"{(len(blocks) - 0.5) / len(blocks):.3f}.")
    if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
        raise StructureError("This GPT-2 config scales attention by 1/(layer_idx+1): renumbered blocks would "
                             "change their attention after reloading; depth pruning is not supported for it.")
    return n


def remove_blocks(model: nn.Module, drop: list[int]) -> None:
    """Remove the blocks whose indices are in ``drop``; renumber ``layer_idx``; rewrite the config in place."""
    name, blocks = block_list(model)
    drop_set = set(drop)
    kept = [b for i, b in enumerate(blocks) if i not in drop_set]
    old_n = len(blocks)
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    setattr(parent, name.rsplit(".", 1)[-1], nn.ModuleList(kept))
    for i, block in enumerate(kept):
        for m in block.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = i
    cfg = model.config  # mutated in place: every sub-module shares this object (Llama slices layers by it)
    adapter = adapter_for(model)
    for key in adapter.layer_config_keys:
        value = getattr(cfg, key, None)
        if isinstance(value, (list, tuple)) and len(value) == old_n:
            setattr(cfg, key, type(value)(v for i, v in enumerate(value) if i not in drop_set))
    cfg.num_hidden_layers = len(kept)
