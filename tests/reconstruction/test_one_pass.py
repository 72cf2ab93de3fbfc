"""calibration.mode='one_pass': each block's masks are chosen from the inputs the pruned and refit blocks before it
give, then the block is refit, in one pass (SparseGPT's order)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers.models import calibration, tiny_model
from hfprune import ConfigError, PruningConfig, prune
from hfprune.config.groups import ProtectionConfig
from hfprune.steps.protection import detect_outliers
from hfprune.structure import find_groups, find_layers


def _config(mode: str, granularity: str = "weights", **kw) -> PruningConfig:
    return PruningConfig(criterion="wanda", granularity=granularity, sparsity=0.5,
                         calibration={"mode": mode, "num_samples": 8, "seq_len": 12, "batch_size": 3}, **kw)


def _wanda_masks_by_hand(model, block: int, batches: torch.Tensor) -> dict[str, torch.Tensor]:
    """Wanda (|W_ij| ||x_j||, half of each row removed) of one block's linears, their inputs gathered by hooks on a
    whole-model forward: an independent computation of what the one pass must decide."""
    inputs: dict[str, list[torch.Tensor]] = {}
    layers = {n: m for n, m in model.model.layers[block].named_modules() if isinstance(m, torch.nn.Linear)}
    def keep(n):
        return lambda mod, a, out: inputs.setdefault(n, []).append(a[0].reshape(-1, a[0].shape[-1]))

    hooks = [m.register_forward_hook(keep(n)) for n, m in layers.items()]
    with torch.no_grad():
        for i in range(0, len(batches), 3):
            model(input_ids=batches[i:i + 3])
    for h in hooks:
        h.remove()
    out = {}
    for n, m in layers.items():
        x = torch.cat(inputs[n]).double()
        score = m.weight.detach().abs().double() * x.norm(dim=0)
        keep = torch.ones_like(score, dtype=torch.bool)
        keep.scatter_(1, score.argsort(dim=1)[:, : score.shape[1] // 2], False)
        out[f"model.layers.{block}.{n}"] = keep
    return out


def test_each_block_is_scored_on_the_inputs_the_pruned_blocks_before_it_give():
    dense = tiny_model("llama")
    model = copy.deepcopy(dense)
    result = prune(model, _config("one_pass"), calibration_data=calibration("llama"), progress=False)
    assert result.report.reconstruction["layers"], "refit in the same pass"
    # block 0 sees the dense inputs; block 1 the outputs of block 0 as pruned and refit
    assert all(torch.equal(result.masks[n], m) for n, m in _wanda_masks_by_hand(dense, 0, calibration("llama")).items())
    hybrid = copy.deepcopy(dense)
    hybrid.model.layers[0].load_state_dict(model.model.layers[0].state_dict())
    by_hand = _wanda_masks_by_hand(hybrid, 1, calibration("llama"))
    assert all(torch.equal(result.masks[n], m) for n, m in by_hand.items())
    sequential = prune(copy.deepcopy(dense), _config("sequential"), calibration_data=calibration("llama"),
                       progress=False)
    assert any(not torch.equal(sequential.masks[n], m) for n, m in by_hand.items()), \
        "the two-pass modes score block 1 on the dense inputs: a different decision"


@pytest.mark.parametrize("granularity,kw", [("neurons+heads", {"head_sparsity": 1 / 3}), ("2:4", {})])
def test_one_pass_reaches_the_sparsity_and_refits_every_masked_layer(granularity, kw):
    result = prune(tiny_model("llama"), _config("one_pass", granularity, **kw), calibration_data=calibration("llama"),
                   progress=False)
    rec = result.report.reconstruction
    assert result.report.sparsity == 0.5 and rec["layers"] and not rec["skipped"]
    assert all(f["error_after"] <= f["error_before"] for f in rec["layers"])
    if granularity == "2:4":
        w = result.model.model.layers[1].mlp.down_proj.weight
        assert int((w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max()) <= 2


def test_protection_is_detected_in_the_pass_on_each_blocks_inputs():
    """Energy protection (the structured default) without a whole-model pass: block 0's protected neurons are those
    `detect_outliers` finds on the dense model (block 0's inputs are the dense ones)."""
    dense = tiny_model("llama")
    config = _config("one_pass", "neurons")
    result = prune(copy.deepcopy(dense), config, calibration_data=calibration("llama"), progress=False)
    settled = result.report.to_dict()
    groups = find_groups(dense, config)
    first = [g for g in groups if g.name.startswith("model.layers.0.")]
    batches = [calibration("llama")[i:i + 3] for i in range(0, 8, 3)]
    by_hand = detect_outliers(dense, find_layers(dense), first, batches, ProtectionConfig.THRESHOLDS["energy"],
                              "energy")
    assert by_hand.masks["model.layers.0.mlp.neurons"].any(), "the tiny model has a protected neuron"
    assert settled["protected"]["model.layers.0.mlp.neurons"] == by_hand.to_report()["model.layers.0.mlp.neurons"]
    for name, index in settled["protected"].items():
        assert result.masks[name][index].all(), name  # protected neurons kept


@pytest.mark.parametrize("kw,match", [
    ({"reconstruction": {"method": "none"}}, "reconstruction.method='weights'"),
    ({"reconstruction": {"target": "dense"}}, "target='layer'"),
    ({"granularity": "neurons", "scope": "global"}, "scope='local'"),
    ({"granularity": "neurons+layers"}, "scored on the whole model"),
    ({"criterion": "taylor"}, "calibration.mode='full'"),
])
def test_one_pass_refusals_at_construction(kw, match):
    with pytest.raises(ConfigError, match=match):
        PruningConfig(**{"criterion": "wanda", **kw, "calibration": {"mode": "one_pass"}})
