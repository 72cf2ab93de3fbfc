"""Masks while training: chosen by the same calibration, scoring and selection code as `prune()`, applied without
changing shapes, kept monotone, saved in checkpoints, and turned into a compacted model at the end.

Each mask update also zeroes the optimizer state (momentum, Adam moments) of the removed entries, so no stale
momentum pushes a removed weight and a resumed run sees the same state; the masks are still re-applied after every
optimizer step because weight decay, gradients through unstructured masks and other optimizers may move them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from ..calibration.data import CalibrationSet
from ..compaction import compact_units, rewrite_config
from ..config import PruningConfig
from ..masks import apply_unit_masks
from ..prune import _compensate, compute_masks, criterion_for
from ..selection import check_head_ratio
from ..structure import UnitGroup, adapter_for, find_groups, find_layers, target_layers

MASKS_FILE = "hfprune_masks.safetensors"
STATE_FILE = "hfprune_state.json"


class TrainingMasks:
    """The current keep-masks of a model being pruned while training (True = keep), one per group or layer."""

    def __init__(self, model: nn.Module, config: PruningConfig, calib: CalibrationSet | None,
                 example_inputs: Any = None) -> None:
        criterion_for(config)  # fail early when the criterion cannot score the granularity
        self.config = config
        self.calib = calib
        self.adapter = adapter_for(model)
        self.groups: list[UnitGroup] | None = None
        if config.structured:
            self.groups = find_groups(model, config, example_inputs)
            for g in self.groups:
                if g.kind == "heads":
                    check_head_ratio(g, config)
            self.layers = find_layers(model)
            self.masks = {g.name: torch.ones(g.num_units, dtype=torch.bool) for g in self.groups}
        else:
            self.layers = target_layers(model, config)
            self.masks = {n: torch.ones(l.weight_matrix().shape, dtype=torch.bool) for n, l in self.layers.items()}
        self.sparsity = 0.0
        self._dropped: list[tuple[nn.Parameter, torch.Tensor]] = []
        self.forced_min: set[str] = set()  # groups or layers kept at `min_units` by the latest update (report)
        self.timings: dict[str, float] = {}  # seconds per phase, summed over updates (report)

    # --- choosing masks -----------------------------------------------------------------------------------------
    def _config_at(self, sparsity: float) -> PruningConfig:
        head = self.config.head_sparsity
        if head is not None and self.config.sparsity > 0:
            head = head * sparsity / self.config.sparsity
        return dataclasses.replace(self.config, sparsity=sparsity, head_sparsity=head)

    def update(self, model: nn.Module, sparsity: float, optimizer: Any = None, progress: bool = False) -> bool:
        """Prune to ``sparsity`` scored on the current weights (already removed units stay removed); False when
        there is nothing to do."""
        if sparsity <= self.sparsity:
            return False
        criterion = criterion_for(self._config_at(sparsity))
        removed = {n: ~m for n, m in self.masks.items()}
        timings: dict[str, float] = {}
        selection, _, stats = compute_masks(model, criterion, self.layers, self.groups, self.calib, progress, removed,
                                            timings)
        for phase, seconds in timings.items():
            self.timings[phase] = self.timings.get(phase, 0.0) + seconds
        self.forced_min = set(selection.forced_min)
        new = _same_on_every_rank(selection.masks)
        newly_kept = {n: new[n] | removed[n] for n in new}  # compensate only for what this step removes
        _compensate(model, criterion, self.layers, stats, self.groups, newly_kept, self.adapter)
        self.set_masks(model, new, sparsity)
        if optimizer is not None:
            self.zero_optimizer_state(optimizer)
        return True

    def set_masks(self, model: nn.Module, masks: dict[str, torch.Tensor], sparsity: float) -> None:
        """Adopt ``masks`` (e.g. from a checkpoint), derive the per-parameter masks and apply them."""
        self.masks = {n: m.cpu().bool() for n, m in masks.items()}
        self.sparsity = sparsity
        self._dropped = self._parameter_drops(model)
        self.apply()

    @torch.no_grad()
    def _parameter_drops(self, model: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, removed-entries) pairs. For units the coupled slices are found by masking a copy of ones,
        which reuses `apply_unit_masks` exactly (norms, biases, conv and Conv1D layouts included)."""
        if self.groups is None:
            out = []
            for n, m in self.masks.items():
                w = self.layers[n].module.weight
                out.append((w, self.layers[n].from_matrix((~m).to(w.dtype)).to(w.device) != 0))
            return out
        params: dict[int, nn.Parameter] = {}
        for g in self.groups:
            for c in g.couplings:
                module = model.get_submodule(c.layer)
                for p in (getattr(module, "weight", None), getattr(module, "bias", None)):
                    if isinstance(p, nn.Parameter):
                        params[id(p)] = p
        saved = {k: p.detach().clone() for k, p in params.items()}
        for p in params.values():
            p.fill_(1)
        apply_unit_masks(model, self.groups, self.masks)
        drops = {k: p == 0 for k, p in params.items()}
        for k, p in params.items():
            p.copy_(saved[k])
        return [(params[k], d) for k, d in drops.items() if d.any()]

    # --- keeping them applied -----------------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self) -> None:
        """Zero every removed entry (after each optimizer step)."""
        for p, drop in self._dropped:
            p.masked_fill_(drop, 0)

    @torch.no_grad()
    def zero_optimizer_state(self, optimizer: Any) -> None:
        for p, drop in self._dropped:
            for v in optimizer.state.get(p, {}).values():
                if isinstance(v, torch.Tensor) and v.shape == p.shape:
                    v.masked_fill_(drop, 0)

    @property
    def dropped(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, removed entries) pairs, for checks and tests."""
        return self._dropped

    def units(self) -> tuple[int, int]:
        """(kept, total) units (or weights, unstructured) over all groups."""
        return sum(int(m.sum()) for m in self.masks.values()), sum(m.numel() for m in self.masks.values())

    # --- the end of training ------------------------------------------------------------------------------------
    def compact(self, model: nn.Module) -> tuple[str, dict[str, dict[str, Any]]]:
        """Physically remove masked units and rewrite the config: (loader, per-group kept counts)."""
        self.apply()
        loader = "transformers" if hasattr(model, "save_pretrained") else "hfprune"
        if self.groups is None:
            return loader, {}
        compact_units(model, self.groups, self.masks)
        self._dropped = []
        return rewrite_config(model, self.groups, self.masks, self.adapter)

    # --- checkpoints --------------------------------------------------------------------------------------------
    def save(self, folder: str, global_step: int) -> None:
        os.makedirs(folder, exist_ok=True)
        save_file({n: m.to(torch.uint8).contiguous() for n, m in self.masks.items()}, os.path.join(folder, MASKS_FILE))
        with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump({"sparsity": self.sparsity, "global_step": global_step, "schedule": self.config.schedule,
                       "pruning_config": self.config.to_dict()}, f, indent=2, sort_keys=True)

    def load(self, model: nn.Module, folder: str) -> bool:
        """Adopt the masks saved in a checkpoint folder; False when it holds none (a dense checkpoint)."""
        path = os.path.join(folder, MASKS_FILE)
        if not os.path.isfile(path):
            return False
        with open(os.path.join(folder, STATE_FILE), encoding="utf-8") as f:
            state = json.load(f)
        self.set_masks(model, {n: t.bool() for n, t in load_file(path).items()}, state["sparsity"])
        return True


def _same_on_every_rank(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Broadcast rank 0's masks. Statistics are already summed across ranks, so this only guards against
    floating-point ties resolving differently; it also makes the guarantee explicit."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return masks
    out = {}
    for n in sorted(masks):
        t = masks[n].to(torch.uint8)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.broadcast(t, src=0)
        out[n] = t.cpu().bool()
    return out
