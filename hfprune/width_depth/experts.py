"""The expert axis (``granularity="experts"``): how many routed experts every MoE block loses, checked before any
work, and their removal by score (`hfprune.structure.experts` does the slicing)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config.pruning_config import PruningConfig
from ..errors import ConfigError, StructureError
from ..steps.selection import keep_top
from ..structure.experts import moe_blocks, remove_experts, top_k


def check_experts(model: nn.Module, config: PruningConfig) -> int:
    """Experts removed per MoE block for the config's fraction (nearest whole count); refuses models without MoE
    blocks and removals that leave fewer experts than a token is routed to."""
    blocks = moe_blocks(model)
    if not blocks:
        mt = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise StructureError(f"Granularity 'experts' needs a mixture-of-experts model (Mixtral, Qwen2-MoE, "
                             f"Qwen3-MoE, Qwen3-Next, OLMoE); {mt!r} has no routed experts.")
    total = blocks[0].num_experts
    fraction = config.sparsity_for("experts")
    removed = int(round(fraction * total))
    k = top_k(model)
    if total - removed < max(k, 1):
        raise ConfigError(f"expert_sparsity={fraction:g} of {total} experts per block removes {removed} and keeps "
                          f"{total - removed}, fewer than the {k} experts every token is routed to "
                          f"(num_experts_per_tok); remove at most {total - max(k, 1)} "
                          f"(width_depth.expert_sparsity <= {(total - max(k, 1)) / total:.3f}).")
    return removed


def apply_experts(model: nn.Module, removed: int, scores: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """Remove ``removed`` experts from every MoE block, the lowest-scored (None: the last, for counting
    parameters); returns the kept counts per block with the removed expert indices."""
    keep: dict[str, torch.Tensor] = {}
    kept: dict[str, Any] = {}
    for block in moe_blocks(model):
        n = block.num_experts
        s = scores[block.name] if scores is not None else -torch.arange(n, dtype=torch.float64)
        keep[block.name] = keep_top(s, n - removed)
        kept[block.name] = {"kind": "experts", "total": n, "kept": n - removed,
                            "removed": (~keep[block.name]).nonzero().flatten().tolist()}
    if removed:
        remove_experts(model, keep)
    return kept
