"""Elimination-compensation (EC; Ballini et al., arXiv 2602.20467): remove a weight, then shift its bias.

Removing ``W_ij`` and adding ``Db`` to ``b_i`` changes the output by ``dy_k = dy_k/dW_ij W_ij - dy_k/db_i Db``
(first order). A weight's importance is that change's expected square after the best ``Db`` (the paper's Eq. 4-7;
its scalar form prints ``(E[dy/db])^2`` in the denominator, a typo: the minimiser needs ``E[(dy/db)^2]``). With
``g_k = dy_k/dz_i``, ``G_i = sum_k g_k^2`` and ``a`` the layer input, this is, in closed form,

    abar_ij = E[G_i a_j] / E[G_i],    Db*_ij = W_ij abar_ij,
    I_ij    = W_ij^2 E[G_i (a_j - abar_ij)^2] = W_ij^2 (E[G_i a_j^2] - E[G_i a_j]^2 / E[G_i]).

The three expectations are matrix products per batch (``G^T 1``, ``G^T A``, ``G^T A^2``); no per-sample
``[out, in]`` tensor is formed. The two ``[out, in]`` sums keep the weights' precision, at least float32 (2x the
float32 weights they score; float64 would be 4x): all their terms are positive, so summing loses nothing to
cancellation; the one difference of moments is taken in float64 when scoring, and only inputs that are nearly
constant relative to their mean (whose score is nearly 0 either way) feel float32's rounding there. After removal every pruned weight adds its ``Db*_ij`` to ``b_i``
(independently, so they sum per neuron). Removing an input unit j (structured) compensates every ``b_i`` with
``W_ij abar_ij``; its score is ``sum_i I_ij``. The paper ranks all weights of the network together: recipes use
``scope="global"``.

The option ``output`` chooses ``y`` (the first is the paper's, the other two are hfprune extensions):
- ``"network"``: the network output; exact per output when it has at most 16 per sample, otherwise a Hutchinson
  estimate of ``G`` from the option ``projections`` random output projections (the engine scales the cotangents);
- ``"loss"``: the loss gradient, ``G = (dL/dz_i)^2`` (empirical Fisher; one backward pass);
- ``"layer"``: the layer's own output, ``G = 1``: ``I = W^2 Var[a_j]``, ``Db = W E[a_j]`` (forward only, fits
  layer-by-layer calibration).
Tokens and convolution output positions are treated as separate samples (the expectations run over them), which
drops the cross-position terms of a shared weight's gradient: an approximation outside fully-connected nets.
Statistics cost two ``[out, in]`` matrices per layer, float32 for float32 / half-precision weights (``"layer"``:
two ``[in]`` vectors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .registry import register_criterion
from .base import Criterion, CriterionOptions, Stats, accumulator_dtype
from ..utils.rules import integer
from ..errors import CalibrationError
from ..structure.layers import Layer

GRAD_MODES = {"network": "output", "loss": "loss", "layer": None}


@register_criterion
class EliminationCompensation(Criterion):
    """Expected squared output change after removing a weight and optimally shifting its bias (see module)."""

    @dataclass
    class Options(CriterionOptions):
        RULES = {"projections": integer(1)}
        #: y: 'network' (the paper's), 'loss' (cheaper) or 'layer' (the layer's own output: forward only)
        output: Literal["network", "loss", "layer"] = "network"
        #: random output projections for the Hutchinson estimate when the output is wide (each is one backward
        #: pass; the default is measured, docs/criteria.md)
        projections: int = 2
        #: add the optimal bias perturbation after removal (enables biases in the config where the family has them)
        compensate: bool = True

    name = "elimination_compensation"
    needs_data = True
    squared_output_grads = True
    structured_sides = ("in",)

    @property
    def grad_mode(self) -> str | None:  # type: ignore[override]
        return GRAD_MODES[self.options.output]

    @property
    def output_projections(self) -> int:  # type: ignore[override]
        return self.options.projections

    @property
    def compensates(self) -> bool:
        return self.options.compensate

    def gradient_option(self) -> tuple[str, str]:
        return (f"options.output={self.options.output!r}",
                "use options={'output': 'layer'} (forward only) or calibration.mode='full'")

    def init_stats(self, layer: Layer) -> Stats:
        out, inp = layer.weight_matrix().shape
        dev = layer.weight.device
        acc = accumulator_dtype(layer)

        def z(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=dev)

        if self.grad_mode is None:  # G = 1: sums of a and a^2 per input, and the sample count
            return {"a": z(inp), "a2": z(inp), "count": z()}
        return {"g": z(out), "ga": z(out, inp, dtype=acc), "ga2": z(out, inp, dtype=acc), "count": z()}

    def accumulate(self, layer: Layer, stats: Stats, inputs: torch.Tensor,
                   grads: list[torch.Tensor] | None = None) -> None:
        a = layer.input_matrix(inputs.detach()).to(accumulator_dtype(layer))
        if self.grad_mode is None:
            stats["a"] += a.sum(dim=0, dtype=torch.float64)
            stats["a2"] += a.square().sum(dim=0, dtype=torch.float64)
            stats["count"] += a.shape[0]
            return
        if not grads:
            raise CalibrationError(f"elimination_compensation needs gradients for {layer.name!r} "
                                   f"(grad_mode={self.grad_mode!r}) but got none")
        g = grads[0].to(a.dtype)  # [samples, out]: G per sample (the collector sums the squared gradients)
        stats["g"] += g.sum(dim=0, dtype=torch.float64)
        stats["ga"] += g.T @ a
        stats["ga2"] += g.T @ a.square()
        stats["count"] += a.shape[0]

    def _moments(self, layer: Layer, stats: Stats) -> tuple[torch.Tensor, torch.Tensor]:
        """``abar`` and ``E[G (a - abar)^2]``; expectations over samples so that layers with different sample
        counts (convolutions at different resolutions) compare in a global ranking."""
        n = stats["count"].clamp(min=1)
        if self.grad_mode is None:
            abar = (stats["a"] / n).unsqueeze(0)
            return abar, (stats["a2"] - stats["a"].square() / n).unsqueeze(0) / n
        g, ga, ga2 = stats["g"].unsqueeze(1), stats["ga"].double(), stats["ga2"].double()
        live = g > 0  # E[G_i] = 0: z_i never reaches the output, so removal costs nothing and needs no shift
        safe = torch.where(live, g, torch.ones_like(g))
        abar = torch.where(live, ga / safe, torch.zeros_like(ga))
        spread = torch.where(live, ga2 - ga.square() / safe, torch.zeros_like(ga))
        return abar, spread / n

    def weight_scores(self, layer: Layer, stats: Stats) -> torch.Tensor:
        w = layer.weight_matrix().detach().double()
        _, spread = self._moments(layer, stats)
        return (w.square() * spread.clamp(min=0)).float()

    def bias_compensation(self, layer: Layer, stats: Stats, removed: torch.Tensor) -> torch.Tensor | None:
        if not self.options.compensate:
            return None
        w = layer.weight_matrix().detach().double()
        abar, _ = self._moments(layer, stats)
        delta = (w * abar * removed.to(w.device)).sum(dim=1)
        return delta.to(layer.weight.dtype)
