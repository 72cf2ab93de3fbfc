"""Bad input gets a clear hfprune error before any work is done or any file is written."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.models import calibration, tiny_model
from hfprune import (CalibrationError, CheckpointError, ConfigError, OutputExistsError, PruningConfig,
                     StructureError, load_pruned, prune)


@pytest.mark.parametrize("kwargs, field", [
    ({"criterion": ""}, "criterion"),
    ({"granularity": "rows"}, "granularity"),
    ({"sparsity": 1.0}, "sparsity"),
    ({"sparsity": -0.1}, "sparsity"),
    ({"sparsity": float("nan")}, "sparsity"),
    ({"granularity": "4:4"}, "granularity"),
    ({"granularity": "3:2"}, "granularity"),
    ({"scope": "everywhere"}, "scope"),
    ({"round_to": 0}, "round_to"),
    ({"targets": "*.mlp.*"}, "targets"),
])
def test_invalid_config_values(kwargs, field):
    with pytest.raises(ConfigError, match=f"PruningConfig.{field}="):
        PruningConfig(**kwargs)


def test_unknown_criterion_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'magnitude'"):
        prune(tiny_model("llama"), PruningConfig(criterion="magnitud"), progress=False)


def test_unknown_config_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'sparsity'"):
        PruningConfig.from_dict({"sparsty": 0.5})


def test_yaml_round_trip():
    config = PruningConfig(criterion="wanda", granularity="2:4", targets=["*.mlp.*"], seed=3)
    assert PruningConfig.from_yaml(config.to_yaml()) == config


def test_head_ratio_must_divide_into_kv_groups():
    config = PruningConfig(criterion="magnitude", granularity="heads", sparsity=0.25)  # 0.75 of 3 KV groups
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="KV groups"):
        prune(model, config, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_granularity_the_model_does_not_have():
    with pytest.raises(StructureError, match="needs convolutions"):
        prune(tiny_model("bert"), PruningConfig(criterion="magnitude", granularity="channels"),
              calibration_data=calibration("bert"), progress=False)


def test_unknown_family_for_neurons():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with pytest.raises(StructureError, match="transformer family"):
        prune(model, PruningConfig(criterion="magnitude", granularity="neurons"), progress=False)


def test_criterion_that_cannot_score_the_granularity():
    from hfprune import available_criteria

    if "expressiveness" not in available_criteria():
        pytest.fail("expressiveness criterion is not registered")
    with pytest.raises(ConfigError, match="cannot score granularity 'weights'"):
        prune(tiny_model("bert"), PruningConfig(criterion="expressiveness"), progress=False)


@pytest.mark.parametrize("data, message", [
    ([], "empty"),
    (["", "   "], "empty"),
    (torch.zeros(0, 12, dtype=torch.long), "empty"),
    (None, "needs calibration data"),
])
def test_empty_or_missing_calibration(data, message):
    config = PruningConfig(criterion="wanda", calibration={"num_samples": 4, "seq_len": 12})
    with pytest.raises(CalibrationError, match=message):
        prune(tiny_model("llama"), config, calibration_data=data, progress=False)


def test_too_short_calibration_text():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="[UNK]")
    config = PruningConfig(criterion="wanda", calibration={"num_samples": 4, "seq_len": 64})
    with pytest.raises(CalibrationError, match="too short"):
        prune(tiny_model("llama"), config, calibration_data=["a b a b"], tokenizer=tokenizer, progress=False)


def test_nan_weights_are_refused():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN or inf"):
        prune(model, PruningConfig(criterion="magnitude"), progress=False)


def test_inf_activations_are_refused():
    model = tiny_model("bert")
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[5] = 1e38  # overflows to inf inside the first layer
    with pytest.raises(CalibrationError, match="Non-finite"):
        prune(model, PruningConfig(criterion="wanda", calibration={"num_samples": 4, "seq_len": 12}),
              calibration_data=torch.full((4, 12), 5), progress=False)


def test_existing_output_folder_is_refused_and_untouched(tmp_out):
    result = prune(tiny_model("bert"), PruningConfig(criterion="magnitude", granularity="neurons"), progress=False)
    tmp_out.mkdir()
    (tmp_out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="overwrite"):
        result.save_pretrained(tmp_out)
    assert [p.name for p in tmp_out.iterdir()] == ["keep.txt"]
    result.save_pretrained(tmp_out, overwrite=True)
    assert (tmp_out / "pruning_config.json").exists() and not (tmp_out / "keep.txt").exists()


def test_missing_or_corrupt_pruning_config(tmp_out):
    result = prune(tiny_model("bert"), PruningConfig(criterion="magnitude", granularity="heads"), progress=False)
    result.save_pretrained(tmp_out)
    path = tmp_out / "pruning_config.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_pruned(tmp_out)
    path.write_text(json.dumps({"something": 1}))
    with pytest.raises(CheckpointError, match="pruning_config"):
        load_pruned(tmp_out)
    path.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_pruned(tmp_out)
