"""Protection of outlier units (hfprune extension): never remove a unit whose activation is massive.

Large language models route a few "massive activations" (Sun et al. 2024; the "super weights" of Yu et al. 2024
produce them) through a handful of FFN neurons and residual channels: values hundreds of times the typical
magnitude, on a few tokens, that act as attention sinks and biases. Removing one such neuron can wreck the model,
and criteria blind to activation size remove them (magnitude: small weights; expressiveness: an almost-always-on
or almost-always-off neuron scores near 0 by definition). Measured on SmolLM2 in docs/criteria.md.

Detection: the peak ``max_t |a_j(t)|`` of every input column of the layers that read the units (consumers:
``down_proj`` for FFN neurons, ``o_proj`` for heads; for unstructured pruning every target layer's own inputs),
over the calibration tokens, by forward hooks (one forward pass). A unit is an outlier when its peak (the largest
over its columns and consumers) exceeds ``threshold`` x the median peak of its group (layer). Selection then
treats protected units as kept (score +inf; `hfprune.selection.protect_scores`), so the criterion ranks the rest
exactly as it would, and the removed count stays the configured one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .calibration.forward import no_kv_cache, run_model
from .errors import CalibrationError
from .structure import Layer, UnitGroup


@dataclass
class Protection:
    """Protected units: per group ``[units]`` bool (structured) or per layer ``[in]`` bool of input columns whose
    weights are all kept (unstructured, N:M); ``ratio`` the peak / median of each protected entry."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    ratio: dict[str, list[float]] = field(default_factory=dict)

    def to_report(self) -> dict[str, list[int]]:
        """``{group or layer: [protected indices]}``, only where something is protected (PruningReport.protected)."""
        return {n: m.nonzero().flatten().tolist() for n, m in self.masks.items() if m.any()}


@torch.no_grad()
def input_peaks(model: nn.Module, layers: dict[str, Layer], batches: list[Any]) -> dict[str, torch.Tensor]:
    """``max |a_j|`` over every calibration token of each input column of ``layers`` (float32, ``[in]``)."""
    peaks: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(module: nn.Module, args: tuple, output: Any) -> None:
            a = layers[name].input_matrix(args[0].detach()).abs().amax(dim=0).float()
            peaks[name] = a if name not in peaks else torch.maximum(peaks[name], a)
        return fn

    handles = [l.module.register_forward_hook(hook(n)) for n, l in layers.items()]
    was_training = model.training
    model.eval()
    try:
        with no_kv_cache(model):
            for b in batches:
                run_model(model, b)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    for n, p in peaks.items():
        if not torch.isfinite(p).all():
            raise CalibrationError(f"Protection: non-finite activations at the input of {n}; check the weights and "
                                   "the calibration data.")
    return peaks


def _outliers(peak: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    ratio = peak / peak.median().clamp(min=1e-12)
    return ratio > threshold, ratio


def detect_outliers(model: nn.Module, layers: dict[str, Layer], groups: list[UnitGroup] | None, batches: list[Any],
                    threshold: float) -> Protection:
    """Outlier units of ``groups`` (or input columns of ``layers`` when ``groups`` is None); see the module."""
    if groups is None:
        peaks = input_peaks(model, layers, batches)
        out = Protection()
        for n, p in peaks.items():
            out.masks[n], r = _outliers(p, threshold)
            out.ratio[n] = r[out.masks[n]].tolist()
        return out
    names = sorted({c.layer for g in groups for c in g.consumers if c.layer in layers})
    peaks = input_peaks(model, {n: layers[n] for n in names}, batches)
    out = Protection()
    for g in groups:
        per = [peaks[c.layer].cpu()[_columns(layers[c.layer], c.index)].amax(dim=1) for c in g.consumers
               if c.layer in peaks]
        if not per:
            continue
        out.masks[g.name], r = _outliers(torch.stack(per).amax(dim=0), threshold)
        out.ratio[g.name] = r[out.masks[g.name]].tolist()
    return out


def _columns(layer: Layer, index: torch.Tensor) -> torch.Tensor:
    """Input columns of ``layer`` owned by each unit (conv channels own their kernel windows)."""
    if layer.kind == "conv2d":
        k = layer.in_features // layer.module.in_channels
        return (index[..., None] * k + torch.arange(k)).flatten(1)
    return index
