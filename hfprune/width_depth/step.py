"""The engine's width/depth step: whole blocks, residual channels (with FFN neurons and heads beside them) or a
parameter target, checked before any work, then scored once, searched and removed in one step.

Moved out of `hfprune.engine.pruner` to keep the engine short; it drives `hfprune.width_depth.plan` (scores and removals) and
`hfprune.width_depth.search` (the `target_params` search), neither of which imports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..steps.compaction import Loader
from ..config.pruning_config import PruningConfig
from ..criteria import get_criterion
from ..errors import ConfigError
from .search import check_target, search_target
from .plan import Plan, apply_plan, axis_criterion, compute_scores, initial_plan, unit_config


@dataclass
class WidthDepthStep:
    """What a width/depth run will do, decided before any work: the plan the fractions ask for, the parameter
    target (if any) and whether calibration data is needed."""

    plan: Plan
    target: int | None
    needs_data: bool

    @classmethod
    def prepare(cls, model: nn.Module, config: PruningConfig) -> WidthDepthStep:
        """Check every axis (and the target) against ``model``; raises `ConfigError` before any work."""
        for name in ("reconstruction", "protect"):
            if getattr(config, name) not in ("none", "auto"):
                raise ConfigError(f"PruningConfig.{name}={getattr(config, name)!r} is not built for granularity "
                                  f"{config.granularity!r} (blocks / residual channels) yet; set {name}='none'.")
        plan = initial_plan(model, config)
        target = config.target_params_count
        if target is not None:
            check_target(model, config, target)
        needs = any(axis_criterion(config, a).needs_data for a in ("layers", "hidden") if a in config.parts) \
            or target is not None or ("hidden" in config.parts and config.hidden_rescale_norms)
        ucfg = unit_config(config, plan)
        return cls(plan, target, needs or (ucfg is not None and get_criterion(ucfg).needs_data))

    def run(self, model: nn.Module, config: PruningConfig, batches: list, progress: bool,
            timings: dict[str, float]) -> tuple[Loader, dict[str, Any]]:
        """Score every axis once, search the plan for the target (if any), and remove: (loader, kept per axis; the
        search's candidates and choice under ``"target_params"``)."""
        t = time.perf_counter()
        scores = compute_scores(model, config, batches, progress)
        timings["scoring"] = timings.get("scoring", 0.0) + time.perf_counter() - t
        plan, search = self.plan, None
        if self.target is not None:
            t = time.perf_counter()
            plan, candidates = search_target(model, config, self.target, scores, batches)
            search = {"target": self.target, "chosen": plan.describe(),
                      "candidates": [c.describe() for c in candidates]}
            timings["search"] = time.perf_counter() - t
        t = time.perf_counter()
        done = apply_plan(model, config, plan, scores)
        timings["compaction"] = time.perf_counter() - t
        kept = done["kept"]
        if search is not None:
            kept["target_params"] = search
        return done["loader"], kept
