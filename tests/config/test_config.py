"""PruningConfig's shape: option groups, the criterion's own options, everything checkable at construction."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from hfprune import ConfigError, PruningConfig
from hfprune.config.groups import CalibrationConfig
from hfprune.config.pruning_config import GROUPS


def test_at_most_25_top_level_fields_and_choices_are_literal_types():
    fields = dataclasses.fields(PruningConfig)
    assert len(fields) <= 25
    hints = typing.get_type_hints(PruningConfig)
    for name in ("scope", "compare_within", "gqa_mode"):
        assert typing.get_origin(hints[name]) is typing.Literal, name
    for group in GROUPS.values():
        group_hints = typing.get_type_hints(group)
        assert any(typing.get_origin(h) is typing.Literal
                   or typing.Literal in {typing.get_origin(a) for a in typing.get_args(h)}
                   for h in group_hints.values()) or group is CalibrationConfig


@pytest.mark.parametrize("kwargs, words", [
    ({"criterion": "wnda"}, "Did you mean 'wanda'?"),
    ({"criterion": "wanda", "options": {"projections": 4}}, "has no option 'projections'"),
    ({"criterion": "elimination_compensation", "options": {"projection": 4}}, "Did you mean 'projections'?"),
    ({"criterion": "taylor", "calibration": {"mode": "sequential"}}, "calibration.mode='sequential'"),
    ({"criterion": "magnitude", "scope": "global", "calibration": {"mode": "sequential"}}, "scope='local'"),
    ({"criterion": "obs", "granularity": "weights"}, "cannot score granularity 'weights'"),
    ({"calibration": {"num_sample": 8}}, "Did you mean 'num_samples'?"),
    ({"calibration": 8}, "a CalibrationConfig or a mapping"),
    ({"scope": "globl"}, "one of 'local', 'global'"),
    ({"criterion": "hybrid", "granularity": "neurons", "options": {"importance": "hybrid"}}, "importance='hybrid'"),
    ({"criterion": "hybrid", "granularity": "neurons", "options": {"importance_options": {"projections": 2}}},
     "importance_options (of 'magnitude') has no option 'projections'"),
])
def test_what_a_config_can_know_is_refused_at_construction(kwargs, words):
    with pytest.raises(ConfigError) as info:
        PruningConfig(**kwargs)
    assert words in str(info.value)


def test_options_of_another_criterion_instance_are_refused():
    ec = PruningConfig(criterion="elimination_compensation").options
    with pytest.raises(ConfigError, match="the options of another criterion"):
        PruningConfig(criterion="wanda", options=ec)


def test_groups_and_options_round_trip_through_json_and_yaml(tmp_path):
    config = PruningConfig(criterion="elimination_compensation", granularity="neurons", sparsity=0.3,
                           options={"projections": 4, "output": "loss"},
                           calibration={"num_samples": 16, "seq_len": 128},
                           reconstruction={"method": "none"}, protection={"mode": "none"})
    assert config.options.projections == 4 and config.calibration.seq_len == 128
    config.save_pretrained(tmp_path)
    assert PruningConfig.from_pretrained(tmp_path) == config
    assert PruningConfig.from_yaml(config.to_yaml()) == config
    assert PruningConfig(**config.to_dict()) == config


def test_cli_flags_follow_the_shape(capsys):
    from hfprune.cli.parser import build_parser
    from hfprune.cli.options import picked

    args = build_parser().parse_args(["prune", "m", "--output", "o", "--criterion", "elimination_compensation",
                                      "--calibration.num-samples", "8", "--reconstruction.method", "none",
                                      "--options", "projections=4", "compensate=false"])
    given = picked(args, args.config_fields)
    assert given == {"criterion": "elimination_compensation", "options": {"projections": 4, "compensate": False},
                     "calibration": {"num_samples": 8}, "reconstruction": {"method": "none"}}
    assert PruningConfig(**given).options.compensate is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "m", "--output", "o", "--calibration.mode", "layerwise"])
    assert "invalid choice" in capsys.readouterr().err
