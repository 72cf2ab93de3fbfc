"""Masks while training: chosen by the engine (`hfprune.engine.pruner.Pruner`), as in `prune()`, applied without
changing shapes, kept monotone, saved in checkpoints, and turned into a compacted model at the end.

Each mask update also zeroes the optimizer state (momentum, Adam moments) of the removed entries, so no stale
momentum pushes a removed weight and a resumed run sees the same state; the masks are still re-applied after every
optimizer step because weight decay, gradients through unstructured masks and other optimizers may move them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..engine.pruner import Compaction, Pruner
from ..steps.masks import apply_unit_masks
from ..structure import Layer, UnitGroup

MASKS_FILE = "hfprune_masks.safetensors"
STATE_FILE = "hfprune_state.json"


class TrainingMasks:
    """The current keep-masks of a model being pruned while training (True = keep), one per group or layer.

    The decisions are the engine's (`Pruner.step`); this class adds what training needs: masks applied without
    changing shapes, optimizer state of removed entries zeroed, and checkpoints."""

    def __init__(self, pruner: Pruner) -> None:
        self.pruner = pruner
        self.config = pruner.config
        self._dropped: list[tuple[nn.Parameter, torch.Tensor]] = []

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return self.pruner.masks

    @property
    def sparsity(self) -> float:
        return self.pruner.sparsity

    @property
    def groups(self) -> list[UnitGroup] | None:
        return self.pruner.groups

    @property
    def layers(self) -> dict[str, Layer]:
        return self.pruner.layers

    # --- choosing masks -----------------------------------------------------------------------------------------
    def update(self, model: nn.Module, sparsity: float, optimizer: Any = None) -> bool:
        """Prune to ``sparsity`` scored on the current weights (already removed units stay removed); False when
        there is nothing to do."""
        if sparsity <= self.sparsity:
            return False
        self.pruner.step(sparsity)
        self.set_masks(model, self.pruner.masks, sparsity)
        if optimizer is not None:
            self.zero_optimizer_state(optimizer)
        return True

    def set_masks(self, model: nn.Module, masks: dict[str, torch.Tensor], sparsity: float) -> None:
        """Adopt ``masks`` (e.g. from a checkpoint), derive the per-parameter masks and apply them."""
        self.pruner.adopt(masks, sparsity)
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
    def compact(self) -> Compaction:
        """Physically remove masked units and rewrite the config (the engine's `Pruner.compact`)."""
        self.apply()
        self._dropped = []
        return self.pruner.compact()

    # --- checkpoints --------------------------------------------------------------------------------------------
    def save(self, folder: str, global_step: int) -> None:
        os.makedirs(folder, exist_ok=True)
        save_file({n: m.to(torch.uint8).contiguous() for n, m in self.masks.items()}, os.path.join(folder, MASKS_FILE))
        with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump({"sparsity": self.sparsity, "global_step": global_step, "schedule": self.config.training.schedule,
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
