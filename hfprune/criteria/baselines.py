"""Baseline criteria: magnitude, random, first-order Taylor and Wanda. They show what the research criteria add."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .registry import register_criterion
from .base import Criterion, CriterionOptions, Stats
from ..structure.groups import UnitGroup
from ..structure.layers import Layer


@register_criterion
class Magnitude(Criterion):
    """``|W|`` (``norm=1``) or ``W^2`` (``norm=2``), summed over every coupled weight of a unit."""

    @dataclass
    class Options(CriterionOptions):
        norm: Literal[1, 2] = 1  # |W| or W^2

    name = "magnitude"

    def weight_scores(self, layer: Layer, stats: Stats) -> torch.Tensor:
        w = layer.weight_matrix().detach().float()
        return w.abs() if self.options.norm == 1 else w.square()


def seeded_generator(seed: int, key: str) -> torch.Generator:
    """A generator seeded by the run seed and a name, so the same seed gives the same scores per layer."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))


@register_criterion
class Random(Criterion):
    """Uniform random scores, seeded by ``config.seed`` and the layer name (same seed, same masks)."""

    name = "random"

    def weight_scores(self, layer: Layer, stats: Stats) -> torch.Tensor:
        shape = layer.weight_matrix().shape
        return torch.rand(shape, generator=seeded_generator(self.config.seed, layer.name))

    def unit_scores(self, group: UnitGroup, stats: dict[str, Stats], layers: dict[str, Layer]) -> torch.Tensor:
        return torch.rand(group.num_units, generator=seeded_generator(self.config.seed, group.name)).double()


@register_criterion
class Taylor(Criterion):
    """First-order Taylor estimate of the loss change from removing a weight, ``w * dL/dw``, in one of two
    published forms (the option ``form``):

    - ``"squared"`` (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning"):
      ``mean over batches of (w * g_b)^2``, with ``g_b`` the batch's loss gradient;
    - ``"absolute"`` (Molchanov et al. 2017; Torch-Pruning's ``GroupTaylorImportance``): ``|w * mean_b g_b|``.

    ``"auto"`` (the default) is squared for single weights and N:M, absolute for units (a unit sums its weights'
    scores, and the squared sum ranked SmolLM2's FFN neurons worse).

    On a trained model the mean gradient is close to zero and noisy, so the absolute form ranks single weights
    almost at random; the squared form keeps the size of each batch's contribution (measurements:
    docs/criteria.md)."""

    @dataclass
    class Options(CriterionOptions):
        form: Literal["auto", "squared", "absolute"] = "auto"  # "auto": settled by `settle_options`

    name = "taylor"
    needs_data = True
    grad_mode = "loss"
    needs_weight_grads = True
    #: hfprune's choice (the papers rank a layer's weights together): compared within output rows, the refit
    #: SmolLM2 at 50% stays usable, within layers it does not (docs/criteria.md); ``compare_within="layer"`` for the
    #: papers' rule
    per_row = True

    @property
    def compares_rows(self) -> bool:
        if self.config.compare_within == "auto" and self.config.scope == "global":
            return False  # an explicit global ranking wins over the per-row default
        return super().compares_rows

    @classmethod
    def settle_options(cls, options: CriterionOptions, config: Any) -> CriterionOptions:
        """'auto' is 'squared' on single weights and N:M, 'absolute' on units (measured on SmolLM2:
        docs/criteria.md)."""
        if options.form != "auto":  # type: ignore[attr-defined]
            return options
        return cls.Options(form="absolute" if config.structured else "squared")

    @property
    def form(self) -> str:
        return self.settle_options(self.options, self.config).form

    def init_stats(self, layer: Layer) -> Stats:
        w = layer.weight_matrix()
        return {"grad": torch.zeros(w.shape, dtype=torch.float32, device=w.device),
                "batches": torch.zeros((), dtype=torch.float64, device=w.device)}

    def after_backward(self, layer: Layer, stats: Stats) -> None:
        g = layer.module.weight.grad
        if g is not None:
            g = layer.weight_matrix(g).float()
            if self.form == "squared":
                stats["grad"].addcmul_(g, g)
            else:
                stats["grad"] += g
            stats["batches"] += 1

    def weight_scores(self, layer: Layer, stats: Stats) -> torch.Tensor:
        w = layer.weight_matrix().detach().float()
        g = stats["grad"] / stats["batches"].clamp(min=1).float()  # mean of g_b^2, or mean of g_b
        return w.square() * g if self.form == "squared" else (w * g).abs()


@register_criterion
class Wanda(Criterion):
    """Wanda (Sun et al. 2023): ``|W_ij| * ||X_j||_2``, compared within each output row when unstructured."""

    name = "wanda"
    needs_data = True
    structured_sides = ("in",)
    per_row = True

    def init_stats(self, layer: Layer) -> Stats:
        w = layer.weight_matrix()
        return {"sq": torch.zeros(w.shape[1], dtype=torch.float64, device=w.device)}

    def accumulate(self, layer: Layer, stats: Stats, inputs: torch.Tensor,
                   grads: list[torch.Tensor] | None = None) -> None:
        x = layer.input_matrix(inputs.detach()).float()
        stats["sq"] += x.square().sum(dim=0).double()

    def weight_scores(self, layer: Layer, stats: Stats) -> torch.Tensor:
        w = layer.weight_matrix().detach().float()
        return w.abs() * stats["sq"].sqrt().float().to(w.device)
