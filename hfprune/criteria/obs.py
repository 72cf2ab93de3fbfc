"""Structured optimal brain surgeon (`obs`): remove the units whose loss the least-squares refit can best absorb.

Published method, reimplemented: the layer-wise structured OBS of ZipLM (Kurtic et al. 2023), after Optimal Brain
Surgeon (Hassibi & Stork 1993) and SparseGPT's statistics (Frantar & Alistarh 2023); ZipLM's latency search is
not part of it. It pairs with ``reconstruction.method="weights"`` (required; "auto" settles to it), which then applies exactly the refit this
criterion assumes.

A unit of an FFN or attention layer owns a block B of input columns of its consumer (``down_proj``, ``o_proj``).
With ``Ht = H/n + lambda I`` the consumer input's dampened second moment (``H = sum a a^T``, by matrix products) and
``W'`` the consumer's weights refit on the kept columns, removing B next and refitting the rest raises the layer's
output error ``E||(W - W') a||^2`` by exactly

    dE(B) = tr(W'_B [(Ht^-1)_BB]^-1 W'_B^T),

after which ``W' -= W'_B [(Ht^-1)_BB]^-1 (Ht^-1)_B,:`` and ``Ht^-1 -= (Ht^-1)_:,B [(Ht^-1)_BB]^-1 (Ht^-1)_B,:``
(the inverse restricted to the kept columns). Units are removed greedily, cheapest first; a unit's score is the
cumulative relative error ``(E_0 + ... + dE(unit)) / E||W a||^2`` at its removal (monotone along the order, so
local selection removes a prefix of it; in a global ranking it compares layers by the error each removal leaves).
Units never reached keep a score above every removed one. Producers (``gate/up/q/k/v`` rows) cost nothing more:
their rows only feed the removed columns. ``lambda`` = ``reconstruction.damp`` x the mean diagonal.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import Criterion, Stats
from .registry import register_criterion
from ..errors import ConfigError
from ..structure.groups import UnitGroup, kept_count
from ..structure.layers import Layer



@register_criterion
class StructuredOBS(Criterion):
    """Greedy layer-wise structured OBS on the consumer's input statistics (see module)."""

    name = "obs"
    needs_data = True
    structured_sides = ("in",)
    supports = ("neurons", "heads")

    def __init__(self, config: Any, options: Any = None) -> None:
        super().__init__(config, options)
        if config.reconstruction.method == "none":
            raise ConfigError("criterion 'obs' ranks units by the output error left after the least-squares refit; "
                              "it needs reconstruction.method='weights' or 'auto' (which applies that refit).")

    def init_stats(self, layer: Layer) -> Stats:
        d = layer.weight_matrix().shape[1]
        return {"H": torch.zeros(d, d, dtype=torch.float32, device=layer.weight.device),
                "count": torch.zeros((), dtype=torch.float64, device=layer.weight.device)}

    def accumulate(self, layer: Layer, stats: Stats, inputs: torch.Tensor,
                   grads: list[torch.Tensor] | None = None) -> None:
        a = layer.input_matrix(inputs.detach()).float()
        stats["H"].addmm_(a.T, a)
        stats["count"] += a.shape[0]

    def unit_scores(self, group: UnitGroup, stats: dict[str, Stats], layers: dict[str, Layer]) -> torch.Tensor:
        consumers = [c for c in group.consumers if c.layer in layers and c.layer in stats]
        if len(consumers) != 1 or layers[consumers[0].layer].kind == "conv2d":
            raise ConfigError(f"criterion 'obs' needs one linear consumer per unit group; {group.name} has "
                              f"{[c.layer for c in consumers]}. Use another criterion for this model.")
        c = consumers[0]
        layer, st = layers[c.layer], stats[c.layer]
        W = layer.weight_matrix().detach().double()
        m = st["H"].double() / st["count"].clamp(min=1)
        ref = max(float(((W @ m) * W).sum()), 1e-30)
        Hinv = torch.cholesky_inverse(torch.linalg.cholesky(_dampened(m, self.config.reconstruction.damp)))
        if self.config.scope == "local":
            steps = group.num_units - kept_count(group, self.config.sparsity_for(group.kind) * group.num_units,
                                                 self.config.min_units)
        else:
            steps = group.num_units - min(self.config.min_units, group.num_units)
        return _greedy(W, Hinv, c.index.to(W.device), steps) / ref


def _dampened(m: torch.Tensor, damp: float) -> torch.Tensor:
    lam = damp * float(m.diagonal().mean().clamp(min=1e-12))
    lam = lam if lam > 0 else 1e-8 * float(m.diagonal().mean().clamp(min=1e-12))  # damp 0: a singular H stays solvable
    return m + lam * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)


def _greedy(W: torch.Tensor, Hinv: torch.Tensor, index: torch.Tensor, steps: int) -> torch.Tensor:
    """Cumulative output error at each unit's greedy removal (see module); ``index`` ``[units, width]``."""
    if index.shape[1] == 1:
        return _greedy_columns(W, Hinv, index[:, 0], steps)
    units = index.shape[0]
    W, Hinv = W.clone(), Hinv.clone()
    scores = torch.empty(units, dtype=torch.float64)
    alive = torch.ones(units, dtype=torch.bool)
    total = 0.0

    def costs(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv = torch.linalg.inv(Hinv[idx[:, :, None], idx[:, None, :]])  # [n, w, w]
        Wb = W[:, idx]  # [out, n, w]
        return torch.einsum("oua,uab,oub->u", Wb, inv, Wb).clamp(min=0), inv

    for _ in range(steps):
        live = alive.nonzero().flatten()
        dE, inv = costs(index[live])
        j = int(dE.argmin())
        u = int(live[j])
        total += float(dE[j])
        scores[u] = total
        alive[u] = False
        B = index[u]
        step = inv[j] @ Hinv[B]  # [w, in]
        W -= W[:, B] @ step
        Hinv -= Hinv[:, B] @ step
        W[:, B] = 0
    if alive.any():  # never removed: above every removed unit, in the order of their current cost
        live = alive.nonzero().flatten()
        dE, _ = costs(index[live])
        scores[live] = total + dE.cpu() + 1e-12 * (abs(total) + 1)
    return scores


def _greedy_columns(W: torch.Tensor, Hinv: torch.Tensor, cols: torch.Tensor, steps: int) -> torch.Tensor:
    """`_greedy` for one column per unit (FFN neurons). The restricted inverse is kept in factored form,
    ``Hinv_t = Hinv_0 - U U^T`` (one column of U per removal), so a step costs ``in x t`` for the row it needs and
    ``out x in`` for the refit, instead of a full ``in x in`` downdate."""
    W = W.clone()
    units = cols.numel()
    U = torch.zeros(Hinv.shape[0], max(steps, 1), dtype=Hinv.dtype, device=Hinv.device)
    diag = Hinv.diagonal().clone()
    scores = torch.empty(units, dtype=torch.float64)
    alive = torch.ones(units, dtype=torch.bool, device=W.device)
    total = 0.0

    def costs() -> torch.Tensor:
        Wc = W[:, cols]
        dE = Wc.square().sum(dim=0) / diag[cols].clamp(min=1e-300)
        return dE.clamp(min=0).masked_fill(~alive, math.inf)

    for t in range(steps):
        dE = costs()
        u = int(dE.argmin())
        total += float(dE[u])
        scores[u] = total
        alive[u] = False
        j = int(cols[u])
        row = Hinv[j] - U[j, :t] @ U[:, :t].T  # row j of the current restricted inverse
        d = float(row[j])
        W.addr_(W[:, j].clone(), row, alpha=-1.0 / d)
        W[:, j] = 0
        U[:, t] = row / math.sqrt(d)
        diag -= U[:, t].square()
    if bool(alive.any()):
        dE = costs()
        live = alive.nonzero().flatten()
        scores[live.cpu()] = total + dE[live].cpu() + 1e-12 * (abs(total) + 1)
    return scores
