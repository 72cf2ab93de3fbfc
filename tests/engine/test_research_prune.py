"""Each research criterion runs end to end through `prune()` on tiny models (the engine's protocol, for real)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from hfprune import PruningConfig
from hfprune.prune import prune


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


@pytest.mark.parametrize("options", [
    dict(criterion="expressiveness", granularity="neurons"),
    dict(criterion="hybrid", granularity="neurons+heads"),
    {"criterion": "hybrid", "granularity": "neurons", "options": {"importance": "taylor", "form": "product"}},
    dict(criterion="elimination_compensation", granularity="weights", scope="global"),
    dict(criterion="elimination_compensation", granularity="neurons", options={"output": "layer"}),
    dict(criterion="relative_importance", granularity="weights", options={"threshold": "tau"}),
    dict(criterion="relative_importance", granularity="neurons"),
])
def test_language_model(options):
    model = tiny_llama()
    config = PruningConfig(sparsity=0.5, calibration={"num_samples": 2, "seq_len": 8, "batch_size": 2}, **options)
    result = prune(model, config, calibration_data="random", progress=False)
    assert result.report.nonzero_after < result.report.params_before
    assert torch.isfinite(result.model(torch.randint(0, 64, (1, 8))).logits).all()


def test_compensation_enables_the_bias_it_writes():
    model = tiny_llama()
    config = PruningConfig(criterion="elimination_compensation", granularity="neurons", sparsity=0.5,
                           calibration={"num_samples": 2, "seq_len": 8, "batch_size": 2})
    result = prune(model, config, calibration_data="random", progress=False)
    assert result.model.config.mlp_bias
    assert result.model.model.layers[0].mlp.down_proj.bias.abs().sum() > 0


@pytest.mark.parametrize("criterion", ["expressiveness", "hybrid", "elimination_compensation",
                                       "relative_importance"])
def test_conv_channels(criterion):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    x = torch.randn(6, 3, 8, 8)
    config = PruningConfig(criterion=criterion, granularity="channels", sparsity=0.5, ignore=[],
                           calibration={"num_samples": 6, "batch_size": 3})
    result = prune(model, config, calibration_data=x, example_inputs=x[:1], progress=False)
    assert result.report.params_after < result.report.params_before
    assert result.model(x).shape == (6, 4)
