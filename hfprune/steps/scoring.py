"""Calibrate, score and select: the engine's masking step, either for the whole model at once (full calibration)
or block by block (sequential). Used by `hfprune.engine.pruner.Pruner.step` and the width/depth unit scores."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from ..calibration.collector import collect_statistics, forward_stats_hook
from ..calibration.offload import offload_of, to_device
from ..calibration.sequential import block_of, block_statistics, find_blocks
from ..config.pruning_config import PruningConfig
from ..criteria import Criterion
from ..errors import ConfigError
from .masks import PackedMasks, consumer_layers
from .protection import Protection, finish_measure, measure_hook, protect_from
from .selection import Selection, protect_scores, structured_masks, unstructured_masks
from ..structure import Layer, UnitGroup

CPU = torch.device("cpu")


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
    if criterion.config.calibration.mode != "full":  # one_pass decides inside the refit; alone, it is sequential
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
    """Block by block: statistics of one block (`block_statistics`, on the unpruned model's block inputs), its
    scores and masks, then the next block."""
    selector = BlockSelector(model, criterion, layers, groups, observed, removed, timings, config, protected)
    offload = offload_of(config)
    t = time.perf_counter()
    for i, stats in block_statistics(model, criterion, layers, observed, batches, progress, offload):
        timings["calibration"] += time.perf_counter() - t
        selector.decide_block(i, stats)
        del stats
        t = time.perf_counter()
    return selector.finish()


class BlockSelector:
    """Scores and masks decided one block at a time, from that block's statistics: by `_sequential_masks` (the
    unpruned model's block inputs) and by the one-pass reconstruction (`calibration.mode='one_pass'`, the inputs
    the pruned and refit blocks before it give; `hfprune.reconstruction.refit.reconstruct`).

    Kept across blocks: masks; per-unit scores (structured: small; global scope selects once all are in);
    statistics only where compensation needs them (elimination-compensation with the option output='layer': two
    vectors per layer). Per-weight scores and the other statistics are dropped after each block, and unstructured
    masks are stored one bit per weight (`PackedMasks`); the returned scores are empty for unstructured runs.
    With an active offload, scores computed on the execution device are moved to the CPU before selection.
    """

    def __init__(self, model: nn.Module, criterion: Criterion, layers: dict[str, Layer],
                 groups: list[UnitGroup] | None, observed: list[str], removed: dict[str, torch.Tensor],
                 timings: dict[str, float], config: PruningConfig, protected: dict[str, torch.Tensor],
                 protect: tuple[str, float] | None = None) -> None:
        prefix, blocks = find_blocks(model)
        self.units = {g.name: g for g in groups} if groups is not None else layers
        members = {n: [c.layer for c in g.couplings if c.layer in layers] for n, g in self.units.items()} \
            if groups is not None else {n: [n] for n in layers}
        where = block_of(list(layers), prefix, len(blocks))
        self.home = {n: where[ls[0]] if ls and len({where[l] for l in ls}) == 1 else None
                     for n, ls in members.items()}
        split = sorted(n for n, h in self.home.items() if h is None and set(members[n]) & set(observed))
        if split:
            raise ConfigError(f"calibration.mode={config.calibration.mode!r}: the units {split} span several blocks "
                              f"or lie outside {prefix}.N; use calibration.mode='full'.")
        self.criterion, self.layers, self.groups, self.removed = criterion, layers, groups, removed
        self.timings, self.config, self.protected = timings, config, protected
        blocks_here = {i for i in where.values() if i is not None}
        self.observed = {i: ns for i in blocks_here if (ns := [n for n in observed if where[n] == i])}
        self.protect = protect  # (mode, threshold): protection detected block by block, in the one pass
        self.protection = Protection() if protect else None
        measured = consumer_layers(layers, groups) if protect else []
        self.measured = {i: ns for i in blocks_here if (ns := [n for n in measured if where[n] == i])}
        self._stats: dict = {}
        self._measure: tuple[dict, dict] = ({}, {})
        self.deferred = groups is not None and config.scope == "global"
        self.selection = Selection({} if groups is not None else PackedMasks())
        self.scores: dict[str, torch.Tensor] = {}
        self.kept: dict = {}
        self.pending = set(self.units)
        self.offload = offload_of(config)

    def watch(self, i: int) -> list[Any]:
        """Hooks (handles for the caller to remove) that gather block ``i``'s criterion statistics, and with
        ``protect`` its protection measures, during the block's next forwards; `decide_block` then uses them."""
        layers, criterion = self.layers, self.criterion
        self._stats = {n: criterion.init_stats(layers[n]) for n in self.observed.get(i, [])}
        handles = [layers[n].module.register_forward_hook(forward_stats_hook(criterion, layers[n], self._stats[n]))
                   for n in self._stats]
        if self.protect:
            self._measure = ({}, {})
            handles += [layers[n].module.register_forward_hook(measure_hook(layers[n], self.protect[0], *self._measure,
                                                                            n)) for n in self.measured.get(i, [])]
        return handles

    def decide_block(self, i: int, stats: dict | None = None) -> None:
        """Score and (unless the ranking is global) select the units of block ``i`` from its statistics (those
        `watch` gathered when ``stats`` is None)."""
        stats = self._stats if stats is None else stats
        names = [n for n in self.units if self.home[n] == i]
        protected = self.protected
        if self.protect:
            mode, threshold = self.protect
            part = [self.units[n] for n in names] if self.groups is not None else None
            found = protect_from(finish_measure(*self._measure, mode), self.layers, part, threshold, mode)
            self.protection.masks.update(found.masks)
            self.protection.ratio.update(found.ratio)
            protected = {**protected, **found.masks}
        self._decide(names, stats, protected)
        self._stats, self._measure = {}, ({}, {})
        if self.criterion.compensates:
            self.kept.update(to_device(stats, CPU) if self.offload.active else stats)

    def finish(self) -> tuple[Selection, dict, dict]:
        """Units no block's statistics reached (data-free criteria), then a global ranking if asked:
        (selection, scores, statistics kept for compensation)."""
        for i in sorted({self.home[n] for n in self.pending}, key=lambda i: -1 if i is None else i):
            self._decide([n for n in sorted(self.pending) if self.home[n] == i], {}, self.protected)
        if self.deferred:
            self.selection = select(self.criterion, self.layers, self.groups, self.scores, self.removed,
                                    self.timings, self.config)
        return self.selection, self.scores, self.kept

    def _decide(self, names: list[str], stats: dict, protected: dict[str, torch.Tensor]) -> None:
        groups, layers = self.groups, self.layers
        part = [self.units[n] for n in names] if groups is not None else None
        sub = {n: layers[n] for n in names} if groups is None else layers
        s = _scores(self.criterion, sub, part, stats, self.removed, self.timings, protected)
        if self.offload.active:  # scored on the execution device; selected and kept on the CPU with the model
            s = to_device(s, CPU)
        if groups is not None:
            self.scores.update(s)
        if not self.deferred:
            chosen = select(self.criterion, sub, part, s, self.removed, self.timings, self.config)
            self.selection.masks.update(chosen.masks)
            self.selection.forced_min.update(chosen.forced_min)
        self.pending.difference_update(names)
