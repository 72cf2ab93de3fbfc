"""Expressiveness (NEXP; Maroudis & Xydis, arXiv 2512.06440): keep the units whose on/off pattern varies most.

The paper scores a unit by how well it redistributes information, measured by the overlap of its activations
across inputs; its summaries give no formula. **Reconstruction** (after the NASWOT line of work the paper echoes):
a unit's state is ``c = 1[activation > 0]``, read as the sign of its consumer layers' input (for ReLU, GELU and
SiLU that is the sign of the pre-activation), and its expressiveness is the mean pairwise normalised Hamming
distance of those states between samples,

    E(u) = 2 / (N (N-1)) * sum_{n<m} mean_p XOR(c_n(p), c_m(p))  =  N/(N-1) * mean_p 2 q_p (1 - q_p),

with ``q_p`` the fraction of samples in which the unit is on at position ``p``. The right-hand (streaming) form
needs only on-counts, so it is what is accumulated; it drops the constant factor ``N/(N-1)``, which does not
change any ranking. A unit that is always on or always off scores 0: it redistributes nothing.

- Linear / GPT-2 Conv1D consumers: every token (or sample) is a sample; positions are not aligned across sequences.
- Conv2d consumers: positions are aligned across images (on-counts per channel x position). When only one image
  was seen, its positions are the samples (the paper's single-sample approximation); likewise for a unit that
  spans several input dimensions of a Linear consumer (a conv channel flattened into a classifier).
- A unit spanning several input dimensions (an attention head) scores the mean E of its dimensions; a unit read
  by several consumer layers, the mean over them.

The score is stateless in the paper's sense: it is meaningful at initialisation and can be estimated from random
inputs (``PruningConfig(calibration={"source": "random"})``: the engine feeds random token ids or Gaussian images) or from a single
sample. Units only: a single weight has no activation of its own.
"""

from __future__ import annotations

import torch

from .registry import register_criterion
from .base import Criterion, Stats
from ..errors import CalibrationError
from ..structure.groups import UnitGroup
from ..structure.layers import Layer


@register_criterion
class Expressiveness(Criterion):
    """Mean pairwise Hamming distance of a unit's on/off states across samples (reconstruction, see module)."""

    name = "expressiveness"
    needs_data = True
    structured_sides = ("in",)
    supports = ("neurons", "heads", "channels")

    def init_stats(self, layer: Layer) -> Stats:
        # "on" is created lazily for Conv2d (its shape depends on the image size); "count" counts samples
        # (Linear: tokens) or images (Conv2d).
        dev = layer.weight.device
        stats = {"count": torch.zeros((), dtype=torch.float64, device=dev)}
        if layer.kind != "conv2d":
            stats["on"] = torch.zeros(layer.in_features, dtype=torch.float64, device=dev)
        return stats

    def accumulate(self, layer: Layer, stats: Stats, inputs: torch.Tensor,
                   grads: list[torch.Tensor] | None = None) -> None:
        x = inputs.detach()
        if layer.kind == "conv2d":  # [B, C, H, W] -> on-counts per channel x position
            on = (x > 0).sum(dim=0).flatten(1).double()
            if "on" not in stats:
                stats["on"] = torch.zeros_like(on)
            elif stats["on"].shape != on.shape:
                raise CalibrationError(f"expressiveness of {layer.name!r}: calibration images of different sizes "
                                 f"({tuple(stats['on'].shape)} vs {tuple(on.shape)} channel x positions); "
                                 "resize them to one size")
            stats["on"] += on
            stats["count"] += x.shape[0]
        else:
            x = x.reshape(-1, x.shape[-1])
            stats["on"] += (x > 0).sum(dim=0).double()
            stats["count"] += x.shape[0]

    def input_expressiveness(self, layer: Layer, stats: Stats) -> torch.Tensor:
        """E of every input dimension of a consumer layer (channels for Conv2d), ``[in]`` float64."""
        n = stats["count"].clamp(min=1)
        on = stats["on"]
        if on.dim() == 2 and stats["count"] <= 1:  # one image: its positions are the samples
            q = on.sum(dim=1) / on.shape[1]
            return 2 * q * (1 - q)
        q = on / n
        e = 2 * q * (1 - q)
        return e.mean(dim=1) if e.dim() == 2 else e

    def consumer_expressiveness(self, layer: Layer, stats: Stats, index: torch.Tensor) -> torch.Tensor:
        """E of every unit owning the ``index`` rows' input dimensions of one consumer, ``[units]`` float64.

        With a single sample, a Linear consumer's dimensions are each on or off once (E = 0 for all); a unit that
        spans several dimensions (a conv channel flattened into a Linear: one per position) then takes them as its
        samples, as a Conv2d consumer takes its positions."""
        if layer.kind != "conv2d" and stats["count"] <= 1 and index.shape[1] > 1:
            q = stats["on"].cpu()[index].mean(dim=1) / stats["count"].clamp(min=1).cpu()
            return 2 * q * (1 - q)
        return self.input_expressiveness(layer, stats).cpu()[index].mean(dim=1)

    def unit_scores(self, group: UnitGroup, stats: dict[str, Stats], layers: dict[str, Layer]) -> torch.Tensor:
        per_consumer = [self.consumer_expressiveness(layers[c.layer], stats[c.layer], c.index)
                        for c in group.consumers if c.layer in layers and "on" in stats.get(c.layer, {})]
        if not per_consumer:
            raise CalibrationError(f"expressiveness of group {group.name!r}: no statistics for its consumer layers "
                             f"{[c.layer for c in group.consumers]}; were they observed during calibration?")
        return torch.stack(per_consumer).mean(dim=0)
