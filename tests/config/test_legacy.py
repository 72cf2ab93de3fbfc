"""pruning_config.json files written by main before the config redesign load and prune the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hfprune import PruningConfig, prune
from hfprune.config.legacy import upgrade
from tests.helpers.models import calibration, tiny_model

FIXTURES = Path(__file__).parent.parent / "fixtures" / "legacy_configs"


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()))
def test_old_pruning_config_loads_and_prunes_the_same_way(name):
    folder = FIXTURES / name
    old = json.loads((folder / "pruning_config.json").read_text())["pruning_config"]
    assert "num_samples" in old  # the old, flat shape
    config = PruningConfig.from_pretrained(folder)
    assert config.calibration.num_samples == old["num_samples"]
    torch.manual_seed(0)
    model = tiny_model("llama")
    result = prune(model, config, calibration_data=calibration("llama"), progress=False)
    expected = json.loads((folder / "expected.json").read_text())
    assert {k: v["kept"] for k, v in result.info.groups.items() if "kept" in v} == expected["kept"]
    assert (result.report.params_after, result.report.nonzero_after) == (expected["params_after"],
                                                                         expected["nonzero_after"])
    weights = load_file(str(folder / "layer0.safetensors"))
    state = model.state_dict()
    for key, value in weights.items():
        torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_old_keys_move_to_their_groups_and_the_criterions_options():
    new = upgrade({"criterion": "hybrid", "hybrid_importance": "elimination_compensation", "alpha": 0.2,
                   "ec_projections": 3, "num_samples": 4, "protect": "none", "layer_criterion": None,
                   "end_step": None, "distillation": False, "ri_k": 1.0})
    assert new == {"criterion": "hybrid", "options": {"alpha": 0.2, "importance": "elimination_compensation",
                                                      "importance_options": {"projections": 3}},
                   "calibration": {"num_samples": 4}, "protection": {"mode": "none"}}
    assert upgrade({"criterion": "wanda", "calibration": {"num_samples": 4}}) == \
        {"criterion": "wanda", "calibration": {"num_samples": 4}}  # the current shape is left alone
    assert PruningConfig.from_dict({"criterion": "block_influence", "granularity": "layers"}).width_depth.block_score \
        == "block_influence"  # block scores were criteria once
