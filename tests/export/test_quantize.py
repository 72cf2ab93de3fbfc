"""Quantize after pruning (hfprune export --format quanto-int4): a pruned tiny LLM whose widths are multiples of 128
(hfprune's default) is quantized with groups of 128 in every layer, runs, stays close to the float model and reloads
with quanto's loader exactly."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T

import hfprune
from hfprune import ConfigError, PruningConfig
from hfprune.export.quantize import group_size

IDS = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("width, expected", [(1024, 128), (768, 128), (320, 64), (200, None), (128, None)])
def test_group_size_matches_quantos_rule(width, expected):
    assert group_size(width) == expected


def test_pruned_model_quantizes_to_int4_with_groups_of_128_and_reloads(tmp_path):
    from optimum.quanto import QuantizedModelForCausalLM

    torch.manual_seed(0)
    model = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=64))
    res = hfprune.prune(model.eval(), PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.3),
                        progress=False)
    assert res.model.config.intermediate_size == 768
    res.save_pretrained(tmp_path / "pruned")
    out = hfprune.export(tmp_path / "pruned", tmp_path / "int4", format="quanto-int4")
    info = json.loads((tmp_path / "int4" / "hfprune_export.json").read_text())["quantization"]
    assert info["bits"] == 4 and info["layers"] == 14 and info["grouped_128"] == 14 and not info["left_in_float"]
    qmodel = QuantizedModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        ref, q = res.model(IDS).logits, qmodel(IDS).logits
    assert torch.isfinite(q).all() and not torch.equal(q, ref)
    assert (q - ref).norm() / ref.norm() < 0.5  # 4-bit weights move the outputs, not scramble them
    with pytest.raises(ConfigError, match="nothing to export"):
        hfprune.export(tmp_path / "pruned", tmp_path / "padded", format="padded")
