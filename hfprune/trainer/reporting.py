"""The `PruningReport` of a `PruningTrainer` run: the object `prune()` returns, built from the masks in force.

Parameters and MACs of the dense model are measured when the trainer is built (before any pruning); the "after"
numbers are measured on the model as it is saved (compacted after `train()`, masked while training or with
``keep_masks=True``), so the report and the card always describe the weights beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..measure import count_macs, count_params, dummy_input
from ..prune import _layer_reports
from ..report import PruningReport
from ..selection import Selection
from .masks import TrainingMasks


@dataclass
class Baseline:
    """The dense model's size, and the input its MACs were counted on (None when no input could be built)."""

    params: int
    macs: int
    inputs: Any
    shape: list[int]
    warning: str | None = None


def measure_baseline(model: nn.Module, seq_len: int, example_inputs: Any = None) -> Baseline:
    params, _ = count_params(model)
    try:
        inputs, shape = dummy_input(model, seq_len, example_inputs)
    except ValueError as e:
        return Baseline(params, 0, None, [], f"MACs were not counted: {e}")
    return Baseline(params, count_macs(model, inputs), inputs, shape)


def training_report(model: nn.Module, masks: TrainingMasks, baseline: Baseline, loader: str,
                    timings: dict[str, float], evaluation: dict[str, dict[str, float]] | None = None) -> PruningReport:
    """What the run pruned so far, the size and MACs of ``model`` now against the dense baseline, and the
    trainer's evaluation metrics (metric -> {"before", "after"})."""
    config = masks.config
    cfg = getattr(model, "config", None)
    params_after, nonzero_after = count_params(model)
    macs_after = count_macs(model, baseline.inputs) if baseline.inputs is not None else 0
    warnings = list(masks.calib.warnings) if masks.calib else []
    warnings += [f"{n} would have lost every unit; kept {config.min_units}" for n in sorted(masks.forced_min)]
    if baseline.warning:
        warnings.append(baseline.warning)
    return PruningReport(
        base_model=getattr(cfg, "_name_or_path", None) or None,
        model_type=getattr(cfg, "model_type", type(model).__name__),
        criterion=config.criterion, granularity=config.granularity, sparsity=masks.sparsity, scope=config.scope,
        params_before=baseline.params, params_after=params_after, nonzero_after=nonzero_after,
        macs_before=baseline.macs, macs_after=macs_after, macs_input_shape=baseline.shape, loader=loader,
        layers=_layer_reports(masks.groups, Selection(masks.masks, masks.forced_min), {}),
        timings={**masks.timings, **timings},
        calibration=masks.calib.describe(config.seq_len) if masks.calib else {"source": "none"},
        warnings=warnings,
        evaluation={k: dict(v) for k, v in (evaluation or {}).items()},
    )
