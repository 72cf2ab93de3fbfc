"""Widths the next tool can use (hfprune's default, not a criterion's).

Quantizers with group size 128 refuse layers whose width is not a multiple of it (llm-compressor, AWQ, lmdeploy)
and GPU kernels run fastest on multiples of 64, so by default (``round_to="auto"``) every width a language model
keeps is a multiple of a divisor of its original width: 128 for FFN neurons, 64 for the residual stream, halved
until the width allows at least `MIN_STEPS` steps (so a 1,536-neuron FFN moves in steps of 128). Widths under
`MIN_WIDTH` (toy models) keep steps of 1. Attention heads are removed as whole KV groups
(``gqa_mode="kv_groups"``). An integer ``round_to`` replaces all of this with one multiple for every unit kind.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from .groups import UnitGroup

FFN_MULTIPLE = 128
RESIDUAL_MULTIPLE = 64
MIN_STEPS = 8
MIN_WIDTH = 256
_SMALLEST = 8


def is_language_model(model: nn.Module) -> bool:
    """Models that generate text (causal LMs): the ones users quantize and serve."""
    can = getattr(model, "can_generate", None)
    return bool(can()) if callable(can) else False


def preferred_multiple(width: int, preferred: int, base: int = 1) -> int:
    """The largest ``lcm(d, base)`` with ``d`` in ``preferred, preferred / 2, ..., 8`` that divides ``width`` into
    at least `MIN_STEPS` steps; ``base`` (e.g. the head count a residual width must stay a multiple of) when none
    does, or when ``width`` is under `MIN_WIDTH`."""
    d = preferred if width >= MIN_WIDTH else 0
    while d >= _SMALLEST:
        m = math.lcm(d, base)
        if width % m == 0 and width // m >= MIN_STEPS:
            return m
        d //= 2
    return base


def group_multiple(model: nn.Module, group: UnitGroup, round_to: int | str) -> int:
    """The multiple ``group``'s kept count is rounded up to."""
    if round_to != "auto":
        return int(round_to)
    if group.kind == "neurons" and is_language_model(model):
        return preferred_multiple(group.num_units, FFN_MULTIPLE)
    return 1


def residual_multiple(model: nn.Module, width: int, heads: int, round_to: int | str) -> int:
    """The multiple a residual width is rounded to; ``heads``: what it must stay a multiple of (the head counts,
    because Llama-style configs check ``hidden_size % num_attention_heads == 0``)."""
    if round_to != "auto":
        return math.lcm(int(round_to), heads)
    if is_language_model(model):
        return preferred_multiple(width, RESIDUAL_MULTIPLE, heads)
    return heads


def multiples_used(groups: list[UnitGroup], hidden: int | None = None) -> dict[str, Any]:
    """What the report states: the multiple per unit kind (the largest when groups differ)."""
    out: dict[str, Any] = {}
    for g in groups:
        out[g.kind] = max(out.get(g.kind, 1), g.multiple)
    if hidden is not None:
        out["hidden"] = hidden
    return out
