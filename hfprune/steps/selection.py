"""Scores to keep-masks: local or global ranking, N:M patterns, rounding, never emptying a layer.

Masks are boolean, True = keep: ``[out, in]`` per layer (unstructured) or ``[num_units]`` per group (structured).
Ties are broken by index so that the same scores always give the same masks on every process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..config.pruning_config import PruningConfig
from ..errors import ConfigError
from ..structure import UnitGroup
from ..structure.groups import kept_count


@dataclass
class Selection:
    masks: dict[str, torch.Tensor]
    forced_min: set[str] = field(default_factory=set)  # groups/layers that kept `min_units` instead of nothing
    #: groups where protection kept more units than the sparsity leaves: name -> (units the sparsity keeps, kept)
    over_protected: dict[str, tuple[int, int]] = field(default_factory=dict)


def _keep_protected(scores: torch.Tensor, keep: int) -> int:
    """Units kept: at least every protected unit (score +inf, `protect_scores`): protection is a promise, so a
    group whose protected units outnumber what the sparsity leaves keeps them all and reaches a lower sparsity."""
    return max(keep, int(torch.isposinf(scores).sum()))


def _keep_top_rows(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the ``keep`` highest scores of each row of a 2-D tensor; ties go to the lower index (what a
    stable descending sort keeps). One k-th value per row instead of a full sort: selection is linear in size."""
    s = scores.detach().cpu()
    s = s if s.dtype == torch.float64 else s.float()
    n = s.shape[1]
    if keep <= 0 or keep >= n:
        return torch.full(s.shape, keep > 0, dtype=torch.bool)
    threshold = torch.kthvalue(s, n - keep + 1, dim=1, keepdim=True).values  # the keep-th highest
    mask = s > threshold
    ties = s == threshold
    mask |= ties & (ties.cumsum(dim=1) <= keep - mask.sum(dim=1, keepdim=True))
    return mask


def keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of the ``keep`` highest scores (stable: lower index wins ties)."""
    return _keep_top_rows(scores.reshape(1, -1), keep).view(scores.shape)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Remove the ``n`` lowest of every ``m`` consecutive inputs of each output row."""
    out, inp = scores.shape
    if inp % m:
        raise ConfigError(f"N:M pattern {n}:{m} needs layer input sizes divisible by {m}; a layer has {inp}.")
    blocks = scores.reshape(out, inp // m, m).double().cpu()
    order = torch.argsort(blocks, dim=-1, stable=True)
    mask = torch.ones_like(blocks, dtype=torch.bool)
    mask.scatter_(-1, order[..., :n], False)
    return mask.view(out, inp)


def unstructured_masks(scores: dict[str, torch.Tensor], config: PruningConfig, per_row: bool,
                       overrides: dict[str, torch.Tensor] | None = None) -> Selection:
    """Weight masks. ``per_row`` compares within output rows (Wanda); ``overrides`` are criterion-chosen removals."""
    overrides = overrides or {}
    masks: dict[str, torch.Tensor] = {}
    nm = config.nm
    if nm:
        return Selection({n: nm_mask(s, *nm) for n, s in scores.items()})
    if config.scope == "global" and not per_row:
        ranked = {n: s for n, s in scores.items() if n not in overrides}
        flat = torch.cat([s.detach().flatten().cpu() for s in ranked.values()]) if ranked else torch.empty(0)
        keep = keep_top(flat, flat.numel() - int(round(config.sparsity * flat.numel())))
        for (n, s), mask in zip(ranked.items(), keep.split([s.numel() for s in ranked.values()])):
            masks[n] = mask.view(s.shape)
    else:
        for n, s in scores.items():
            if per_row:
                masks[n] = _keep_top_rows(s, s.shape[1] - int(round(config.sparsity * s.shape[1])))
            else:
                masks[n] = keep_top(s, s.numel() - int(round(config.sparsity * s.numel())))
    for n, removed in overrides.items():
        masks[n] = ~removed.cpu()
    forced = set()
    for n, mask in masks.items():  # never empty a layer
        if not mask.any():
            masks[n] = keep_top(scores[n], config.min_units)
            forced.add(n)
    return Selection(masks, forced)


def check_head_ratio(group: UnitGroup, config: PruningConfig) -> None:
    """Under GQA a head ratio must come out as a whole number of KV groups (or query heads per group)."""
    if "gqa" not in group.meta:
        return
    s = config.sparsity_for("heads")
    units = s * group.num_units
    if abs(units - round(units)) > 0.1:
        what = "KV groups" if group.meta["gqa"] == "kv_groups" else "query heads per KV group"
        raise ConfigError(f"Head sparsity {s:g} of {group.num_units} {what} is {units:.2f} {what}, not a whole "
                          f"number; use a multiple of 1/{group.num_units}, or gqa_mode="
                          f"{'query_heads' if group.meta['gqa'] == 'kv_groups' else 'kv_groups'}.")


def structured_masks(scores: dict[str, torch.Tensor], groups: list[UnitGroup], config: PruningConfig) -> Selection:
    """Unit masks per group; local = same fraction per group, global = one ranking per unit kind."""
    masks: dict[str, torch.Tensor] = {}
    forced: set[str] = set()
    over: dict[str, tuple[int, int]] = {}
    by_name = {g.name: g for g in groups}
    if config.scope == "local":
        for g in groups:
            keep = kept_count(g, config.sparsity_for(g.kind) * g.num_units, config.min_units)
            kept = _keep_protected(scores[g.name], keep)
            if kept > keep:
                over[g.name] = (keep, kept)
            masks[g.name] = keep_top(scores[g.name], kept)
    else:
        for kind in {g.kind for g in groups}:
            names = [g.name for g in groups if g.kind == kind]
            flat = torch.cat([scores[n].double().cpu() for n in names])
            keep_total = flat.numel() - int(round(config.sparsity_for(kind) * flat.numel()))
            keep_all = keep_top(flat, keep_total)
            for n, part in zip(names, torch.split(keep_all, [by_name[n].num_units for n in names])):
                want = int(part.sum())
                keep = kept_count(by_name[n], by_name[n].num_units - want, config.min_units)
                if want < config.min_units:
                    forced.add(n)
                kept = _keep_protected(scores[n], keep)
                if kept > keep:
                    over[n] = (keep, kept)
                masks[n] = keep_top(scores[n], kept)
    for g in groups:
        if config.scope == "local" and config.sparsity_for(g.kind) * g.num_units > g.num_units - config.min_units:
            forced.add(g.name)
    return Selection(masks, forced, over)


def protect_scores(scores: dict[str, torch.Tensor], protected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scores with protected units set to +inf, so that every selection rule keeps them (hfprune extension,
    `hfprune.steps.protection`): ``protected[name]`` is ``[units]`` for a group's scores, ``[in]`` (input columns) for a
    layer's ``[out, in]`` scores. Names without protection keep their scores object unchanged."""
    out = dict(scores)
    for n, p in protected.items():
        if n not in out or not p.any():
            continue
        s = out[n]
        p = p.to(s.device)
        out[n] = s.masked_fill(p if s.dim() == 1 else p.unsqueeze(0).expand_as(s), math.inf)
    return out
