"""The width/depth step: whole blocks, residual channels (with FFN neurons and heads beside them) or a parameter
target, checked before any work, then scored once, searched and removed in one step.

The peer of `hfprune.engine.unit_step.UnitStep` behind the same methods, so the `Pruner` drives either without
knowing which; it drives `hfprune.width_depth.plan` (scores and removals) and `hfprune.width_depth.search` (the
`target_params` search), neither of which imports it.
"""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from ..config.pruning_config import PruningConfig
from ..criteria import criterion_class
from ..errors import ConfigError
from ..report.measure import count_params
from ..report.pruning_report import LayerReport
from ..steps.compaction import Compaction
from ..steps.selection import Selection
from ..structure.units import UNIT_AXES
from ..utils.distributed import broadcast_object
from .plan import (Plan, PlanReconstruction, compute_scores, criterion_label, initial_plan, prune_to_plan,
                   width_multiples)
from .scores import BLOCK_SCORES, CHANNEL_SCORES, EXPERT_SCORES
from .search import check_target, choice_reason, search_target, tolerance


class WidthDepthStep:
    """Blocks, residual channels or a parameter target: one step, removed as it runs (compaction only reads the
    result)."""

    # the unit step's state, empty here: the axes are not masked, they are removed
    criterion = None
    groups = None

    @staticmethod
    def applies(config: PruningConfig) -> bool:
        return config.prunes_width_depth

    @staticmethod
    def needs_data(config: PruningConfig) -> str | None:
        """What needs calibration batches (None: nothing): a data-driven block or channel score, the norms' RMS
        rescaling, the target search (scored on calibration loss), or a data-driven criterion for neurons / heads."""
        wd = config.width_depth
        if "layers" in config.parts and BLOCK_SCORES[wd.block_score].needs_data:
            return f"width_depth.block_score={wd.block_score!r}"
        if "hidden" in config.parts and CHANNEL_SCORES[wd.channel_score].needs_data:
            return f"width_depth.channel_score={wd.channel_score!r}"
        if "hidden" in config.parts and wd.rescale_norms:
            return "width_depth.rescale_norms=True"
        if "experts" in config.parts and EXPERT_SCORES[wd.expert_score].needs_data:
            return f"width_depth.expert_score={wd.expert_score!r}"
        if wd.target_params is not None:
            return "width_depth.target_params (its search is scored on calibration loss)"
        if any(p in UNIT_AXES for p in config.parts) and criterion_class(config.criterion).needs_data:
            return f"criterion {config.criterion!r}"
        if config.reconstruction.method == "weights":
            return "reconstruction.method='weights'"
        return None

    @staticmethod
    def check(model: nn.Module, config: PruningConfig) -> None:
        """Check every axis (and the target) against ``model``, before any work (raises `ConfigError`)."""
        if config.protection.mode not in ("none", "auto"):
            raise ConfigError(f"PruningConfig.protection.mode={config.protection.mode!r} is not built for "
                              f"granularity {config.granularity!r} (blocks / residual channels) yet; set it to "
                              "'none'.")
        initial_plan(model, config)
        target = config.width_depth.target_params_count
        if target is not None:
            check_target(model, config, target)

    def __init__(self, model: nn.Module, config: PruningConfig, example_inputs: Any, world_size: int,
                 progress: bool) -> None:
        self.model, self.config, self.progress = model, config, progress
        self.plan: Plan = initial_plan(model, config)
        self.target = config.width_depth.target_params_count
        self.tolerance = tolerance(model, config, self.target) if self.target is not None else 0.01
        self.label = criterion_label(config)
        self.layers: dict[str, Any] = {}
        self.masks: dict[str, Any] = {}
        self.result: Compaction | None = None
        self.reconstruction: PlanReconstruction | None = None
        self.multiples: dict[str, int] = {}

    def run(self, sparsity: float, batches: list, timings: dict[str, float],
            already: bool) -> tuple[Selection, float]:
        """Score every axis once, search the plan for the target (if any), and remove. The sparsity reached is the
        share of parameters removed (the fractions differ per axis); the search's candidates and choice are kept
        under ``"target_params"`` of the kept units."""
        model, config = self.model, self.config
        before = count_params(model)[0]
        t = time.perf_counter()
        scores = compute_scores(model, config, batches, self.progress)
        timings["scoring"] = timings.get("scoring", 0.0) + time.perf_counter() - t
        plan, search = self.plan, None
        refit = config.reconstruction.method == "weights"
        if self.target is not None:
            t = time.perf_counter()
            plan, candidates = search_target(model, config, self.target, scores, batches, refit)
            plan, candidates = broadcast_object((plan, candidates))  # one choice on every process, ties included
            search = {"target": self.target, "chosen": plan.describe(),
                      "reason": choice_reason(plan, candidates, self.target, len(batches), self.tolerance),
                      "candidates": [c.describe() for c in candidates]}
            timings["search"] = time.perf_counter() - t
        self.multiples = width_multiples(model, config, plan)  # of the original widths, before they change
        t = time.perf_counter()
        self.result, self.reconstruction = prune_to_plan(model, config, plan, scores, batches if refit else None,
                                                         self.progress)
        timings["compaction"] = time.perf_counter() - t
        if self.reconstruction is not None:
            timings["reconstruction"] = self.reconstruction.seconds
            timings["compaction"] -= self.reconstruction.seconds
        if search is not None:
            self.result.kept["target_params"] = search
        return Selection({}), round(1 - count_params(model)[0] / before, 4)

    def compact(self) -> Compaction:
        if self.result is None:
            raise ConfigError("Pruner.compact() before Pruner.step(): nothing was chosen yet.")
        return self.result

    @property
    def changes_shapes(self) -> bool:
        return self.result is not None

    def kept_units(self) -> dict[str, dict[str, Any]]:
        return self.result.kept if self.result is not None else {}

    def layer_reports(self) -> list[LayerReport]:
        return [LayerReport(k, v["kind"], v["total"], v["kept"]) for k, v in self.kept_units().items()
                if "kind" in v]

    def report_sections(self) -> dict[str, Any]:
        return {"reconstruction": self.reconstruction.to_dict() if self.reconstruction else {},
                "width_multiples": self.multiples,
                "experts_removed": {k: v["removed"] for k, v in self.kept_units().items()
                                    if isinstance(v, dict) and v.get("kind") == "experts"}}

    def warnings(self) -> list[str]:
        after = count_params(self.model)[0]
        if self.target is not None and after < (1 - self.tolerance) * self.target:
            return [f"target_params={self.target:,}: the closest architecture found has {after:,} parameters (more "
                    f"than {self.tolerance:.1%} below the target)"]
        return []
