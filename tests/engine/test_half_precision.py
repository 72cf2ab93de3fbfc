"""bf16 end to end on a tiny model: calibration statistics and the refit's Gram matrices accumulate in float32 or
wider whatever the model's dtype, the pruned model stays finite, and the saved folder keeps bf16."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

import hfprune
from hfprune import PruningConfig
from hfprune.criteria.baselines import Wanda
from hfprune.reconstruction.least_squares import GramStats
from tests.helpers.models import calibration, tiny_model


def test_bf16_statistics_are_wide_and_the_folder_stays_bf16(tmp_path, monkeypatch):
    seen: dict[str, set] = {"gram": set(), "wanda": set()}
    add, accumulate = GramStats.add, Wanda.accumulate

    def spy_add(self, a, dense=None):
        seen["gram"].add((a.dtype, self.H.dtype))
        return add(self, a, dense)

    def spy_accumulate(self, layer, stats, inputs, *args, **kwargs):
        out = accumulate(self, layer, stats, inputs, *args, **kwargs)
        seen["wanda"].add((inputs.dtype, stats["sq"].dtype))
        return out

    monkeypatch.setattr(GramStats, "add", spy_add)
    monkeypatch.setattr(Wanda, "accumulate", spy_accumulate)
    model = tiny_model("llama").to(torch.bfloat16)
    res = hfprune.prune(model, PruningConfig(criterion="wanda", granularity="neurons+heads", sparsity=0.5,
                                             head_sparsity=1 / 3, calibration={"mode": "sequential"}),
                        calibration_data=calibration("llama"), progress=False)
    assert seen["wanda"] == {(torch.bfloat16, torch.float64)}  # bf16 activations, float64 sums
    assert seen["gram"] == {(torch.bfloat16, torch.float32)}  # the refit ran, its Gram matrices in float32
    assert res.report.reconstruction and all(p.dtype is torch.bfloat16 for p in res.model.parameters())
    with torch.no_grad():
        assert torch.isfinite(res.model(calibration("llama")[:2]).logits.float()).all()
    res.save_pretrained(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
