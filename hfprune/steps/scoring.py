"""Calibrate, score and select: the engine's masking step, either for the whole model at once (full calibration)
or block by block (sequential). Used by `hfprune.engine.pruner.Pruner.step` and the width/depth unit scores."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from ..calibration.collector import collect_statistics
from ..calibration.offload import offload_of, to_device
from ..calibration.sequential import block_of, block_statistics, find_blocks
from ..config.pruning_config import PruningConfig
from ..criteria import Criterion
from ..errors import ConfigError
from .masks import PackedMasks
from .selection import Selection, protect_scores, structured_masks, unstructured_masks
from ..structure import Layer, UnitGroup


def compute_masks(model: nn.Module, criterion: Criterion, layers: dict[str, Layer], groups: list[UnitGroup] | None,
                  batches: list, progress: bool = True, removed: dict[str, torch.Tensor] | None = None,
                  timings: dict[str, float] | None = None, config: PruningConfig | None = None,
                  protected: dict[str, torch.Tensor] | None = None) -> tuple[Selection, dict, dict]:
    """Calibrate, score and select on the current weights: (selection, scores, statistics).

    ``removed`` (True = already removed, per layer or group) stays removed; ``protected`` (True = keep: per group
    ``[units]``, per layer ``[in]`` columns) is kept unless already removed (`hfprune.steps.protection`). ``config`` (default: the criterion's)
    sets the sparsity of the selection. ``timings`` accumulates the seconds of each phase.
    """
    timings = {} if timings is None else timings
    for phase in ("calibration", "scoring", "selection"):
        timings.setdefault(phase, 0.0)
    config = config or criterion.config
    observed = criterion.observed_layers(layers, groups)
    removed = removed or {}
    if criterion.config.calibration.mode == "sequential":
        return _sequential_masks(model, criterion, layers, groups, observed, batches, progress, removed, timings,
                                 config, protected or {})
    t = time.perf_counter()
    stats = collect_statistics(model, criterion, layers, observed, batches, progress)
    timings["calibration"] += time.perf_counter() - t
    scores = _scores(criterion, layers, groups, stats, removed, timings, protected or {})
    return select(criterion, layers, groups, scores, removed, timings, config), scores, stats


def _scores(criterion: Criterion, layers: dict[str, Layer], groups: list[UnitGroup] | None, stats: dict,
            removed: dict[str, torch.Tensor], timings: dict[str, float],
            protected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scores per layer (``[out, in]``) or per group (``[units]``); protected entries get +inf, already-removed
    ones -inf (removed wins)."""
    t = time.perf_counter()
    if groups is None:
        scores = {n: criterion.weight_scores(l, stats.get(n, {})) for n, l in layers.items()}
    else:
        scores = {g.name: criterion.unit_scores(g, stats, layers) for g in groups}
    if protected:
        scores = protect_scores(scores, protected)
    for n in scores.keys() & removed.keys():
        scores[n] = scores[n].masked_fill(removed[n].to(scores[n].device), -math.inf)
    timings["scoring"] += time.perf_counter() - t
    return scores


def select(criterion: Criterion, layers: dict[str, Layer], groups: list[UnitGroup] | None, scores: dict,
            removed: dict[str, torch.Tensor], timings: dict[str, float], config: PruningConfig) -> Selection:
    t = time.perf_counter()
    if groups is None:
        overrides = {n: m for n in layers if (m := criterion.removal_mask(layers[n], scores[n])) is not None}
        selection = unstructured_masks(scores, config, criterion.compares_rows, overrides)
    else:
        selection = structured_masks(scores, groups, config)
    for n in selection.masks.keys() & removed.keys():
        selection.masks[n] = selection.masks[n] & ~removed[n].cpu()
    timings["selection"] += time.perf_counter() - t
    return selection


def _sequential_masks(model: nn.Module, criterion: Criterion, layers: dict[str, Layer],
                      groups: list[UnitGroup] | None, observed: list[str], batches: list, progress: bool,
                      removed: dict[str, torch.Tensor], timings: dict[str, float],
                      config: PruningConfig, protected: dict[str, torch.Tensor]) -> tuple[Selection, dict, dict]:
    """Block by block: statistics of one block (`block_statistics`), its scores and masks, then the next block.

    Kept across blocks: masks; per-unit scores (structured: small; global scope selects once all are in);
    statistics only where compensation needs them (elimination-compensation with the option output='layer': two vectors
    per layer). Per-weight scores and the other statistics are dropped after each block, and unstructured masks
    are stored one bit per weight (`PackedMasks`); the returned scores are empty for unstructured runs.
    """
    prefix, blocks = find_blocks(model)
    units = {g.name: g for g in groups} if groups is not None else layers
    members = {n: [c.layer for c in g.couplings if c.layer in layers] for n, g in units.items()} \
        if groups is not None else {n: [n] for n in layers}
    where = block_of(list(layers), prefix, len(blocks))
    home = {n: where[ls[0]] if ls and len({where[l] for l in ls}) == 1 else None for n, ls in members.items()}
    split = sorted(n for n, h in home.items() if h is None and set(members[n]) & set(observed))
    if split:
        raise ConfigError(f"calibration.mode='sequential': the units {split} span several blocks or lie outside "
                          f"{prefix}.N; use calibration.mode='full'.")
    keep_stats = criterion.compensates
    deferred = groups is not None and config.scope == "global"
    selection = Selection({} if groups is not None else PackedMasks())
    scores: dict[str, torch.Tensor] = {}
    kept: dict = {}
    pending = set(units)
    offload, cpu = offload_of(config), torch.device("cpu")

    def decide(names: list[str], stats: dict) -> None:
        part = [units[n] for n in names] if groups is not None else None
        sub = {n: layers[n] for n in names} if groups is None else layers
        s = _scores(criterion, sub, part, stats, removed, timings, protected)
        if offload.active:  # scored on the execution device; selected and kept on the CPU with the model
            s = to_device(s, cpu)
        if groups is not None:
            scores.update(s)
        if not deferred:
            chosen = select(criterion, sub, part, s, removed, timings, config)
            selection.masks.update(chosen.masks)
            selection.forced_min.update(chosen.forced_min)
        pending.difference_update(names)

    t = time.perf_counter()
    for i, stats in block_statistics(model, criterion, layers, observed, batches, progress, offload):
        timings["calibration"] += time.perf_counter() - t
        decide([n for n in units if home[n] == i], stats)
        if keep_stats:
            kept.update(to_device(stats, cpu) if offload.active else stats)
        del stats
        t = time.perf_counter()
    for i in sorted({home[n] for n in pending}, key=lambda i: -1 if i is None else i):  # data-free, block by block
        decide([n for n in sorted(pending) if home[n] == i], {})
    if deferred:
        selection = select(criterion, layers, groups, scores, removed, timings, config)
    return selection, scores, kept
