"""Hybrid of expressiveness and weight importance (NEXP, arXiv 2512.06440): the paper's best compression.

Expressiveness and importance measure different things (how varied a unit's activity is, how large its weights
or gradients are), so they are mixed per group of comparable units:

- option ``form="rank"`` (default): ``S = alpha * rank_norm(E) + (1 - alpha) * rank_norm(I)``, ranks scaled to
  [0, 1] within the group (ties share their mean rank), so neither score's units dominate;
- ``form="product"``: ``S = E^alpha * I^(1 - alpha)`` on the raw scores.

The mixing rule is a **reconstruction** (the paper's summaries name the hybrid, not its formula). ``I`` is the
criterion named by the option ``importance`` (magnitude by default; any baseline), with its own options in
``importance_options``. The two criteria keep their
statistics side by side under the key prefixes ``"expressiveness."`` and ``"importance."``; the importance's bias
compensation (elimination-compensation) is passed through.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .registry import criterion_class, register_criterion
from .base import Criterion, CriterionOptions, Stats
from .expressiveness import Expressiveness
from ..errors import ConfigError
from ..structure.groups import UnitGroup
from ..structure.layers import Layer
from ..utils.rules import MAPPING, NAME, build_group, number



def rank_norm(x: torch.Tensor) -> torch.Tensor:
    """Ranks of ``x`` scaled to [0, 1] (0 = smallest), ties sharing their mean rank; a single unit gets 1."""
    n = x.numel()
    if n == 1:
        return torch.ones_like(x, dtype=torch.float64)
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)  # sorted distinct values
    first = torch.cumsum(counts, 0) - counts  # rank of each distinct value's first occurrence
    return (first + (counts - 1) / 2).double()[inverse] / (n - 1)


@register_criterion
class Hybrid(Criterion):
    """``alpha``-mix of expressiveness and an importance criterion, per group (see module)."""

    @dataclass
    class Options(CriterionOptions):
        RULES = {"alpha": number(0, 1), "importance": NAME, "importance_options": MAPPING}
        alpha: float = 0.5  # weight of expressiveness against importance, in [0, 1]
        importance: str = "magnitude"  # the importance criterion mixed with expressiveness
        form: Literal["rank", "product"] = "rank"  # convex mix of normalised ranks, or E^alpha * I^(1-alpha)
        importance_options: dict[str, Any] = field(default_factory=dict)  # the importance criterion's options

    name = "hybrid"
    needs_data = True
    supports = Expressiveness.supports

    def __init__(self, config: Any, options: CriterionOptions | None = None) -> None:
        super().__init__(config, options)
        importance = self._importance_class(self.options)
        self.expressiveness = Expressiveness(config, Expressiveness.Options())
        self.importance = importance(config, importance.Options(**self.options.importance_options))
        self._criteria: dict[str, Criterion] = {"expressiveness": self.expressiveness,
                                                "importance": self.importance}

    @staticmethod
    def _importance_class(options: Any) -> type[Criterion]:
        """The importance criterion's class, its options checked (``build_group``: unknown keys are named with the
        closest valid one)."""
        importance = criterion_class(options.importance, field="options.importance")
        if importance.name in ("hybrid", "expressiveness"):
            raise ConfigError(f"PruningConfig.options.importance={importance.name!r} is not allowed: an importance "
                              "criterion such as magnitude, taylor or wanda.")
        build_group(importance.Options, options.importance_options,
                    f"PruningConfig.options.importance_options (of {importance.name!r})")
        return importance

    @classmethod
    def settle_options(cls, options: CriterionOptions, config: Any) -> CriterionOptions:
        """The importance criterion settles its own options."""
        importance = cls._importance_class(options)
        inner = importance.settle_options(importance.Options(**options.importance_options), config)  # type: ignore
        return dataclasses.replace(options, importance_options=inner.to_dict())

    @property
    def grad_mode(self) -> str | None:  # type: ignore[override]
        return self.importance.grad_mode

    @property
    def output_projections(self) -> int:  # type: ignore[override]
        return self.importance.output_projections

    @property
    def compensates(self) -> bool:
        return self.importance.compensates

    @property
    def needs_weight_grads(self) -> bool:  # type: ignore[override]
        return self.importance.needs_weight_grads

    @property
    def squared_output_grads(self) -> bool:  # type: ignore[override]
        return self.importance.squared_output_grads

    def sequential_fix(self) -> tuple[str, str]:
        option, fix = self.importance.gradient_option()
        what = f"criterion 'hybrid' with importance={self.importance.name!r}"
        return what + (f" and {option}" if option else ""), fix

    def observed_layers(self, layers: dict[str, Layer], groups: list[UnitGroup] | None) -> list[str]:
        return sorted(set(self.expressiveness.observed_layers(layers, groups))
                      | set(self.importance.observed_layers(layers, groups)))

    @staticmethod
    def _split(stats: Stats, part: str) -> Stats:
        prefix = part + "."
        return {k[len(prefix):]: v for k, v in stats.items() if k.startswith(prefix)}

    def _merge(self, stats: Stats, part: str, sub: Stats) -> None:
        stats.update({f"{part}.{k}": v for k, v in sub.items()})

    def init_stats(self, layer: Layer) -> Stats:
        stats: Stats = {}
        for part, crit in self._criteria.items():
            self._merge(stats, part, crit.init_stats(layer))
        return stats

    def accumulate(self, layer: Layer, stats: Stats, inputs: torch.Tensor,
                   grads: list[torch.Tensor] | None = None) -> None:
        for part, crit in self._criteria.items():
            sub = self._split(stats, part)
            crit.accumulate(layer, sub, inputs, grads)
            self._merge(stats, part, sub)

    def after_backward(self, layer: Layer, stats: Stats) -> None:
        for part, crit in self._criteria.items():
            sub = self._split(stats, part)
            crit.after_backward(layer, sub)
            self._merge(stats, part, sub)

    def bias_compensation(self, layer: Layer, stats: Stats, removed: torch.Tensor) -> torch.Tensor | None:
        """The importance criterion's compensation (elimination-compensation shifts biases; the others do not)."""
        return self.importance.bias_compensation(layer, self._split(stats, "importance"), removed)

    def unit_scores(self, group: UnitGroup, stats: dict[str, Stats], layers: dict[str, Layer]) -> torch.Tensor:
        e, i = (crit.unit_scores(group, {n: self._split(s, part) for n, s in stats.items()}, layers).double()
                for part, crit in self._criteria.items())
        a = self.options.alpha
        if self.options.form == "product":
            return e.clamp(min=0) ** a * i.clamp(min=0) ** (1 - a)
        return a * rank_norm(e) + (1 - a) * rank_norm(i)
