"""Offloaded block-by-block runs (calibration.offload): the same masks and weights as the in-memory run, with only
the block being processed materialised (disk offload, the CPU as the execution device)."""

import os

import pytest
import torch

from tests.helpers.models import calibration, tiny_model
from hfprune import ConfigError, PruningConfig, prune
from hfprune.calibration.offload import BlockOffload, Offload, check_offload, to_device

CASES = [
    ("wanda", "weights", {}),
    ("wanda", "weights", {"mode": "one_pass"}),
    ("wanda", "neurons+heads", {"head_sparsity": 1 / 3, "mode": "one_pass"}),
    ("wanda", "2:4", {}),
    ("wanda", "neurons+heads", {"head_sparsity": 1 / 3}),
    ("elimination_compensation", "neurons", {"options": {"output": "layer"}, "scope": "global"}),
]


def _run(criterion, granularity, kw, offload, dtype=torch.float32, watch=None):
    kw = dict(kw)
    mode = kw.pop("mode", "sequential")
    model = tiny_model("llama").to(dtype)
    if watch is not None:
        watch(model)
    config = PruningConfig(criterion=criterion, granularity=granularity, sparsity=0.5,
                           calibration={"mode": mode, "num_samples": 8, "seq_len": 12, "batch_size": 3,
                                        "offload": offload}, **kw)
    result = prune(model, config, calibration_data=calibration("llama"), progress=False)
    return result, model


@pytest.mark.parametrize("offload", ["cpu", "disk"])
@pytest.mark.parametrize("criterion,granularity,kw", CASES,
                         ids=[f"{c}-{g}-{k.get('mode', 'sequential')}" for c, g, k in CASES])
def test_offloaded_run_equals_in_memory_run(criterion, granularity, kw, offload):
    ref, ref_model = _run(criterion, granularity, kw, "none")
    got, model = _run(criterion, granularity, kw, offload)
    assert got.report.reconstruction["layers"], "the default reconstruction ran"
    assert ref.masks.keys() == got.masks.keys()
    for k in ref.masks:
        assert torch.equal(ref.masks[k], got.masks[k]), k
    want, have = ref_model.state_dict(), model.state_dict()
    assert want.keys() == have.keys()
    for k in want:
        assert have[k].device.type == "cpu" and have[k].shape == want[k].shape, k
        torch.testing.assert_close(have[k], want[k], rtol=0, atol=1e-6, msg=k)


def test_disk_offload_materialises_one_block_at_a_time():
    """Every block forward (statistics, refit, propagation) sees itself materialised and every other block on the
    meta device; afterwards the whole model is back in memory, in its dtype."""
    seen = []

    def watch(model):
        blocks = model.model.layers

        def post(i):  # after the block ran (the capture's pre-hook stops block 0 before it runs)
            def fn(module, args, output):
                real = [j for j, b in enumerate(blocks) if all(p.device.type != "meta" for p in b.parameters())]
                seen.append((i, real))
            return fn
        for i, b in enumerate(blocks):
            b.register_forward_hook(post(i))

    _, model = _run("wanda", "neurons", {}, "disk", dtype=torch.bfloat16, watch=watch)
    during = [(i, real) for i, real in seen if len(real) < len(model.model.layers)]
    assert during, "block passes ran offloaded"
    assert all(real == [i] for i, real in during), during
    assert all(p.device.type == "cpu" and p.dtype == torch.bfloat16 for p in model.parameters())


def test_block_offload_round_trip_keeps_changes():
    model = tiny_model("llama")
    blocks = model.model.layers
    with BlockOffload(blocks, Offload("disk", "cpu")) as resident:
        assert all(p.device.type == "meta" for p in blocks.parameters())
        resident.onload(1)
        with torch.no_grad():
            blocks[1].mlp.down_proj.weight.fill_(0.25)
        resident.offload(1, changed=True)
        resident.onload(0)
        resident.offload(0, changed=False)
        folder = resident.folder
    assert torch.all(blocks[1].mlp.down_proj.weight == 0.25)
    assert not os.path.exists(folder), "the offload folder is removed"


def test_to_device_keeps_shared_tensors_shared():
    mask = torch.ones(2, 3)
    cache = [[torch.zeros(1), (), {"attention_mask": mask}], [torch.zeros(1), (), {"attention_mask": mask}]]
    moved = to_device(cache, torch.device("cpu"))
    assert moved[0][2]["attention_mask"] is moved[1][2]["attention_mask"]


@pytest.mark.parametrize("kw,match", [
    ({"calibration": {"offload": "cpu"}}, "calibration.mode='sequential'"),
    ({"granularity": "neurons+layers", "calibration": {"mode": "sequential", "offload": "disk"}}, "offload='none'"),
    ({"calibration": {"mode": "sequential", "device": "cpu"}}, "has no effect"),
    ({"calibration": {"mode": "sequential", "offload": "disk", "device": "gpu!"}}, "torch device"),
    ({"calibration": {"mode": "sequential", "offload": "ram"}}, "offload"),
])
def test_offload_refusals_at_construction(kw, match):
    with pytest.raises(ConfigError, match=match):
        PruningConfig(criterion="wanda", **kw)


def test_offload_refuses_a_model_off_the_cpu():
    model = tiny_model("llama").to("meta")  # any device but the CPU (this machine may have no accelerator)
    with pytest.raises(ConfigError, match="weights on meta. Load it on the CPU"):
        check_offload(model, Offload("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            check_offload(tiny_model("llama"), Offload("disk", "cuda"))
