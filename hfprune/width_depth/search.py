"""`target_params`: choose the per-axis fractions that reach a parameter budget with the lowest calibration loss.

Candidates (documented in docs/criteria.md):
- depths: ``layers`` removed in {0, Lmax/2, Lmax} (Lmax: the most blocks removable before the target is passed by
  depth alone), or only the smallest sufficient count when ``layers`` is the only axis;
- width mixes: with both ``hidden`` and ``neurons``, fractions ``s * (1, 1)``, ``s * (1, 0.5)``, ``s * (0.5, 1)``
  (hidden, neurons); the one present otherwise;
- heads: 0 and one KV group (or one head) removed, when ``heads`` is pruned;
- for each, the smallest common scale ``s`` whose architecture is at or below the target (bisection on the exact
  parameter count of a meta-device skeleton pruned with the same code, so no weight is touched); with both
  ``hidden`` and ``neurons`` the neuron fraction is then lowered again (bisection, width fixed) because residual
  widths move in coarse steps (multiples of the head count).
Candidates within 1% below the target are pruned for real (on a copy, with the scores of the unpruned model) and
scored by calibration loss; the lowest loss wins. Never above the target.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
from torch import nn

from ..config.pruning_config import PruningConfig
from .blocks import block_list
from ..errors import ConfigError
from ..structure.residual import residual_stream
from ..calibration.forward import lm_loss
from .plan import Plan, Scores, apply_plan, hidden_multiple

_MIXES = ((1.0, 1.0), (1.0, 0.5), (0.5, 1.0))
_BISECTION_STEPS = 12
_MAX_WIDTH_FRACTION = 0.9


def skeleton(model: nn.Module) -> nn.Module:
    """The same architecture on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        return type(model)(copy.deepcopy(model.config))


def stored_params(model: nn.Module) -> int:
    """Parameters counted once each (tied weights once), meta tensors included."""
    seen = {id(p): p.numel() for p in model.parameters()}
    return sum(seen.values())


def plan_params(model: nn.Module, config: PruningConfig, plan: Plan) -> int:
    """Exact parameter count of ``model`` after ``plan``, computed on a meta-device skeleton."""
    s = skeleton(model)
    apply_plan(s, config, plan, None)
    return stored_params(s)


def _width_plan(model: nn.Module, config: PruningConfig, base: Plan, scale: float, mix: tuple[float, float]) -> Plan:
    plan = dataclasses.replace(base)
    if "hidden" in config.parts:
        width = residual_stream(model).width
        keep = width - int(round(scale * mix[0] * width))
        r = hidden_multiple(model, config, base.heads)
        plan.hidden = max(r, min(width, int(math.ceil(keep / r) * r)))
    if "neurons" in config.parts:
        plan.neurons = scale * mix[1]
    return plan


def _fit(model: nn.Module, config: PruningConfig, base: Plan, target: int, mix: tuple[float, float]) -> Plan | None:
    """The least-pruned width scale for ``base`` at or below ``target`` (None when even the widest cut is above)."""
    hi_plan = _width_plan(model, config, base, _MAX_WIDTH_FRACTION / max(mix), mix)
    if plan_params(model, config, hi_plan) > target:
        return None
    lo, hi = 0.0, _MAX_WIDTH_FRACTION / max(mix)
    if plan_params(model, config, _width_plan(model, config, base, lo, mix)) <= target:
        hi = lo
    for _ in range(_BISECTION_STEPS):
        if hi - lo < 1e-4:
            break
        mid = (lo + hi) / 2
        if plan_params(model, config, _width_plan(model, config, base, mid, mix)) <= target:
            hi = mid
        else:
            lo = mid
    plan = _width_plan(model, config, base, hi, mix)
    if "neurons" in config.parts and "hidden" in config.parts:  # refine the finer axis with the width fixed
        lo, hi = 0.0, plan.neurons
        for _ in range(_BISECTION_STEPS):
            mid = (lo + hi) / 2
            if plan_params(model, config, dataclasses.replace(plan, neurons=mid)) <= target:
                hi = mid
            else:
                lo = mid
        plan.neurons = hi
    plan.params = plan_params(model, config, plan)
    return plan


def _key(plan: Plan) -> tuple:
    """Candidates that differ only by float noise in a fraction are the same architecture."""
    return plan.layers, plan.hidden, round(plan.neurons, 4), plan.heads, plan.params


def _head_fractions(model: nn.Module, config: PruningConfig) -> list[float]:
    if "heads" not in config.parts:
        return [0.0]
    cfg = model.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head")
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    units = kv if kv < heads and config.gqa_mode == "kv_groups" else (heads // kv if kv < heads else heads)
    return [0.0, 1.0 / units] if units > 1 else [0.0]


def _first_at_or_below(count, n: int, target: int) -> int:
    """Smallest k in [0, n) with ``count(k) <= target`` (``count`` decreasing in k), n when none."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def candidates(model: nn.Module, config: PruningConfig, target: int) -> list[Plan]:
    """Candidate architectures at or below ``target`` (see the module docstring)."""
    parts = config.parts
    width_axes = "hidden" in parts or "neurons" in parts
    depths = [0]
    if "layers" in parts:
        n = len(block_list(model)[1])
        first = _first_at_or_below(lambda k: plan_params(model, config, Plan(layers=k)), n, target)
        if not width_axes and "heads" not in parts:
            depths = [first] if first < n else []
        else:
            lmax = max(first - 1, 0)  # the most blocks removable with depth alone still above the target
            depths = sorted({0, lmax // 2, lmax})
    mixes = _MIXES if "hidden" in parts and "neurons" in parts else _MIXES[:1]
    out = []
    for layers in depths:
        for heads in _head_fractions(model, config):
            base = Plan(layers=layers, heads=heads)
            if not width_axes:
                base.params = plan_params(model, config, base)
                out += [base] if base.params <= target else []
                continue
            for mix in mixes:
                plan = _fit(model, config, base, target, mix)
                if plan is not None and all(_key(plan) != _key(c) for c in out):
                    out.append(plan)
    return out


def check_target(model: nn.Module, config: PruningConfig, target: int) -> None:
    """Bad targets fail before any calibration: at or above the model's size, below what the parts that are not
    pruned (token embeddings, LM head) need, or beyond every candidate architecture."""
    total = stored_params(model)
    if target >= total:
        raise ConfigError(f"target_params={target:,} is not below the model's {total:,} parameters; nothing to "
                          "prune. Give a smaller target.")
    floor = sum(p.numel() for p in {id(p): p for m in model.modules() if isinstance(m, nn.Embedding)
                                    for p in m.parameters()}.values())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and all(head.weight is not m.weight for m in model.modules() if isinstance(m, nn.Embedding)):
        floor += head.weight.numel()
    if "hidden" not in config.parts and target < floor:
        raise ConfigError(f"target_params={target:,} is below the {floor:,} parameters of the embeddings (and LM "
                          f"head), which granularity {config.granularity!r} does not shrink; add 'hidden' or give a "
                          "larger target.")
    if not candidates(model, config, target):  # parameter counts of meta-device skeletons: shapes only
        raise _unreachable(config, target)


def _unreachable(config: PruningConfig, target: int) -> ConfigError:
    return ConfigError(f"No architecture of granularity {config.granularity!r} reaches "
                       f"width_depth.target_params={target:,} (widths up to {_MAX_WIDTH_FRACTION:.0%} removed); add "
                       "an axis or give a larger target.")


def search_target(model: nn.Module, config: PruningConfig, target: int, scores: Scores,
                  batches: list) -> tuple[Plan, list[Plan]]:
    """(chosen plan, every candidate with its parameter count and, within 1% of the target, its loss)."""
    found = candidates(model, config, target)
    if not found:
        raise _unreachable(config, target)
    close = [c for c in found if c.params >= 0.99 * target]
    if len(close) > 1 or (close and batches):
        for c in close:
            trial = copy.deepcopy(model)
            apply_plan(trial, config, c, scores)
            c.loss = lm_loss(trial, batches) if batches else None
            del trial
        best = min(close, key=lambda c: (math.inf if c.loss is None else c.loss, -c.params))
    else:
        best = max(found, key=lambda c: c.params)
    return best, found
