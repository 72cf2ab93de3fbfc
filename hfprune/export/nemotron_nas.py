"""``nemotron-nas``: NVIDIA's heterogeneous Llama layout (DeciLM ``block_configs``), which vLLM (``nemotron_nas``),
llama.cpp (``deci``), TensorRT-LLM, SGLang and mlx-lm read natively.

Each block states its own KV groups (``attention.n_heads_in_group``) and FFN width (``ffn.ffn_mult``); the query
head count and head size are the config's, the same in every block. Readers compute the FFN width as
``int(2 * ffn_mult * hidden_size / 3)`` rounded up to a multiple of 256, so each FFN is zero-padded to that width
(exact, see `hfprune.export.padded`) and ``ffn_mult`` chosen so that the formula gives it back. Blocks removed by
depth pruning are gone (hfprune renumbers the kept ones), so no block is ``no_op``.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..structure import adapter_for
from ..structure.layers import Layer, pad_layer

FFN_ROUNDING = 256
FAMILIES = ("llama",)
_FIX = "export with format='padded' instead, or load the folder with hfprune.load_pruned"


def ffn_width(ffn_mult: float, hidden: int) -> int:
    """The FFN width a nemotron-nas reader computes (DeciLM's ``_ffn_mult_to_intermediate_size``)."""
    width = int(2 * ffn_mult * hidden / 3)
    return width if width % FFN_ROUNDING == 0 else width + FFN_ROUNDING - width % FFN_ROUNDING


def ffn_mult_for(width: int, hidden: int) -> float:
    """An ``ffn_mult`` the readers turn into exactly ``width`` (a multiple of 256)."""
    mult = round(3 * width / (2 * hidden), 6)
    while ffn_width(mult, hidden) < width:
        mult = round(mult + 1e-6, 6)
    while ffn_width(mult, hidden) > width:
        mult = round(mult - 1e-6, 6)
    return mult


def _check(model: nn.Module) -> None:
    cfg = model.config
    if cfg.model_type not in FAMILIES:
        raise ConfigError(f"The nemotron-nas layout is a Llama variant; {cfg.model_type!r} models do not fit it "
                          f"(their norms, biases or attention differ); {_FIX}.")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(cfg, flag, False):
            raise ConfigError(f"The model has {flag}=True; the nemotron-nas readers build layers without biases; "
                              f"{_FIX}.")


def to_nemotron_nas(model: nn.Module) -> dict[str, Any]:
    """Pad every FFN to the width its readers compute and return the ``config.json`` of the DeciLM layout."""
    _check(model)
    adapter = adapter_for(model)
    cfg = model.config
    hidden, heads = cfg.hidden_size, cfg.num_attention_heads
    blocks: list[dict[str, Any]] = []
    for i, block in enumerate(model.model.layers):
        attn = block.self_attn
        (_, _, spec), = [a for a in adapter.attention_modules(block) if a[1] is attn]
        q, kv = spec.head_counts(attn)
        if q != heads:
            raise ConfigError(f"Block {i} keeps {q} query heads where the config has {heads}: nemotron-nas states "
                              "KV groups per block, not query heads (prune heads with scope='local'); " + _FIX + ".")
        if spec.head_dim(attn) * heads != hidden:
            raise ConfigError(f"The heads are {spec.head_dim(attn)} wide, not hidden_size / num_attention_heads = "
                              f"{hidden // heads}: nemotron-nas readers derive the head size from the residual width "
                              "(residual channels and heads pruned apart); " + _FIX + ".")
        width = Layer("", block.mlp.down_proj).in_features
        padded = math.ceil(width / FFN_ROUNDING) * FFN_ROUNDING
        if padded > width:
            for name in ("gate_proj", "up_proj"):
                pad_layer(block.mlp.get_submodule(name), "out", padded - width)
            pad_layer(block.mlp.down_proj, "in", padded - width)
        blocks.append({"attention": {"n_heads_in_group": heads // kv, "no_op": False, "replace_with_linear": False},
                       "ffn": {"ffn_mult": ffn_mult_for(padded, hidden), "no_op": False,
                               "replace_with_linear": False}})
    out = cfg.to_dict()
    for key in ("intermediate_size", "num_key_value_heads", "head_dim", "transformers_version"):
        out.pop(key, None)
    out.update(model_type="nemotron-nas", architectures=["DeciLMForCausalLM"], block_configs=blocks)
    return out
