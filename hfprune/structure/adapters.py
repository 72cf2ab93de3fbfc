"""Hugging Face family adapters: where the FFN neurons and attention heads are, and which config keys change.

One adapter per family, each a few lines of module names. The generic machinery (scoring, selection, compaction)
never looks at names; it sees `UnitGroup`s. Attention modules keep their head counts as attributes, which
`fix_attention` recomputes from the (compacted or re-loaded) weight shapes, so compaction and `load_pruned` share
one code path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from .groups import Coupling, UnitGroup, blocks
from .layers import Layer


@dataclass(frozen=True)
class FFNSpec:
    producers: tuple[str, ...]  # child names whose output rows are the neurons
    consumer: str  # child whose input columns are the neurons
    config_key: str


@dataclass(frozen=True)
class AttentionSpec:
    """Where one family's attention projections are, and which attributes of its attention module hold head
    counts (rewritten after heads are removed, by compaction and by `load_pruned` alike)."""

    q: str
    k: str
    v: str
    o: str
    fused_qkv: bool = False  # GPT-2: q, k, v are thirds of one Conv1D's output
    core: str = ""  # child holding the head attributes (BERT: "self"); "" = the attention module itself
    head_dim_attr: str = "head_dim"  # attribute with the size of one head
    head_count_attrs: tuple[str, ...] = ()  # attributes equal to the number of query heads
    width_attrs: tuple[str, ...] = ()  # attributes equal to query heads x head size
    kv_groups_attr: str | None = None  # attribute equal to query heads per KV head (GQA)

    def core_module(self, attn: nn.Module) -> nn.Module:
        return attn.get_submodule(self.core) if self.core else attn

    def head_dim(self, attn: nn.Module) -> int:
        d = getattr(self.core_module(attn), self.head_dim_attr, None)
        if not isinstance(d, int):
            raise ConfigError(f"{type(attn).__name__} has no integer {self.head_dim_attr!r}; the family adapter does "
                              "not match this model's attention (see docs/architecture.md, 'Adding a family').")
        return d

    def head_counts(self, attn: nn.Module) -> tuple[int, int]:
        """(query heads, key/value heads) from the current weight shapes."""
        d = self.head_dim(attn)
        q = Layer("", attn.get_submodule(self.o)).in_features // d
        if self.fused_qkv:
            return q, q
        return q, Layer("", attn.get_submodule(self.k)).out_features // d

    def fix_attention(self, attn: nn.Module) -> None:
        """Rewrite the head-count attributes from the current weight shapes."""
        q, kv = self.head_counts(attn)
        core, d = self.core_module(attn), self.head_dim(attn)
        for attr in self.head_count_attrs:
            setattr(core, attr, q)
        for attr in self.width_attrs:
            setattr(core, attr, q * d)
        if self.kv_groups_attr:
            setattr(core, self.kv_groups_attr, q // kv)


@dataclass(frozen=True)
class Adapter:
    """Names of one family's prunable sub-modules, relative to a block (a module whose name we match)."""

    family: str
    model_types: tuple[str, ...]
    ffn: dict[str, FFNSpec]  # suffix of the FFN parent module -> spec
    attention: dict[str, AttentionSpec]  # suffix of the attention parent module -> spec
    heads_in_config: bool  # the config can express fewer heads (it has an explicit head_dim)
    #: parent-module suffix -> config flag that gives its linear layers biases (for compensation), e.g.
    #: {"mlp": "mlp_bias"}; families without such flags store biases only where the layer has one
    bias_flags: dict[str, str] = field(default_factory=dict)
    blocks: str = ""  # suffix of the ModuleList of transformer blocks (sequential calibration), e.g. "layers"

    def attention_modules(self, model: nn.Module) -> list[tuple[str, nn.Module, AttentionSpec]]:
        """Every attention module of ``model`` this adapter knows, with its spec."""
        return [(name, module, spec) for name, module in model.named_modules()
                for suffix, spec in self.attention.items()
                if _matches(name, suffix) and _has(module, spec.o) and _has(module, spec.q)]

    def fix_attention(self, model: nn.Module) -> None:
        """Rewrite every attention module's head counts from its weights (after compaction or a resized load)."""
        for _, module, spec in self.attention_modules(model):
            spec.fix_attention(module)

    def bias_flag(self, layer_name: str) -> tuple[str, str] | None:
        """(config flag, parent suffix) that governs the bias of ``layer_name``, or None."""
        parent = layer_name.rsplit(".", 1)[0]
        for suffix, flag in self.bias_flags.items():
            if _matches(parent, suffix):
                return flag, suffix
        return None

    def groups(self, model: nn.Module, layers: dict[str, Layer], kinds: list[str], gqa_mode: str) -> list[UnitGroup]:
        out: list[UnitGroup] = []
        for name, module in model.named_modules():
            if "neurons" in kinds:
                for suffix, spec in self.ffn.items():
                    if _matches(name, suffix) and all(_has(module, c) for c in (*spec.producers, spec.consumer)):
                        out.append(_ffn_group(name, spec, layers))
        if "heads" in kinds:
            out += [self._head_group(name, module, spec, layers, gqa_mode)
                    for name, module, spec in self.attention_modules(model)]
        return out

    def _head_group(self, name: str, module: nn.Module, spec: AttentionSpec, layers: dict[str, Layer],
                    gqa_mode: str) -> UnitGroup:
        d = spec.head_dim(module)
        o = layers[_join(name, spec.o)]
        n_heads = o.in_features // d
        if spec.fused_qkv:
            qkv = _join(name, spec.q)
            width = n_heads * d
            idx = torch.cat([blocks(n_heads, d, offset=i * width) for i in range(3)], dim=1)
            couplings = [Coupling(qkv, "out", idx), Coupling(o.name, "in", blocks(n_heads, d))]
            return UnitGroup(_join(name, "heads"), "heads", n_heads, couplings, meta={"head_dim": d}, parent=name)
        n_kv = layers[_join(name, spec.k)].out_features // d
        if n_kv == n_heads:  # plain multi-head attention
            couplings = [Coupling(_join(name, p), "out", blocks(n_heads, d)) for p in (spec.q, spec.k, spec.v)]
            couplings.append(Coupling(o.name, "in", blocks(n_heads, d)))
            return UnitGroup(_join(name, "heads"), "heads", n_heads, couplings, meta={"head_dim": d}, parent=name)
        r = n_heads // n_kv  # query heads per KV group (HF layout: query head h uses KV head h // r)
        if gqa_mode == "kv_groups":
            q_idx = blocks(n_kv, r * d)
            couplings = [Coupling(_join(name, spec.q), "out", q_idx),
                         Coupling(_join(name, spec.k), "out", blocks(n_kv, d)),
                         Coupling(_join(name, spec.v), "out", blocks(n_kv, d)),
                         Coupling(o.name, "in", q_idx)]
            return UnitGroup(_join(name, "kv_groups"), "heads", n_kv, couplings,
                             meta={"head_dim": d, "gqa": "kv_groups", "kv_heads": n_kv, "q_per_kv": r}, parent=name)
        # query_heads: unit u = the u-th query head of every KV group (so every group keeps the same count)
        per_head = blocks(n_heads, d).view(n_kv, r, d)
        q_idx = per_head.transpose(0, 1).reshape(r, n_kv * d)
        couplings = [Coupling(_join(name, spec.q), "out", q_idx), Coupling(o.name, "in", q_idx)]
        return UnitGroup(_join(name, "query_heads"), "heads", r, couplings,
                         meta={"head_dim": d, "gqa": "query_heads", "kv_heads": n_kv, "q_per_kv": r}, parent=name)


def _join(prefix: str, child: str) -> str:
    return f"{prefix}.{child}" if prefix else child


def _matches(name: str, suffix: str) -> bool:
    return suffix == "*" or name == suffix or name.endswith("." + suffix)


def _has(module: nn.Module, dotted: str) -> bool:
    try:
        module.get_submodule(dotted)
    except AttributeError:
        return False
    return True


def _ffn_group(name: str, spec: FFNSpec, layers: dict[str, Layer]) -> UnitGroup:
    consumer = layers[_join(name, spec.consumer)]
    n = consumer.in_features
    couplings = [Coupling(_join(name, p), "out", blocks(n, 1)) for p in spec.producers]
    couplings.append(Coupling(consumer.name, "in", blocks(n, 1)))
    return UnitGroup(_join(name, "neurons"), "neurons", n, couplings, config_key=spec.config_key, parent=name)


_LLAMA_LIKE = Adapter(
    family="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma", "gemma2", "olmo", "olmo2", "granite"),
    ffn={"mlp": FFNSpec(("gate_proj", "up_proj"), "down_proj", "intermediate_size")},
    attention={"self_attn": AttentionSpec("q_proj", "k_proj", "v_proj", "o_proj",
                                          kv_groups_attr="num_key_value_groups")},
    heads_in_config=True,
    bias_flags={"mlp": "mlp_bias", "self_attn": "attention_bias"},
    blocks="layers",
)

_ADAPTERS: list[Adapter] = [
    Adapter(
        family="bert",
        model_types=("bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie"),
        ffn={"*": FFNSpec(("intermediate.dense",), "output.dense", "intermediate_size")},
        attention={"attention": AttentionSpec("self.query", "self.key", "self.value", "output.dense", core="self",
                                              head_dim_attr="attention_head_size",
                                              head_count_attrs=("num_attention_heads",),
                                              width_attrs=("all_head_size",))},
        heads_in_config=False,
        blocks="encoder.layer",
    ),
    Adapter(
        family="gpt2",
        model_types=("gpt2",),
        ffn={"mlp": FFNSpec(("c_fc",), "c_proj", "n_inner")},
        attention={"attn": AttentionSpec("c_attn", "c_attn", "c_attn", "c_proj", fused_qkv=True,
                                         head_count_attrs=("num_heads",), width_attrs=("split_size", "embed_dim"))},
        heads_in_config=False,
        blocks="h",
    ),
    Adapter(
        family="vit",
        model_types=("vit",),
        ffn={"mlp": FFNSpec(("fc1",), "fc2", "intermediate_size")},
        attention={"attention": AttentionSpec("q_proj", "k_proj", "v_proj", "o_proj",
                                              head_count_attrs=("num_attention_heads",))},
        heads_in_config=True,
        blocks="encoder.layer",
    ),
    _LLAMA_LIKE,
]


def register_adapter(adapter: Adapter) -> Adapter:
    """Teach hfprune a model family (or replace the adapter of its model types): checked before the built-in ones.
    See docs/architecture.md, "Adding a family"."""
    if not isinstance(adapter, Adapter) or not adapter.model_types:
        raise ConfigError("register_adapter needs an Adapter with at least one model_type (config.model_type).")
    _ADAPTERS.insert(0, adapter)
    return adapter


def known_model_types() -> list[str]:
    return sorted({t for a in _ADAPTERS for t in a.model_types})


def adapter_for(model: nn.Module) -> Adapter | None:
    """The adapter of the model's ``config.model_type``; None for families hfprune does not know."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for a in _ADAPTERS:
        if model_type in a.model_types:
            return a
    return None
