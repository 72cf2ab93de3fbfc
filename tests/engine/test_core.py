"""Core engine on tiny models of every family: masked == compacted == reloaded, for every granularity."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import transformers as T
from torch import nn

from tests.helpers.models import FAMILIES, calibration, model_inputs, output_tensor, tiny_model
from hfprune import PruningConfig, load_pruned, prune
from hfprune.config.pruning_config import read_pruning_file
from hfprune.steps.masks import apply_unit_masks, apply_weight_masks
from hfprune.structure import find_groups, target_layers

GRANULARITIES = ["weights", "2:4", "neurons", "heads", "neurons+heads"]


def _masked_twin(model, config, result, example):
    """A copy of the unpruned model with the result's masks applied (shapes unchanged)."""
    if config.structured:
        apply_unit_masks(model, find_groups(model, config, example), result.masks)
    else:
        apply_weight_masks(target_layers(model, config), result.masks)
    return model


def _config(family, granularity, criterion="wanda", **kw):
    return PruningConfig(criterion=criterion, granularity=granularity, sparsity=0.5,
                         head_sparsity=1 / 3 if family in ("llama", "qwen2", "mistral") and "heads" in granularity
                         else None,
                         calibration={"num_samples": 8, "seq_len": 12, "batch_size": 4}, **kw)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_compacted_equals_masked_and_reloads(family, granularity, tmp_out):
    model = tiny_model(family)
    twin = copy.deepcopy(model)
    config = _config(family, granularity, reconstruction={"method": "none"})  # compaction vs masking exactly
    result = prune(model, config, calibration_data=calibration(family), progress=False)
    x = model_inputs(family)
    masked = _masked_twin(twin, config, result, calibration(family)[:2])
    with torch.no_grad():
        y_pruned = output_tensor(result.model(**x))
        y_masked = output_tensor(masked(**x))
    torch.testing.assert_close(y_pruned, y_masked, atol=1e-4, rtol=0)
    if config.structured:
        assert result.report.params_after < result.report.params_before
        assert result.report.macs_after < result.report.macs_before
    else:
        assert result.report.nonzero_after < result.report.params_before
    result.save_pretrained(tmp_out)
    info = read_pruning_file(tmp_out)
    assert info["loader"] == result.report.loader
    if result.report.loader == "transformers":
        reloaded = getattr(T, info["auto_class"]).from_pretrained(tmp_out).eval()
    else:
        with pytest.raises(Exception):  # the family's config cannot express the widths
            getattr(T, info["auto_class"]).from_pretrained(tmp_out)
        reloaded = load_pruned(tmp_out)
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(reloaded(**x)), y_pruned, atol=1e-5, rtol=0)


def test_llama_family_reloads_with_plain_transformers_after_heads_and_neurons(tmp_out):
    result = prune(tiny_model("llama"), _config("llama", "neurons+heads"), calibration_data=calibration("llama"),
                   progress=False)
    assert result.report.loader == "transformers"
    assert result.model.config.num_key_value_heads == 2 and result.model.config.num_attention_heads == 4
    assert result.model.config.intermediate_size == 32


def test_gqa_query_heads_mode_keeps_groups(tmp_out):
    config = PruningConfig(criterion="magnitude", granularity="heads", sparsity=0.5, gqa_mode="query_heads")
    result = prune(tiny_model("llama"), config, progress=False)
    cfg = result.model.config
    assert cfg.num_key_value_heads == 3 and cfg.num_attention_heads == 3  # 2 query heads per group -> 1
    result.save_pretrained(tmp_out)
    reloaded = T.AutoModelForCausalLM.from_pretrained(tmp_out)
    x = model_inputs("llama")
    torch.testing.assert_close(reloaded(**x).logits, result.model(**x).logits, atol=1e-5, rtol=0)


def test_global_scope_gives_non_uniform_widths_and_round_trips(tmp_out):
    torch.manual_seed(0)
    model = tiny_model("bert")
    with torch.no_grad():  # make layer 0's FFN much larger so that a global ranking keeps more of it
        model.bert.encoder.layer[0].intermediate.dense.weight.mul_(1.3)
    config = PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.5, scope="global")
    result = prune(model, config, progress=False)
    kept = [l.kept for l in result.report.layers]
    assert len(set(kept)) > 1 and sum(kept) == 64
    assert result.report.loader == "hfprune"
    result.save_pretrained(tmp_out)
    reloaded = load_pruned(tmp_out)
    x = model_inputs("bert")
    torch.testing.assert_close(reloaded(**x).logits, result.model(**x).logits, atol=1e-5, rtol=0)


def test_a_layer_is_never_emptied_and_the_report_says_so():
    model = tiny_model("bert")
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.weight.mul_(10)
    config = PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.5, scope="global", min_units=2)
    result = prune(model, config, progress=False)
    assert [(l.kept, l.forced_min) for l in result.report.layers] == [(64, False), (2, True)]
    assert any("lost every unit" in w for w in result.report.warnings)


def test_round_to_and_min_units():
    config = PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.6, round_to=8)
    result = prune(tiny_model("bert"), config, progress=False)
    assert all(l.kept % 8 == 0 for l in result.report.layers)  # 64 * 0.4 = 25.6 -> 32
    assert [l.kept for l in result.report.layers] == [32, 32]


def _conv_stack():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "random"])
def test_plain_cnn_channels(criterion):
    model = _conv_stack()
    twin = copy.deepcopy(model)
    x = torch.randn(8, 3, 8, 8)
    config = PruningConfig(criterion=criterion, granularity="channels", sparsity=0.5, ignore=["8"],
                           calibration={"num_samples": 8, "batch_size": 4})
    result = prune(model, config, calibration_data=x, progress=False)
    assert model[0].out_channels == 4 and model[3].out_channels == 8 and model[8].in_features == 8
    masked = _masked_twin(twin, config, result, x[:1])
    torch.testing.assert_close(result.model(x), masked(x), atol=1e-4, rtol=0)


def test_taylor_without_loss_is_a_clear_error():
    from hfprune import CalibrationError

    config = PruningConfig(criterion="taylor", granularity="channels", sparsity=0.5, ignore=["8"],
                           calibration={"num_samples": 4})
    with pytest.raises(CalibrationError, match="needs a loss"):
        prune(_conv_stack(), config, calibration_data=torch.randn(4, 3, 8, 8), progress=False)


def test_residual_cnn_channels_round_trip(tmp_out):
    torch.manual_seed(0)
    cfg = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3,
                         image_size=16)
    model = T.ResNetForImageClassification(cfg).eval()
    twin = copy.deepcopy(model)
    x = torch.randn(4, 3, 16, 16)
    config = PruningConfig(criterion="magnitude", granularity="channels", sparsity=0.5,
                           calibration={"num_samples": 4})
    result = prune(model, config, calibration_data=x, progress=False)
    assert result.report.params_after < result.report.params_before
    masked = _masked_twin(twin, config, result, {"pixel_values": x[:1]})
    torch.testing.assert_close(result.model(pixel_values=x).logits, masked(pixel_values=x).logits, atol=1e-4, rtol=0)
    result.save_pretrained(tmp_out)
    reloaded = load_pruned(tmp_out)
    torch.testing.assert_close(reloaded(pixel_values=x).logits, result.model(pixel_values=x).logits, atol=1e-5,
                               rtol=0)


def test_report_and_pruning_config_are_saved(tmp_out):
    config = _config("llama", "neurons")
    result = prune(tiny_model("llama"), config, calibration_data=calibration("llama"), progress=False)
    result.save_pretrained(tmp_out)
    saved = PruningConfig.from_pretrained(tmp_out)  # the run's settings, "auto" settled
    assert saved == dataclasses.replace(config,
                                        reconstruction=dataclasses.replace(config.reconstruction, method="weights"),
                                        protection=dataclasses.replace(config.protection, mode="energy", threshold=2.0))
    assert saved == result.config
    report = json.loads((tmp_out / "pruning_report.json").read_text())
    assert report["params_after"] == result.report.params_after
    assert set(report["timings"]) >= {"calibration", "scoring", "selection", "compaction", "total"}
    groups = read_pruning_file(tmp_out)["groups"]
    assert all(g["kept"] == 32 and g["total"] == 64 for g in groups.values())


def test_every_causal_lm_run_probes_its_perplexity_and_flags_a_broken_model():
    """No silent harm: a causal-LM run measures the perplexity on its first calibration batch before and after
    pruning (checked here against an independent computation) and warns past 3x."""
    import math

    from hfprune.engine.pruner import add_probe

    config = PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.5,
                           calibration={"num_samples": 4, "seq_len": 12})
    model = tiny_model("llama")
    dense = copy.deepcopy(model)
    result = prune(model, config, calibration_data=calibration("llama"), progress=False)
    batch = torch.as_tensor(calibration("llama"))[:4]

    def ppl(m):
        with torch.no_grad():
            return math.exp(float(m(input_ids=batch, labels=batch).loss))

    probe = result.report.calibration["probe_perplexity"]
    assert probe["before"] == pytest.approx(ppl(dense), rel=1e-4)
    assert probe["after"] == pytest.approx(ppl(model), rel=1e-4)
    warnings: list[str] = []
    add_probe({}, warnings, math.log(10), math.log(29))
    assert warnings == []
    add_probe({}, warnings, math.log(10), math.log(31))
    assert len(warnings) == 1 and "probably broken" in warnings[0] and "reconstruction.method='weights'" in warnings[0]
    applied = PruningConfig(criterion="wanda", granularity="neurons", reconstruction={"method": "weights"},
                            protection={"mode": "energy"})
    add_probe({}, warnings, math.log(10), math.log(31), applied)  # remedies already in use are not suggested
    assert "reconstruction.method=" not in warnings[1] and "protection.mode=" not in warnings[1] \
        and "'obs'" in warnings[1]
    assert "'wanda'" not in warnings[1]
