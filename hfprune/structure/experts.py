"""Mixture-of-experts blocks and the removal of whole experts (``granularity="experts"``).

transformers (5.x) stores the routed experts of Mixtral, Qwen2-MoE, Qwen3-MoE, Qwen3-Next and OLMoE fused: a router
``gate`` whose ``weight`` is ``[experts, hidden]`` and an ``experts`` module with ``gate_up_proj [E, 2I, H]`` and
``down_proj [E, H, I]``; ``save_pretrained`` writes them back as per-expert tensors ``0 .. E-1``. Removing experts
slices dimension 0 of both and the router's rows, and rewrites the expert count in the module attributes and the
config (one key, its aliases follow). The router's softmax then runs over the kept experts only, which is exactly
the model whose removed experts' router logits are ``-inf``. Shared experts (Qwen2-MoE's ``shared_expert``) sit
beside ``experts`` and are never candidates. Every layer keeps the same count: the config states one.

Not handled (refused by `moe_blocks`): gpt-oss (transposed, interleaved experts with biases) and DeepSeek-V3
(group-limited sigmoid routing with a score-correction bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import StructureError

#: config keys of the routed-expert count (one is the attribute, the others its aliases)
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


@dataclass(eq=False)
class MoEBlock:
    """One sparse MoE block: its router and its fused experts."""

    name: str
    router: nn.Module
    experts: nn.Module

    @property
    def num_experts(self) -> int:
        return int(self.router.weight.shape[0])


def _is_moe(module: nn.Module) -> bool:
    experts, router = getattr(module, "experts", None), getattr(module, "gate", None) or getattr(module, "router",
                                                                                                  None)
    return (experts is not None and router is not None and isinstance(getattr(experts, "gate_up_proj", None),
                                                                       torch.Tensor)
            and getattr(experts, "gate_up_proj").dim() == 3)


def moe_blocks(model: nn.Module) -> list[MoEBlock]:
    """Every sparse MoE block of ``model`` (dense layers of mixed models are skipped); refuses layouts it cannot
    slice exactly."""
    found = []
    for name, module in model.named_modules():
        if not _is_moe(module):
            continue
        router = getattr(module, "gate", None) or module.router
        if getattr(module.experts, "is_transposed", False) or getattr(router, "bias", None) is not None:
            raise StructureError(f"{name}: {type(module).__name__} routes with biases over transposed experts "
                                 "(gpt-oss); granularity 'experts' supports Mixtral, Qwen2-MoE, Qwen3-MoE, "
                                 "Qwen3-Next and OLMoE.")
        if hasattr(router, "e_score_correction_bias"):
            raise StructureError(f"{name}: {type(module).__name__} routes by expert groups with a score correction "
                                 "(DeepSeek-V3); removing experts would change the groups. granularity 'experts' "
                                 "supports Mixtral, Qwen2-MoE, Qwen3-MoE, Qwen3-Next and OLMoE.")
        found.append(MoEBlock(name, router, module.experts))
    return found


def top_k(model: nn.Module) -> int:
    """Experts each token is routed to (``num_experts_per_tok``)."""
    return int(getattr(model.config, "num_experts_per_tok", 1))


def expert_output(experts: nn.Module, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert ``e`` of fused ``experts`` applied to tokens ``x`` ``[tokens, hidden]`` (the SwiGLU the module runs)."""
    gate, up = F.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
    return F.linear(experts.act_fn(gate) * up, experts.down_proj[e])


@torch.no_grad()
def remove_experts(model: nn.Module, keep: dict[str, torch.Tensor]) -> None:
    """Keep, in every MoE block named in ``keep``, the experts whose entry is True (the same count everywhere)."""
    counts = {int(k.sum()) for k in keep.values()}
    if len(counts) != 1:
        raise StructureError(f"Every MoE block must keep the same number of experts (the config states one); got "
                             f"{sorted(counts)}.")
    kept = counts.pop()
    for block in moe_blocks(model):
        if block.name not in keep:
            continue
        idx = keep[block.name].nonzero().flatten().to(block.router.weight.device)
        for name, p in list(block.experts.named_parameters(recurse=False)):
            setattr(block.experts, name, nn.Parameter(p.data.index_select(0, idx).clone(),
                                                      requires_grad=p.requires_grad))
        block.router.weight = nn.Parameter(block.router.weight.data.index_select(0, idx).clone(),
                                           requires_grad=block.router.weight.requires_grad)
        for owner in (block.experts, block.router):
            if hasattr(owner, "num_experts"):
                owner.num_experts = kept
    if hasattr(model, "num_experts"):
        model.num_experts = kept
    for key in EXPERT_COUNT_KEYS:
        if hasattr(model.config, key):
            setattr(model.config, key, kept)
