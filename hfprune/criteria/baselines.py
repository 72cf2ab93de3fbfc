"""Baseline criteria: magnitude, random, first-order Taylor and Wanda. They show what the research criteria add."""

from __future__ import annotations

import zlib

import torch

from .registry import register_criterion
from .base import Criterion, Stats
from ..structure.groups import UnitGroup
from ..structure.layers import Layer


@register_criterion
class Magnitude(Criterion):
    """``|W|`` (``norm=1``) or ``W^2`` (``norm=2``), summed over every coupled weight of a unit."""

    name = "magnitude"

    def weight_scores(self, layer: Layer, stats: Stats) -> torch.Tensor:
        w = layer.weight_matrix().detach().float()
        return w.abs() if self.config.norm == 1 else w.square()


def _generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))


@register_criterion
class Random(Criterion):
    """Uniform random scores, seeded by ``config.seed`` and the layer name (same seed, same masks)."""

    name = "random"

    def weight_scores(self, layer: Layer, stats: Stats) -> torch.Tensor:
        shape = layer.weight_matrix().shape
        return torch.rand(shape, generator=_generator(self.config.seed, layer.name))

    def unit_scores(self, group: UnitGroup, stats: dict[str, Stats], layers: dict[str, Layer]) -> torch.Tensor:
        return torch.rand(group.num_units, generator=_generator(self.config.seed, group.name)).double()


@register_criterion
class Taylor(Criterion):
    """First-order Taylor (Molchanov et al.): ``|w * dL/dw|`` with the loss gradient averaged over batches."""

    name = "taylor"
    needs_data = True
    grad_mode = "loss"
    needs_weight_grads = True

    def init_stats(self, layer: Layer) -> Stats:
        w = layer.weight_matrix()
        return {"grad": torch.zeros(w.shape, dtype=torch.float32, device=w.device),
                "batches": torch.zeros((), dtype=torch.float64, device=w.device)}

    def after_backward(self, layer: Layer, stats: Stats) -> None:
        g = layer.module.weight.grad
        if g is not None:
            stats["grad"] += layer.weight_matrix(g).float()
            stats["batches"] += 1

    def weight_scores(self, layer: Layer, stats: Stats) -> torch.Tensor:
        w = layer.weight_matrix().detach().float()
        g = stats["grad"] / stats["batches"].clamp(min=1).float()
        return (w * g).abs()


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
