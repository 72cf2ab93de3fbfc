"""Masks applied without changing shapes: removed weights (or every weight of a removed unit) set to zero.

Used to compare a masked model with its compacted twin, and by `PruningTrainer`, which re-applies the masks after
every optimizer step so that optimizer state, DDP and FSDP keep their shapes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, MutableMapping

import numpy as np
import torch
from torch import nn

from ..structure import Layer, UnitGroup


class PackedMasks(MutableMapping):
    """Boolean masks by name, stored one bit per entry and unpacked on access (a plain ``dict`` otherwise).

    Layer-by-layer pruning keeps every unstructured weight mask until the end; as bool tensors they would cost a
    quarter of an fp32 model (half of a bf16 one), packed they cost 1/32 (1/16)."""

    def __init__(self) -> None:
        self._packed: dict[str, tuple[np.ndarray, torch.Size]] = {}

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        self._packed[name] = (np.packbits(mask.detach().cpu().bool().numpy().ravel()), mask.shape)

    def __getitem__(self, name: str) -> torch.Tensor:
        bits, shape = self._packed[name]
        return torch.from_numpy(np.unpackbits(bits, count=math.prod(shape)).astype(bool)).view(shape)

    def __contains__(self, name: object) -> bool:  # without unpacking
        return name in self._packed

    def __delitem__(self, name: str) -> None:
        del self._packed[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)


def consumer_layers(layers: dict[str, Layer], groups: list[UnitGroup] | None) -> list[str]:
    """The layers of ``layers`` that read the units: every layer (unstructured, ``groups`` None), else the groups'
    consumers (``down_proj`` for FFN neurons, ``o_proj`` for heads): what protection measures and a refit fits."""
    if groups is None:
        return list(layers)
    return sorted({c.layer for g in groups for c in g.consumers if c.layer in layers})


@torch.no_grad()
def apply_weight_masks(layers: dict[str, Layer], masks: dict[str, torch.Tensor]) -> None:
    """Zero the weights where ``masks[name]`` (``[out, in]``, True = keep) is False."""
    for name, mask in masks.items():
        layer = layers[name]
        w = layer.module.weight
        w.mul_(layer.from_matrix(mask.to(w.device, w.dtype)))


def _removed_index(coupling_index: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return coupling_index[~keep.cpu()].flatten()


@torch.no_grad()
def apply_unit_masks(model: nn.Module, groups: list[UnitGroup], masks: dict[str, torch.Tensor]) -> None:
    """Zero every parameter slice of every removed unit (producer rows and biases, consumer columns, norms)."""
    for g in groups:
        keep = masks[g.name]
        if keep.all():
            continue
        for c in g.couplings:
            idx = _removed_index(c.index, keep)
            module = model.get_submodule(c.layer)
            if c.side == "param":
                for p in (getattr(module, "weight", None), getattr(module, "bias", None)):
                    if p is not None:
                        p[idx.to(p.device)] = 0
                continue
            layer = Layer(c.layer, module)
            w = layer.weight_matrix()
            if c.side == "out":
                w[idx.to(w.device)] = 0
                if layer.bias is not None:
                    layer.bias[idx.to(w.device)] = 0
            elif layer.kind == "conv2d":  # input channels: every kernel column of the channel
                module.weight[:, idx.to(w.device)] = 0
            else:
                w[:, idx.to(w.device)] = 0


def removed_columns(layer: Layer, groups: list[UnitGroup], masks: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """``[out, in]`` bool of the weights of ``layer`` removed as consumer columns of removed units, or None."""
    removed = None
    for g in groups:
        for c in g.consumers:
            if c.layer != layer.name or masks[g.name].all():
                continue
            if removed is None:
                removed = torch.zeros(layer.weight_matrix().shape, dtype=torch.bool)
            cols = _removed_index(c.index, masks[g.name])
            if layer.kind == "conv2d":
                k = layer.in_features // layer.module.in_channels
                cols = (cols[:, None] * k + torch.arange(k)).flatten()
            removed[:, cols] = True
    return removed
