"""Protection of units a criterion cannot see the importance of (hfprune extension): keep them whatever their score.

Large language models route a few "massive activations" (Sun et al. 2024; the "super weights" of Yu et al. 2024
produce them) through a handful of FFN neurons and residual channels: values hundreds of times the typical
magnitude, on a few tokens, that act as attention sinks and biases. Removing one such neuron can wreck the model,
and criteria blind to activation size remove them (magnitude: small weights; expressiveness: an almost-always-on
or almost-always-off neuron scores near 0 by definition). Measured on SmolLM2 in docs/criteria.md.

Two measures, both per input column of the layers that read the units (consumers: ``down_proj`` for FFN neurons,
``o_proj`` for heads; for unstructured pruning every target layer's own inputs), over the calibration tokens, by
forward hooks (one forward pass):
- ``"outliers"``: the activation peak ``max_t |a_j(t)|`` (a unit: the largest over its columns and consumers);
- ``"energy"``: the output energy ``E[a_j^2] ||W_:,j||^2``, the output change of removing the unit alone, without
  refit (a unit: the sum over its columns and consumers).
A unit is protected when its measure exceeds ``threshold`` x the median of its group (layer). Selection then
treats protected units as kept (score +inf; `hfprune.steps.selection.protect_scores`), so the criterion ranks the rest
exactly as it would, and the removed count stays the configured one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..calibration.forward import no_kv_cache, run_model
from ..errors import CalibrationError
from ..structure import Layer, UnitGroup
from .masks import consumer_layers


@dataclass
class Protection:
    """Protected units: per group ``[units]`` bool (structured) or per layer ``[in]`` bool of input columns whose
    weights are all kept (unstructured, N:M); ``ratio`` the peak / median of each protected entry."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    ratio: dict[str, list[float]] = field(default_factory=dict)

    def to_report(self) -> dict[str, list[int]]:
        """``{group or layer: [protected indices]}``, only where something is protected (PruningReport.protected)."""
        return {n: m.nonzero().flatten().tolist() for n, m in self.masks.items() if m.any()}


def measure_hook(layer: Layer, mode: str, acc: dict[str, torch.Tensor], count: dict[str, int], name: str):
    """A forward hook adding one call's ``max |a_j|`` (``"outliers"``) or ``sum a_j^2`` (``"energy"``) per input
    column of ``layer`` to ``acc[name]`` (float64 ``[in]``), and its token count to ``count[name]``."""
    def fn(module: nn.Module, args: tuple, output: Any) -> None:
        x = layer.input_matrix(args[0].detach())
        if mode == "outliers":
            v = x.abs().amax(dim=0).double()
            acc[name] = v if name not in acc else torch.maximum(acc[name], v)
        else:
            v = x.double().square().sum(dim=0)
            acc[name] = v if name not in acc else acc[name] + v
        count[name] = count.get(name, 0) + x.shape[0]
    return fn


def finish_measure(acc: dict[str, torch.Tensor], count: dict[str, int], mode: str) -> dict[str, torch.Tensor]:
    """The measures from the hooks' sums (energy: the mean over tokens); non-finite activations are an error."""
    for n, v in acc.items():
        if not torch.isfinite(v).all():
            raise CalibrationError(f"Protection: non-finite activations at the input of {n}; check the weights and "
                                   "the calibration data.")
    return acc if mode == "outliers" else {n: v / max(count[n], 1) for n, v in acc.items()}


@torch.no_grad()
def input_measure(model: nn.Module, layers: dict[str, Layer], batches: list[Any],
                  mode: str) -> dict[str, torch.Tensor]:
    """Per input column of each of ``layers``, over the calibration tokens (one forward pass): ``max |a_j|``
    (``mode="outliers"``) or ``E[a_j^2]`` (``"energy"``), float64 ``[in]``."""
    acc: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    handles = [l.module.register_forward_hook(measure_hook(l, mode, acc, count, n)) for n, l in layers.items()]
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
    return finish_measure(acc, count, mode)


def _above_median(measure: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    ratio = measure / measure.median().clamp(min=1e-12)
    return ratio > threshold, ratio


def detect_outliers(model: nn.Module, layers: dict[str, Layer], groups: list[UnitGroup] | None, batches: list[Any],
                    threshold: float, mode: str = "outliers") -> Protection:
    """Protected units of ``groups`` (or input columns of ``layers`` when ``groups`` is None); see the module.
    ``mode``: "outliers" (activation peak) or "energy" (output energy ``E[a_j^2] ||W_:,j||^2``)."""
    names = consumer_layers(layers, groups)
    return protect_from(input_measure(model, {n: layers[n] for n in names}, batches, mode), layers, groups,
                        threshold, mode)


def protect_from(stats: dict[str, torch.Tensor], layers: dict[str, Layer], groups: list[UnitGroup] | None,
                 threshold: float, mode: str) -> Protection:
    """The protected units of ``groups`` (or columns of the layers in ``stats``) from their layers' measures."""
    def measure(name: str) -> torch.Tensor:  # per input column
        if mode == "outliers":
            return stats[name].cpu()
        w = layers[name].weight_matrix().detach().double()
        return (stats[name].to(w.device) * w.square().sum(dim=0)).cpu()

    out = Protection()
    if groups is None:
        for n in stats:
            out.masks[n], r = _above_median(measure(n), threshold)
            out.ratio[n] = r[out.masks[n]].tolist()
        return out
    for g in groups:
        per = []
        for c in g.consumers:
            if c.layer in stats:
                cols = measure(c.layer)[_columns(layers[c.layer], c.index)]
                per.append(cols.amax(dim=1) if mode == "outliers" else cols.sum(dim=1))
        if not per:
            continue
        unit = torch.stack(per).amax(dim=0) if mode == "outliers" else torch.stack(per).sum(dim=0)
        out.masks[g.name], r = _above_median(unit, threshold)
        out.ratio[g.name] = r[out.masks[g.name]].tolist()
    return out


def _columns(layer: Layer, index: torch.Tensor) -> torch.Tensor:
    """Input columns of ``layer`` owned by each unit (conv channels own their kernel windows)."""
    if layer.kind == "conv2d":
        k = layer.in_features // layer.module.in_channels
        return (index[..., None] * k + torch.arange(k)).flatten(1)
    return index
