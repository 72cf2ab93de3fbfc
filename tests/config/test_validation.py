"""PruningConfig checked at construction and again by every entry point: types, ranges, contradictions."""

from __future__ import annotations


import pytest
import torch

from tests.helpers.models import tiny_model
from hfprune import ConfigError, PruningConfig, prune
from hfprune.calibration.checks import check_config_for_model, check_units, check_weights
from hfprune.calibration.data import prepare_calibration




@pytest.mark.parametrize("kwargs, field, words", [
    ({"criterion": "elimination_compensation", "options": {"compensate": "no"}}, "options.compensate", "boolean"),
    ({"training": {"keep_masks": 1}}, "training.keep_masks", "boolean"),
    ({"training": {"regularizer": "group_lasso", "regularizer_weight": float("nan")}}, "training.regularizer_weight",
     "finite"),
    ({"sparsity": "0.5"}, "sparsity", "[0, 1)"),
    ({"calibration": {"seq_len": True}}, "calibration.seq_len", "integer"),
    ({"calibration": {"seq_len": 8.0}}, "calibration.seq_len", "integer"),
    ({"calibration": {"mode": "layerwise"}}, "calibration.mode", "one of 'full', 'sequential'"),
    ({"options": {"norm": True}}, "options.norm", "one of 1, 2"),
    ({"criterion": "relative_importance", "options": {"k": float("nan")}}, "options.k", "finite"),
    ({"seed": -1}, "seed", ">= 0"),
    ({"ignore": "*embed*"}, "ignore", "list of glob patterns"),
    ({"head_sparsity": 0.25}, "head_sparsity", "has no effect"),
    ({"gqa_mode": "query_heads", "granularity": "neurons"}, "gqa_mode", "has no effect"),
    ({"training": {"end_step": 10}}, "training.end_step", "has no effect"),
    ({"criterion": "relative_importance", "options": {"tau": 2.0}}, "options.tau", "has no effect"),
    ({"width_depth": {"block_score": "skip_loss"}}, "width_depth.block_score", "has no effect"),
    ({"reconstruction": {"method": "none", "damp": 0.1}}, "reconstruction.damp", "has no effect"),
])
def test_config_field_types_ranges_and_contradictions(kwargs, field, words):
    with pytest.raises(ConfigError, match=f"PruningConfig.{field}=") as info:
        PruningConfig(**kwargs)
    assert words in str(info.value)


def test_every_field_has_a_real_rule():
    from dataclasses import fields
    from typing import get_type_hints

    from hfprune.config.checks import FIELD_RULES
    from hfprune.utils.rules import ANYTHING, rule_for_hint

    from hfprune.config.pruning_config import GROUPS

    # every top-level field but the groups (checked by their own class) and the criterion's options (by its Options)
    hints = get_type_hints(PruningConfig)
    for f in fields(PruningConfig):
        if f.name in GROUPS or f.name == "options":
            continue
        rule = FIELD_RULES.get(f.name) or rule_for_hint(hints[f.name])
        assert rule is not ANYTHING, f.name
        assert rule.ok(getattr(PruningConfig(), f.name)), f.name  # the default passes its own rule
    for name, group in GROUPS.items():
        group_hints = get_type_hints(group)
        for f in fields(group):
            rule = group.RULES.get(f.name) or rule_for_hint(group_hints[f.name])
            assert rule is not ANYTHING, f"{name}.{f.name}"
            assert rule.ok(getattr(group(), f.name)), f"{name}.{f.name}"


def test_config_changed_after_construction_is_checked_again():
    config = PruningConfig(criterion="wanda", calibration={"num_samples": 2, "seq_len": 8})
    config.sparsity = 1.5
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="sparsity=1.5"):
        prepare_calibration(torch.randint(0, 100, (2, 8)), model, config)
    config.sparsity, config.calibration.seq_len = 0.5, "no"
    with pytest.raises(ConfigError, match="calibration.seq_len='no'"):
        config.validate()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_huge_values_are_shortened_in_messages():
    with pytest.raises(ConfigError) as info:
        PruningConfig(criterion="x" * 5_000_000)
    assert len(str(info.value)) < 400 and "[5,000,002 chars]" in str(info.value)  # the repr, quotes included
    with pytest.raises(ConfigError) as info:
        PruningConfig.from_dict({"y" * 1_000_000: 1})
    assert len(str(info.value)) < 2000


@pytest.mark.parametrize("text, words", [
    ("sparsity: [0.5", "not valid YAML"),
    ("- a\n- b", "mapping"),
    ("missing-recipe.yaml", "does not exist"),
    ("sparsity: yes-please", "PruningConfig.sparsity="),
])
def test_from_yaml_errors(text, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=words):
        PruningConfig.from_yaml(text)


def test_from_yaml_binary_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage\x81")
    with pytest.raises(ConfigError, match="not a text file"):
        PruningConfig.from_yaml(path)


def test_round_to_and_min_units_larger_than_a_layer():
    from hfprune.structure import find_groups

    model = tiny_model("bert")  # 64 FFN neurons, 4 heads per layer
    for name, value in (("round_to", 128), ("min_units", 65)):
        config = PruningConfig(criterion="magnitude", granularity="neurons", **{name: value})
        with pytest.raises(ConfigError, match=f"{name}={value} is larger than .* which has 64 neurons"):
            check_units(config, find_groups(model, config))
    config = PruningConfig(criterion="magnitude", granularity="heads", min_units=5)
    with pytest.raises(ConfigError, match="which has 4 heads"):
        check_units(config, find_groups(model, config))


def test_config_limits_that_depend_on_the_model():
    bert = tiny_model("bert")  # learned positions: 512
    with pytest.raises(ConfigError, match="seq_len=600 .* 512 positions"):
        check_config_for_model(PruningConfig(calibration={"seq_len": 600}), bert)
    check_config_for_model(PruningConfig(calibration={"seq_len": 4096}), tiny_model("llama"))  # rotary: no hard limit
    with torch.no_grad():
        next(bert.parameters())[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN or inf"):
        check_weights(bert)


def test_prune_and_trainer_run_the_checks_at_their_start():
    """Through the engine: the config re-validated, unit counts and weights checked, before anything changes."""
    model = tiny_model("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = PruningConfig(criterion="magnitude", granularity="neurons")
    config.sparsity = 1.5
    with pytest.raises(ConfigError, match="sparsity=1.5"):
        prune(model, config, progress=False)
    with pytest.raises(ConfigError, match="round_to=128 is larger"):
        prune(model, PruningConfig(criterion="magnitude", granularity="neurons", round_to=128), progress=False)
    with pytest.raises(ConfigError, match="512 positions"):
        prune(model, PruningConfig(criterion="wanda",
                                   calibration={"source": "random", "seq_len": 600, "num_samples": 2}), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_trainer_refuses_a_model_with_nan_weights(tmp_path, monkeypatch):
    from tests.helpers import trainer as trainer_tiny

    real = trainer_tiny.tiny_bert

    def broken():
        model = real()
        with torch.no_grad():
            next(model.parameters())[0, 0] = float("nan")
        return model

    monkeypatch.setattr(trainer_tiny, "tiny_bert", broken)
    with pytest.raises(ConfigError, match="NaN or inf"):
        trainer_tiny.make_trainer(str(tmp_path), {})
