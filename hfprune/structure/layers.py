"""A uniform view of the weight layers hfprune scores: Linear, GPT-2's Conv1D and Conv2d all become matrices.

Every criterion works on ``W`` as an ``[out, in]`` matrix and on inputs as ``[samples, in]`` matrices, whatever
the layer type, so each formula is written once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

try:  # GPT-2 style Conv1D stores its weight as [in, out]
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = ()  # type: ignore[assignment]

SCORABLE = (nn.Linear, nn.Conv2d) + ((Conv1D,) if Conv1D else ())


def is_scorable(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.groups == 1
    return isinstance(module, SCORABLE)


@dataclass(eq=False)
class Layer:
    """One scorable weight layer of a model, named as in ``model.named_modules()``."""

    name: str
    module: nn.Module

    @property
    def kind(self) -> str:
        if isinstance(self.module, nn.Conv2d):
            return "conv2d"
        if Conv1D and isinstance(self.module, Conv1D):
            return "conv1d"
        return "linear"

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.module, "bias", None)

    @property
    def out_features(self) -> int:
        return self.weight_matrix().shape[0]

    @property
    def in_features(self) -> int:
        return self.weight_matrix().shape[1]

    def weight_matrix(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``W`` as ``[out, in]`` (a view where possible; conv kernels flattened into ``in``)."""
        w = self.module.weight if weight is None else weight
        if self.kind == "conv1d":
            return w.t()
        if self.kind == "conv2d":
            return w.reshape(w.shape[0], -1)
        return w

    def from_matrix(self, matrix: torch.Tensor) -> torch.Tensor:
        """Inverse of `weight_matrix`: a ``[out, in]`` tensor back in the parameter's own layout."""
        if self.kind == "conv1d":
            return matrix.t()
        if self.kind == "conv2d":
            return matrix.reshape(self.module.weight.shape)
        return matrix

    def input_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """The layer input as ``[samples, in]``: tokens x features, or image positions x unfolded kernel windows."""
        if self.kind == "conv2d":
            m = self.module
            cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
            return cols.transpose(1, 2).reshape(-1, cols.shape[1])
        return x.reshape(-1, x.shape[-1])

    def output_matrix(self, z: torch.Tensor) -> torch.Tensor:
        """The layer output (or its gradient) as ``[samples, out]``."""
        if self.kind == "conv2d":
            return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]) if z.dim() == 4 else z.reshape(-1, z.shape[1])
        return z.reshape(-1, z.shape[-1])


def find_layers(model: nn.Module) -> dict[str, Layer]:
    """Every scorable layer of ``model`` by module name."""
    return {n: Layer(n, m) for n, m in model.named_modules() if is_scorable(m)}


def _new_param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t.contiguous().clone(), requires_grad=like.requires_grad)


#: attribute of a layer under `track_origins`: the original index of every output row it still holds
ORIGIN = "_hfprune_origin"


def mark_origins(model: nn.Module) -> None:
    """Start (or restart) the record of `track_origins` from the layers' present shapes."""
    for m in model.modules():
        if is_scorable(m) and not isinstance(m, nn.Conv2d):  # conv kernels are not refit to a dense model
            layer = Layer("", m)
            setattr(m, ORIGIN, torch.arange(layer.out_features))


@contextmanager
def track_origins(model: nn.Module) -> Iterator[None]:
    """While inside, every scorable layer records which original output rows its weight still holds
    (`slice_layer` updates the record; Linear and Conv1D layers), so a refit can match a compacted layer with its
    reference counterpart."""
    mark_origins(model)
    try:
        yield
    finally:
        for m in model.modules():
            if hasattr(m, ORIGIN):
                delattr(m, ORIGIN)


@torch.no_grad()
def slice_layer(module: nn.Module, side: str, keep: torch.Tensor) -> None:
    """Keep only the output rows (``side="out"``) or input features (``"in"``) listed in ``keep``."""
    layer = Layer("", module)
    origin = getattr(module, ORIGIN, None)
    if origin is not None and side == "out":
        setattr(module, ORIGIN, origin[keep.cpu()])
    keep = keep.to(module.weight.device)
    if layer.kind == "conv1d":  # weight [in, out]
        dim = 1 if side == "out" else 0
        module.weight = _new_param(module.weight.index_select(dim, keep), module.weight)
        if side == "out":
            module.bias = _new_param(module.bias.index_select(0, keep), module.bias)
            module.nf = len(keep)
        return
    dim = 0 if side == "out" else 1
    module.weight = _new_param(module.weight.index_select(dim, keep), module.weight)
    if side == "out" and module.bias is not None:
        module.bias = _new_param(module.bias.index_select(0, keep), module.bias)
    if isinstance(module, nn.Linear):
        if side == "out":
            module.out_features = len(keep)
        else:
            module.in_features = len(keep)
    elif isinstance(module, nn.Conv2d):
        if side == "out":
            module.out_channels = len(keep)
        else:
            module.in_channels = len(keep)


def pad_layer(module: nn.Module, side: str, extra: int) -> None:
    """Append ``extra`` zero output rows (and zero bias entries, ``side="out"``) or zero input features (``"in"``):
    the layer computes the same on its old features and nothing from the new ones (the padded exports)."""
    layer = Layer("", module)
    if layer.kind == "conv1d":  # weight [in, out]
        dim = 1 if side == "out" else 0
    else:
        dim = 0 if side == "out" else 1
    w = module.weight
    shape = list(w.shape)
    shape[dim] = extra
    module.weight = _new_param(torch.cat([w, w.new_zeros(shape)], dim), w)
    if side == "out" and module.bias is not None:
        module.bias = _new_param(torch.cat([module.bias, module.bias.new_zeros(extra)]), module.bias)
    new = w.shape[dim] + extra
    if layer.kind == "conv1d":
        if side == "out":
            module.nf = new
    elif isinstance(module, nn.Linear):
        setattr(module, "out_features" if side == "out" else "in_features", new)
    elif isinstance(module, nn.Conv2d):
        setattr(module, "out_channels" if side == "out" else "in_channels", new)
