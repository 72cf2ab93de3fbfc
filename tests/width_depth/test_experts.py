"""Experts as a unit (granularity="experts"): REAP and frequency against their definitions, the compacted model
equals the model whose removed experts the router can never pick, reloads with plain transformers in a fresh
interpreter, and bad requests are refused before any work."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import transformers as T

import hfprune
from hfprune import ConfigError, PruningConfig, StructureError
from hfprune.structure.experts import moe_blocks
from hfprune.width_depth.scores import frequency_experts, reap_experts

COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
              num_experts_per_tok=2)
FAMILIES = {
    "mixtral": lambda: T.MixtralConfig(**COMMON, intermediate_size=32, num_local_experts=8, head_dim=16),
    "qwen2_moe": lambda: T.Qwen2MoeConfig(**{**COMMON, "num_hidden_layers": 3}, intermediate_size=48,
                                          moe_intermediate_size=32, shared_expert_intermediate_size=48,
                                          num_experts=8, mlp_only_layers=[1]),
    "qwen3_moe": lambda: T.Qwen3MoeConfig(**COMMON, intermediate_size=48, moe_intermediate_size=32, num_experts=8,
                                          head_dim=16, norm_topk_prob=True),
    "olmoe": lambda: T.OlmoeConfig(**COMMON, intermediate_size=32, num_experts=8),
}
IDS = torch.randint(0, 100, (4, 24), generator=torch.Generator().manual_seed(0))


def tiny_moe(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(FAMILIES[family]()).eval()
    with torch.no_grad():  # routing that depends on the token, and experts that differ
        for b in moe_blocks(model):
            b.router.weight.normal_(0, 0.5)
            for p in b.experts.parameters():
                p.normal_(0, 0.1)
    return model


def block_inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The hidden states entering every MoE block, ``[tokens, hidden]``."""
    seen: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(b.name).register_forward_pre_hook(
        lambda m, a, name=b.name: seen.__setitem__(name, a[0].reshape(-1, a[0].shape[-1]))) for b in moe_blocks(model)]
    with torch.no_grad():
        model(IDS)
    for h in handles:
        h.remove()
    return seen


def routing(block, x: torch.Tensor, renorm: bool, removed: list[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k experts and weights from the definition: softmax of the router logits (removed experts at -inf)."""
    logits = x @ block.router.weight.T
    logits[:, list(removed)] = -torch.inf
    w, idx = logits.float().softmax(-1).topk(block.router.top_k, dim=-1)
    return (w / w.sum(-1, keepdim=True) if renorm else w), idx


def renormalises(model) -> bool:
    return model.config.model_type == "mixtral" or bool(getattr(model.config, "norm_topk_prob", False))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_reap_and_frequency_equal_their_definitions(family):
    model = tiny_moe(family)
    inputs = block_inputs(model)
    reap, freq = reap_experts(model, moe_blocks(model), [{"input_ids": IDS}]), \
        frequency_experts(model, moe_blocks(model), [{"input_ids": IDS}])
    for block in moe_blocks(model):
        x = inputs[block.name]
        w, idx = routing(block, x, renormalises(model))
        total, count = torch.zeros(block.num_experts), torch.zeros(block.num_experts)
        for t in range(x.shape[0]):
            for j in range(idx.shape[1]):
                e = int(idx[t, j])
                g, u = (block.experts.gate_up_proj[e] @ x[t]).chunk(2)
                out = block.experts.down_proj[e] @ (F.silu(g) * u)
                total[e] += w[t, j] * out.norm()
                count[e] += 1
        assert torch.equal(freq[block.name].float(), count)
        assert torch.allclose(reap[block.name].float(), total / count.clamp(min=1), atol=1e-5)


def masked(model, removed: dict[str, list[int]]):
    """The model whose removed experts' router logits are -inf (what removal must equal)."""
    model = copy.deepcopy(model)
    renorm = renormalises(model)
    for block in moe_blocks(model):
        def forward(hidden_states, block=block):
            x = hidden_states.reshape(-1, block.router.weight.shape[1])
            w, idx = routing(block, x, renorm, removed[block.name])
            return x @ block.router.weight.T, w.to(x.dtype), idx
        block.router.forward = forward
    return model


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("score", ["reap", "frequency"])
def test_half_the_experts_removed_equals_the_masked_model_and_reloads(tmp_path, family, score):
    model = tiny_moe(family)
    dense = copy.deepcopy(model)
    res = hfprune.prune(model, PruningConfig(granularity="experts", sparsity=0.5,
                                             width_depth={"expert_score": score}),
                        calibration_data=IDS, progress=False)
    removed = res.report.experts_removed
    assert set(removed) == {b.name for b in moe_blocks(dense)} and all(len(r) == 4 for r in removed.values())
    assert all(b.num_experts == 4 and b.experts.gate_up_proj.shape[0] == 4 for b in moe_blocks(res.model))
    assert all(b.router.weight.shape == (4, 64) for b in moe_blocks(res.model))
    assert getattr(res.model.config, "num_experts", None) == 4 or res.model.config.num_local_experts == 4
    with torch.no_grad():
        expected = masked(dense, removed)(IDS).logits
        assert not torch.allclose(dense(IDS).logits, expected, atol=1e-3)  # the removal matters
        assert torch.allclose(res.model(IDS).logits, expected, atol=1e-5)
    res.save_pretrained(tmp_path / "out")
    report = json.loads((tmp_path / "out" / "pruning_report.json").read_text())
    assert report["experts_removed"] == removed
    if score != "reap":
        return  # the reload does not depend on the score
    torch.save(expected, tmp_path / "expected.pt")
    code = ("import sys, torch, transformers; m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval();"
            "assert 'hfprune' not in sys.modules; ids, ref = torch.load(sys.argv[2]), torch.load(sys.argv[3]);"
            "out = m(ids).logits; assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()")
    torch.save(IDS, tmp_path / "ids.pt")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "out"), str(tmp_path / "ids.pt"),
                    str(tmp_path / "expected.pt")], check=True)


def test_bad_expert_requests_are_refused_before_work():
    model = tiny_moe("mixtral")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="fewer than the 2 experts every token is routed to"):
        hfprune.prune(model, PruningConfig(granularity="experts", sparsity=0.9), calibration_data=IDS,
                      progress=False)
    with pytest.raises(ConfigError, match="scope='local'"):
        PruningConfig(granularity="experts", scope="global")
    with pytest.raises(StructureError, match="no routed experts"):
        hfprune.prune(T.LlamaForCausalLM(T.LlamaConfig(**{k: v for k, v in COMMON.items()
                                                            if k != "num_experts_per_tok"}, intermediate_size=32)),
                      PruningConfig(granularity="experts"), calibration_data=IDS, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
