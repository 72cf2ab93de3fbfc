"""Scale: layer-by-layer calibration gives the default mode's masks; calibration under 2 processes sums to 1."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.helpers.models import calibration, tiny_model
from hfprune import ConfigError, PruningConfig, prune
from hfprune.calibration.data import prepare_calibration
from hfprune.calibration.sequential import find_blocks
from hfprune.criteria import get_criterion
from hfprune.steps.scoring import compute_masks
from hfprune.structure import target_layers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = [
    ("magnitude", "weights", {}),
    ("wanda", "weights", {}),
    ("wanda", "2:4", {}),
    ("wanda", "neurons+heads", {}),
    ("expressiveness", "neurons", {}),
    ("relative_importance", "weights", {}),
    ("elimination_compensation", "weights", {"options": {"output": "layer"}}),
    ("elimination_compensation", "neurons", {"options": {"output": "layer"}, "scope": "global"}),
    ("hybrid", "heads", {"options": {"importance": "wanda"}}),
]


def _config(family, criterion, granularity, mode, **kw):
    return PruningConfig(criterion=criterion, granularity=granularity, sparsity=0.5,
                         head_sparsity=1 / 3 if family == "llama" and "heads" in granularity else None,
                         calibration={"mode": mode, "num_samples": 8, "seq_len": 12, "batch_size": 3}, **kw)


@pytest.mark.parametrize("criterion,granularity,kw", CASES, ids=[f"{c}-{g}" for c, g, _ in CASES])
@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_sequential_masks_equal_full_masks(family, criterion, granularity, kw):
    results = {}
    for mode in ("full", "sequential"):
        model = tiny_model(family)
        r = prune(model, _config(family, criterion, granularity, mode, **kw), calibration_data=calibration(family),
                  progress=False)
        results[mode] = (r.masks, model.state_dict())
    (full, w_full), (seq, w_seq) = results["full"], results["sequential"]
    assert full.keys() == seq.keys()
    for k in full:
        assert torch.equal(full[k], seq[k]), k
    for k in w_full:  # compacted (and compensated) weights too
        assert torch.equal(w_full[k], w_seq[k]), k


def test_sequential_calibrates_in_eval_mode():
    """BERT has dropout after its embeddings: a model left in training mode must not change the cached inputs."""
    masks = {}
    for mode in ("full", "sequential"):
        model = tiny_model("bert").train()
        masks[mode] = prune(model, _config("bert", "wanda", "weights", mode), calibration_data=calibration("bert"),
                            progress=False).masks
        assert model.training
    assert all(torch.equal(masks["full"][k], masks["sequential"][k]) for k in masks["full"])


def test_blocks_of_each_family():
    assert find_blocks(tiny_model("llama"))[0] == "model.layers"
    assert find_blocks(tiny_model("gpt2"))[0] == "transformer.h"
    assert find_blocks(tiny_model("bert"))[0] == "bert.encoder.layer"


def test_sequential_runs_only_the_blocks_it_needs():
    """The LM head never runs, nor blocks after the last targeted one."""
    model = tiny_model("llama")
    ran = []
    model.lm_head.register_forward_hook(lambda *a: ran.append("lm_head"))
    model.model.layers[1].register_forward_hook(lambda *a: ran.append("layer 1"))
    config = PruningConfig(criterion="wanda", targets=["*layers.0.*"],
                           calibration={"mode": "sequential", "num_samples": 4, "seq_len": 12, "batch_size": 2})
    calib = prepare_calibration(calibration("llama"), model, config)
    selection, _, _ = compute_masks(model, get_criterion(config), target_layers(model, config), None, calib.batches, False)
    assert ran == [] and len(selection.masks) == 7 and all(".layers.0." in k for k in selection.masks)


@pytest.mark.parametrize("kw,fix", [
    ({"criterion": "taylor"}, "calibration.mode='full'"),
    ({"criterion": "elimination_compensation"}, "{'output': 'layer'}"),
    ({"criterion": "elimination_compensation", "options": {"output": "loss"}}, "{'output': 'layer'}"),
    ({"criterion": "hybrid", "granularity": "neurons", "options": {"importance": "taylor"}}, "calibration.mode='full'"),
    ({"criterion": "hybrid", "granularity": "neurons", "options": {"importance": "elimination_compensation"}},
     "{'output': 'layer'}"),
    ({"criterion": "magnitude", "scope": "global"}, "scope='local'"),
])
def test_sequential_rejects_what_it_cannot_compute(kw, fix):
    with pytest.raises(ConfigError, match="calibration.mode") as e:  # at construction
        PruningConfig(**{**kw, "calibration": {"mode": "sequential"}})
    assert fix in str(e.value)


def test_sequential_names_layers_outside_the_blocks():
    config = PruningConfig(criterion="wanda", ignore=["*embed*"],
                           calibration={"mode": "sequential", "num_samples": 4, "seq_len": 12, "batch_size": 2})
    with pytest.raises(ConfigError, match="lm_head"):
        prune(tiny_model("llama"), config, calibration_data=calibration("llama"), progress=False)


def test_sequential_needs_blocks():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    config = PruningConfig(criterion="wanda", calibration={"mode": "sequential", "num_samples": 4, "batch_size": 2})
    with pytest.raises(ConfigError, match="list of blocks"):
        prune(model, config, calibration_data=torch.randn(4, 8), progress=False)


def test_offloaded_weights_are_named():
    model = tiny_model("llama")
    model.model.layers[1].mlp.up_proj.weight = nn.Parameter(torch.empty(64, 48, device="meta"))
    with pytest.raises(ConfigError, match="layers.1.mlp.up_proj.weight.*meta"):
        prune(model, PruningConfig(criterion="magnitude", calibration={"mode": "sequential"}), progress=False)


def test_structured_global_scope_is_supported():
    config = _config("llama", "wanda", "neurons", "sequential", scope="global")
    result = prune(tiny_model("llama"), config, calibration_data=calibration("llama"), progress=False)
    kept = [int(m.sum()) for m in result.masks.values()]
    assert sum(kept) == 64 and len(kept) == 2  # half of 2 x 64 neurons, split by one ranking


# --- 2 processes -----------------------------------------------------------------------------------------------------
@pytest.mark.multiprocess
def test_two_process_calibration_statistics_equal_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    script = os.path.join(ROOT, "tests", "calibration", "calibration_ddp_run.py")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", script,
                    str(tmp_path / "ddp")], check=True, env=env, timeout=180, capture_output=True)
    subprocess.run([sys.executable, script, str(tmp_path / "one")], check=True, env=env, timeout=180,
                   capture_output=True)
    r0, r1, one = (load_file(str(tmp_path / d / f"stats_rank{r}.safetensors"))
                   for d, r in (("ddp", 0), ("ddp", 1), ("one", 0)))
    assert set(r0) == set(one) and len(one) > 10
    for k in one:
        assert torch.equal(r0[k], r1[k]), k  # every process holds the same sums
        if k.startswith("mask/"):
            assert torch.equal(r0[k], one[k]), k
        else:  # equal up to float summation order
            tol = 1e-5 if r0[k].dtype == torch.float32 else 1e-9  # weight-sized statistics are float32
            torch.testing.assert_close(r0[k], one[k], rtol=tol, atol=tol * r0[k].abs().max().item(), msg=k)


def test_pruning_trainer_in_sequential_mode(tmp_path):
    from tests.helpers.trainer import make_trainer

    masks = {}
    for mode in ("full", "sequential"):
        trainer = make_trainer(str(tmp_path / mode), {"granularity": "weights", "calibration": {"mode": mode}},
                               max_steps=1)
        trainer.train()
        masks[mode] = trainer.pruning_masks.masks
    assert masks["full"].keys() == masks["sequential"].keys()
    assert all(torch.equal(masks["full"][k], masks["sequential"][k]) for k in masks["full"])
