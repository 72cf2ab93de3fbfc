"""The criterion interface: turn calibration statistics and weights into scores. Higher score = keep.

A criterion is a small class registered by name. The calibration engine (``hfprune.calibration``) calls
`Criterion.accumulate` once per batch for every layer it observes, with that layer's input (and, when
`Criterion.grad_mode` asks, the gradients flowing into its output); the criterion keeps *sufficient statistics*
only: sums and matrix products whose size does not grow with the number of samples. Statistics are plain
tensors in a dict so they can be summed across processes.

Scores:
- `weight_scores(layer, stats)` gives one score per weight as an ``[out, in]`` matrix (unstructured, N:M);
- `unit_scores(group, stats, layers)` gives one score per unit of a `UnitGroup` (structured). The default
  sums the weight scores over each unit's slices on the sides named by `structured_sides`; criteria with a
  unit-level definition (expressiveness) override it.

Selection: unstructured selection removes the lowest-scoring `config.sparsity` fraction unless
`Criterion.removal_mask` returns a mask of its own (relative importance's ``tau / fan_in`` rule).
Compaction: `Criterion.bias_compensation` returns a bias change to add after removal (elimination-compensation).
A criterion that cannot score the configured granularity fails at construction, naming what it supports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..structure.groups import UnitGroup
from ..structure.layers import Layer
from ..structure.units import WIDTH_DEPTH_AXES
from ..utils.rules import Rule, check_fields


Stats = dict[str, torch.Tensor]


def accumulator_dtype(layer: Layer) -> torch.dtype:
    """Precision of weight-sized statistics: the weights' own, at least float32 (float64 would double their
    memory for no gain in a ranking)."""
    return torch.promote_types(layer.weight.dtype, torch.float32)


@dataclass
class CriterionOptions:
    """The options of one criterion (``PruningConfig(options=...)``); the base has none. A criterion declares its
    own dataclass subclass as `Criterion.Options`: its fields are checked at construction (``Literal`` choices and
    type hints, ranges in `RULES`), so user-registered criteria get checked options too."""

    RULES: ClassVar[dict[str, Rule]] = {}

    def __post_init__(self) -> None:
        check_fields(self, self.RULES, "PruningConfig.options")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Criterion:
    """Base class. Subclasses set `name` and override what they need."""

    name: ClassVar[str] = ""
    #: the criterion's options (a `CriterionOptions` dataclass); ``PruningConfig.options`` holds an instance
    Options: ClassVar[type[CriterionOptions]] = CriterionOptions
    #: random output projections per batch when `grad_mode` is "output" and the output is wide (Hutchinson)
    output_projections: ClassVar[int] = 2
    #: forward passes over calibration data are needed
    needs_data: ClassVar[bool] = False
    #: None (no backward), "loss" (dL/dz of the training loss), "output" (dy_k/dz for the network output y,
    #: exact per output or by random projections; see `hfprune.calibration.collector._cotangents`)
    grad_mode: ClassVar[str | None] = None
    #: the backward pass must fill ``weight.grad`` of the observed layers (read in `after_backward`); otherwise it
    #: computes only the gradients flowing into their outputs, skipping every weight gradient
    needs_weight_grads: ClassVar[bool] = False
    #: the criterion reads only ``G = sum over backward passes of (dy/dz)^2``: the collector keeps that one running
    #: ``[samples, out]`` sum per layer instead of every pass's gradient (``projections`` times less memory)
    squared_output_grads: ClassVar[bool] = False
    #: the sides of a unit whose weight scores are summed into the unit's score
    structured_sides: ClassVar[tuple[str, ...]] = ("out", "in")
    #: granularities this criterion can score
    supports: ClassVar[tuple[str, ...]] = ("weights", "neurons", "heads", "channels")
    #: unstructured selection compares weights within each output row (Wanda) instead of within the layer, unless
    #: ``config.compare_within`` says otherwise (`compares_rows`)
    per_row: ClassVar[bool] = False

    def __init__(self, config: Any, options: CriterionOptions | None = None) -> None:
        self.config = config
        if options is None:
            options = config.options if config.criterion == self.name else self.Options()
        self.options: Any = options
        # hidden channels and blocks are scored by the width/depth scores, not by this criterion
        asked = ["weights" if config.nm is not None else p for p in config.parts
                 if p not in WIDTH_DEPTH_AXES or p in self.supports]
        unsupported = [p for p in asked if p not in self.supports]
        if unsupported:
            raise ConfigError(f"criterion {self.name!r} cannot score granularity {config.granularity!r}: it supports "
                              f"{', '.join(self.supports)}. Choose one of those, or another criterion.")

    @classmethod
    def settle_options(cls, options: CriterionOptions, config: Any) -> CriterionOptions:
        """The options with their ``"auto"`` values decided for ``config`` (called once per run, before the
        criterion is built; the settled options are saved). The default has nothing to settle."""
        return options

    @property
    def compensates(self) -> bool:
        """Whether `bias_compensation` adds a bias change after removal: true for a criterion that implements it
        (elimination-compensation, or one of yours); a criterion whose options can turn it off overrides this."""
        return type(self).bias_compensation is not Criterion.bias_compensation

    _GRADIENTS: ClassVar[dict[str, str]] = {"loss": "the loss gradient", "output": "gradients of the network output"}

    def sequential_problem(self) -> str | None:
        """Why this criterion cannot run with ``calibration.mode='sequential'`` (None when it can).

        Layer-by-layer calibration runs one block at a time, forward only: network gradients cannot be computed,
        and an unstructured global ranking would need every weight's score at once. Subclasses whose gradient
        needs depend on their options (elimination-compensation, hybrid) refine `sequential_fix`."""
        config = self.config
        if self.grad_mode is not None:
            what, fix = self.sequential_fix()
            return (f"{what} needs {self._GRADIENTS[self.grad_mode]}, which layer-by-layer calibration cannot "
                    f"compute (it runs one block at a time, forward only); {fix}")
        if config.scope == "global" and not config.structured and config.nm is None and not self.compares_rows:
            return ("scope='global' with unstructured weights ranks every weight of the network at once, which "
                    "needs all per-weight scores (as large as the model) together; use scope='local' or "
                    "calibration.mode='full' (structured units such as neurons and heads support global scope)")
        return None

    @property
    def compares_rows(self) -> bool:
        """Unstructured selection ranks within each output row (else within the layer, or globally)."""
        return {"row": True, "layer": False}.get(self.config.compare_within, self.per_row)

    def sequential_fix(self) -> tuple[str, str]:
        """(what needs gradients, how to fix it) for `sequential_problem`'s message."""
        option, fix = self.gradient_option()
        return f"criterion {self.name!r}" + (f" with {option}" if option else ""), fix

    def gradient_option(self) -> tuple[str, str]:
        """(the option that makes this criterion need gradients, e.g. "options.output='loss'", or ""; the fix)."""
        return "", "use calibration.mode='full'"

    # --- statistics ---------------------------------------------------------------------------------------------
    def observed_layers(self, layers: dict[str, Layer], groups: list[UnitGroup] | None) -> list[str]:
        """Names of the layers whose statistics this criterion needs (none for data-free criteria)."""
        if not self.needs_data:
            return []
        if groups is None:
            return list(layers)
        return sorted({c.layer for g in groups for c in g.couplings if c.side in self.structured_sides
                       and c.layer in layers})

    def init_stats(self, layer: Layer) -> Stats:
        """Zeroed accumulators for one layer."""
        return {}

    def accumulate(self, layer: Layer, stats: Stats, inputs: torch.Tensor,
                   grads: list[torch.Tensor] | None = None) -> None:
        """Add one batch. ``inputs``: the layer input in its own layout (use ``layer.input_matrix``).
        ``grads``: gradients w.r.t. the layer output, one tensor per backward pass (``layer.output_matrix``); with
        `squared_output_grads`, one tensor: the sum of their squares."""

    def after_backward(self, layer: Layer, stats: Stats) -> None:
        """Called after each batch's backward passes (e.g. to read ``weight.grad``)."""

    # --- scores ---------------------------------------------------------------------------------------------------
    def weight_scores(self, layer: Layer, stats: Stats) -> torch.Tensor:
        """One score per weight, ``[out, in]``. Criteria that only score whole units (their `supports` lacks
        "weights") keep this default; `__init__` already refuses such a granularity, so it is a safety net."""
        raise ConfigError(f"criterion {self.name!r} scores units ({', '.join(self.supports)}), not single weights; "
                          "use granularity='neurons', 'heads' or 'channels'.")

    def unit_scores(self, group: UnitGroup, stats: dict[str, Stats], layers: dict[str, Layer]) -> torch.Tensor:
        """One score per unit: weight scores summed over each unit's slices on `structured_sides`."""
        total = torch.zeros(group.num_units, dtype=torch.float64)
        for c in group.couplings:
            if c.side not in self.structured_sides or c.layer not in layers:
                continue
            layer = layers[c.layer]
            s = self.weight_scores(layer, stats.get(c.layer, {})).double()
            per_index = s.sum(dim=1) if c.side == "out" else s.sum(dim=0)
            if c.side == "in" and layer.kind == "conv2d":  # columns are channel x kernel window
                k = layer.in_features // layer.module.in_channels
                per_index = per_index.view(-1, k).sum(dim=1)
            total += per_index[c.index.to(per_index.device)].sum(dim=1).cpu()
        return total

    # --- selection override -------------------------------------------------------------------------------------
    def removal_mask(self, layer: Layer, scores: torch.Tensor) -> torch.Tensor | None:
        """Unstructured only: a bool ``[out, in]`` mask of the weights to remove, decided by the criterion's own
        rule (e.g. a threshold) instead of `config.sparsity`; None (the default) lets selection use the sparsity.
        ``scores`` are this criterion's `weight_scores` for ``layer``."""
        return None

    # --- compensation (elimination-compensation) ------------------------------------------------------------------
    def bias_compensation(self, layer: Layer, stats: Stats, removed: torch.Tensor) -> torch.Tensor | None:
        """Change of the layer's bias after removing the weights where ``removed`` (``[out, in]`` bool) is True;
        None when the criterion does not compensate."""
        return None
