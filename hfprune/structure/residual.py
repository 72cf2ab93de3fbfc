"""The residual stream of a transformer, and its compaction (``granularity="hidden"``).

A residual channel c lives in: column c of every token / position embedding, entry c of every norm over the
stream (the final norm included), input column c of every projection that reads the stream (q/k/v, gate/up, the
LM head tied or not, classifier heads), and output row c (plus bias) of every projection that writes it (o_proj,
down_proj). Removing channels slices all of them together; the config's ``hidden_size`` is rewritten (Llama-style
configs keep their explicit ``head_dim``, so plain ``from_pretrained`` loads the result).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import StructureError
from .adapters import _ADAPTERS, ResidualSpec, adapter_for
from .layers import Layer, is_scorable, slice_layer


def _last(name: str) -> str:
    return name.rsplit(".", 1)[-1]


@dataclass
class ResidualStream:
    """The modules holding the residual stream of one model, by role."""

    spec: ResidualSpec
    width: int
    embeddings: dict[str, nn.Module] = field(default_factory=dict)
    norms: dict[str, nn.Module] = field(default_factory=dict)
    readers: dict[str, nn.Module] = field(default_factory=dict)
    writers: dict[str, nn.Module] = field(default_factory=dict)


def residual_stream(model: nn.Module) -> ResidualStream:
    """Find the residual stream from the family adapter; `StructureError` when the adapter does not describe it,
    or when a module it names does not have the stream's width (a layout the adapter does not know)."""
    adapter = adapter_for(model)
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", type(model).__name__)
    spec = adapter.residual if adapter is not None else None
    if spec is None or mt not in spec.model_types:
        known = sorted({t for a in _ADAPTERS if a.residual for t in a.residual.model_types})
        raise StructureError(f"Granularity 'hidden' needs a family whose residual stream hfprune knows (model types "
                             f"{', '.join(known)}); {mt!r} is not one. Prune 'layers', 'neurons' or 'heads' "
                             "instead.")
    width = getattr(cfg, spec.config_key)
    rs = ResidualStream(spec, width)
    for name, m in model.named_modules():
        last = _last(name)
        if last in spec.embeddings and isinstance(m, nn.Embedding):
            rs.embeddings[name] = m
        elif last in spec.norms and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 1:
            rs.norms[name] = m
        elif last in spec.readers and is_scorable(m):
            rs.readers[name] = m
        elif last in spec.writers and is_scorable(m):
            rs.writers[name] = m
    wrong = [n for n, m in rs.embeddings.items() if m.embedding_dim != width]
    wrong += [n for n, m in rs.norms.items() if m.weight.shape[0] != width]
    wrong += [n for n, m in rs.readers.items() if Layer(n, m).in_features != width]
    wrong += [n for n, m in rs.writers.items() if Layer(n, m).out_features != width]
    if wrong or not rs.embeddings or not rs.writers:
        raise StructureError(f"The residual stream of this {mt!r} model does not have the layout hfprune's adapter "
                             f"describes (modules {wrong[:4]} are not {width} wide); 'hidden' is not supported for "
                             "it.")
    return rs


@torch.no_grad()
def compact_hidden(model: nn.Module, keep: torch.Tensor, norm_scale: dict[str, float] | None = None) -> None:
    """Keep only the residual channels where ``keep`` (bool ``[hidden]``) is True, in every module of the stream;
    multiply each norm's weight by ``norm_scale[name]`` (RMS compensation) where given; rewrite ``hidden_size``."""

    rs = residual_stream(model)
    idx = keep.nonzero().flatten()
    tied = {id(m.weight) for m in rs.embeddings.values()}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for m in rs.embeddings.values():
        m.weight = nn.Parameter(m.weight.index_select(1, idx.to(m.weight.device)).contiguous(),
                                requires_grad=m.weight.requires_grad)
        m.embedding_dim = len(idx)
    for name, m in rs.norms.items():
        w = m.weight.index_select(0, idx.to(m.weight.device)) * (norm_scale or {}).get(name, 1.0)
        m.weight = nn.Parameter(w.contiguous(), requires_grad=m.weight.requires_grad)
        if getattr(m, "bias", None) is not None:
            m.bias = nn.Parameter(m.bias.index_select(0, idx.to(m.bias.device)).contiguous())
        if hasattr(m, "normalized_shape"):
            m.normalized_shape = (len(idx),)
    for m in rs.readers.values():
        if m is head and id(m.weight) in tied:  # tied LM head: re-tied below
            continue
        slice_layer(m, "in", idx)
    for m in rs.writers.values():
        slice_layer(m, "out", idx)
    if head is not None and id(head.weight) in tied:
        model.tie_weights()
        head.in_features = len(idx)
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    cfg.head_dim = head_dim  # explicit, so the attention width no longer follows hidden_size
    setattr(cfg, rs.spec.config_key, len(idx))


def rms_scales(stats_sq: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, float]:
    """Per norm, ``rms_kept / rms_all`` of its calibration input (hfprune extension): multiplying the norm's weight
    by it gives the kept channels the same output scale as before the other channels were removed."""
    out = {}
    for name, sq in stats_sq.items():
        sq = sq.double()
        out[name] = float(((sq[keep].sum() / keep.sum()) / (sq.sum() / sq.numel())).sqrt())
    return out
