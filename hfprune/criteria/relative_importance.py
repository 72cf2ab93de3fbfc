"""Relative importance (RI; Hussien et al., arXiv 2410.16151): prune weights with a small share of their neuron.

The paper builds, over the data, the distribution of each weight's contribution to its neuron's output and prunes
by that distribution's parameters, and trains with a pruning-aware regulariser; its summaries give no formulas.
**Reconstruction**:

- contribution share ``r_ij(x) = |W_ij a_j(x)| / s_i(x)`` with ``s_i = sum_k |W_ik a_k(x)|``;
- per weight, over samples (tokens, conv positions): ``mu_ij = E[r_ij]`` and ``sigma_ij = Std[r_ij]``, from the
  matrix products ``E[r_ij] = |W_ij| mean_t(|a_tj| / s_ti)`` and ``E[r_ij^2] = W_ij^2 mean_t(a_tj^2 / s_ti^2)``;
  a sample in which neuron i receives nothing (``s_i = 0``) gives every share 0;
- score ``mu + k sigma`` (option ``k``, default 0; k > 0 keeps weights that are sometimes important);
- selection: the `sparsity` fraction (option ``threshold='sparsity'``) or every weight whose score is below
  ``tau / fan_in`` (``threshold='tau'``; tau = 1 means "less than an equal share"), via `removal_mask`.

A unit's (structured) score is the sum of its consumer columns' mean shares: how much of the next layer's input
it carries. (Its producer row's shares always sum to 1, so they say nothing.)

`ri_regularizer` is the pruning-aware training term (also a reconstruction).
Statistics: one ``[out, in]`` matrix per layer, two when ``k > 0`` (the second moment), at the weights'
precision but at least float32 (`accumulator_dtype`); per batch, the product for ``s`` plus one (two) ``[out, in]``
products, the definition's floor. All summed terms are positive, so float32 sums lose nothing to cancellation;
``sigma`` is a difference of moments, accurate enough for the ranking it feeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .registry import register_criterion
from .base import Criterion, CriterionOptions, Stats, accumulator_dtype
from ..errors import ConfigError
from ..structure.layers import Layer
from ..utils.rules import number

def _inverse_totals(w_abs: torch.Tensor, a_abs: torch.Tensor) -> torch.Tensor:
    """``1 / s`` per sample and neuron, ``[samples, out]``; 0 where the neuron receives nothing (its shares are 0)."""
    s = a_abs @ w_abs.T
    tiny = torch.finfo(s.dtype).tiny
    return torch.where(s > tiny, 1.0 / s.clamp(min=tiny), torch.zeros_like(s))


@register_criterion
class RelativeImportance(Criterion):
    """Mean (+ k std) of each weight's share of its neuron's absolute input (reconstruction, see module)."""

    @dataclass
    class Options(CriterionOptions):
        RULES = {"k": number(), "tau": number(0, open_low=True)}
        k: float = 0.0  # score = mu + k * sigma of each weight's contribution share
        threshold: Literal["sparsity", "tau"] = "sparsity"  # remove the `sparsity` fraction, or below tau / fan_in
        tau: float = 1.0  # tau of the 'tau' rule

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.tau != 1.0 and self.threshold != "tau":
                raise ConfigError(f"PruningConfig.options.tau={self.tau!r} has no effect: it is used only with "
                                  "threshold='tau'. Remove it, or set threshold='tau'.")

    name = "relative_importance"
    needs_data = True
    structured_sides = ("in",)

    def init_stats(self, layer: Layer) -> Stats:
        w = layer.weight_matrix()
        z = torch.zeros(w.shape, dtype=accumulator_dtype(layer), device=w.device)
        stats = {"r": z, "count": torch.zeros((), dtype=torch.float64, device=w.device)}
        if self.options.k:
            stats["r2"] = z.clone()
        return stats

    def accumulate(self, layer: Layer, stats: Stats, inputs: torch.Tensor,
                   grads: list[torch.Tensor] | None = None) -> None:
        dtype = accumulator_dtype(layer)
        a_abs = layer.input_matrix(inputs.detach()).to(dtype).abs()
        inv = _inverse_totals(layer.weight_matrix().detach().to(dtype).abs(), a_abs)
        stats["r"] += inv.T @ a_abs
        if "r2" in stats:
            stats["r2"] += inv.square().T @ a_abs.square()
        stats["count"] += a_abs.shape[0]

    def share_moments(self, layer: Layer, stats: Stats) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``mu`` and ``sigma`` of every weight's contribution share, ``[out, in]`` float64; ``sigma`` is None when
        the statistics were collected with ``k = 0`` (the score needs no second moment)."""
        w_abs = layer.weight_matrix().detach().double().abs()
        n = stats["count"].clamp(min=1)
        mu = w_abs * stats["r"].double() / n
        if "r2" not in stats:
            return mu, None
        second = w_abs.square() * stats["r2"].double() / n
        return mu, (second - mu.square()).clamp(min=0).sqrt()

    def weight_scores(self, layer: Layer, stats: Stats) -> torch.Tensor:
        mu, sigma = self.share_moments(layer, stats)
        return (mu if sigma is None else mu + self.options.k * sigma).float()

    def removal_mask(self, layer: Layer, scores: torch.Tensor) -> torch.Tensor | None:
        if self.options.threshold != "tau":
            return None
        return scores < self.options.tau / layer.in_features


def ri_regularizer(layer: Layer | nn.Module, inputs: torch.Tensor, form: str = "entropy") -> torch.Tensor:
    """Pruning-aware training term for one layer and one batch of its inputs (own layout), a scalar to add to
    the loss times a weight (``config.training.regularizer_weight``). **Reconstruction** of the paper's regulariser.

    - ``"entropy"`` (default): ``sum_i H(p_i)``, the entropy of neuron i's mean contribution shares
      ``p_ij = rbar_ij / sum_k rbar_ik``. Lowering it concentrates each neuron's input on few weights, so more
      weights fall below the RI threshold. It is the default because it is scale-invariant: it reshapes the
      shares without shrinking the weights (it does not fight the task loss or weight decay over scale).
    - ``"l1"``: ``sum_ij (1 - rbar_ij) |W_ij|``, an L1 penalty reweighted by the shares (taken as constants), so
      weights that carry little are pushed to zero hardest.

    The inputs are treated as data (detached): the term shapes this layer's weights only and costs two matrix
    products (``rbar = |W| * (1/s)^T |A| / T``), never a per-sample ``[out, in]`` tensor.
    """
    if form not in ("entropy", "l1"):
        raise ValueError(f"ri_regularizer form={form!r}: use 'entropy' or 'l1'")
    layer = layer if isinstance(layer, Layer) else Layer("", layer)
    w_abs = layer.weight_matrix().float().abs()  # float32 at least: half-precision totals underflow
    a_abs = layer.input_matrix(inputs.detach()).float().abs()
    inv = _inverse_totals(w_abs, a_abs)
    rbar = w_abs * (inv.T @ a_abs) / a_abs.shape[0]
    if form == "l1":
        return ((1 - rbar.detach()) * w_abs).sum()
    p = rbar / rbar.sum(dim=1, keepdim=True).clamp(min=torch.finfo(rbar.dtype).tiny)
    return -(p * p.clamp(min=1e-12).log()).sum()
