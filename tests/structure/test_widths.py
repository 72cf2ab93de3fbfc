"""Hardware-friendly widths by default (`round_to="auto"`, hfprune.structure.widths): language models keep FFN widths
in multiples of 128 and residual widths in multiples of 64 where the original width was; an explicit round_to wins."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import hfprune
from hfprune import PruningConfig
from hfprune.structure.widths import preferred_multiple


def wide_llama() -> T.LlamaForCausalLM:
    """Widths of a real model (FFN 1,024, residual 512) in two blocks and a tiny vocabulary."""
    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=64, head_dim=32)
    return T.LlamaForCausalLM(cfg).eval()


def ids() -> torch.Tensor:
    return torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("width, preferred, base, expected", [
    (1536, 128, 1, 128),    # SmolLM2's FFN: 12 steps of 128
    (576, 64, 9, 72),       # SmolLM2's residual stream with 9 heads: lcm(8, 9), 8 steps
    (512, 128, 1, 64),      # 128 would leave only 4 steps
    (1000, 128, 1, 8),      # only 8 divides it
    (1001, 128, 1, 1),      # nothing divides it
    (64, 128, 1, 1),        # toy widths keep steps of 1
])
def test_preferred_multiple(width, preferred, base, expected):
    assert preferred_multiple(width, preferred, base) == expected


def test_default_ffn_widths_are_multiples_of_128_and_round_to_wins(tmp_path):
    cfg = dict(criterion="magnitude", granularity="neurons", sparsity=0.3)
    res = hfprune.prune(wide_llama(), PruningConfig(**cfg), progress=False)
    widths = {m.mlp.gate_proj.out_features for m in res.model.model.layers}
    assert widths == {768}  # 1024 x 0.7 = 716.8, rounded up to 6 x 128
    assert res.model.config.intermediate_size == 768
    assert res.report.width_multiples == {"neurons": 128}
    res.save_pretrained(tmp_path / "out")
    assert "multiples of 128 (neurons)" in (tmp_path / "out" / "README.md").read_text()
    exact = hfprune.prune(wide_llama(), PruningConfig(**cfg, round_to=1), progress=False)
    assert {m.mlp.gate_proj.out_features for m in exact.model.model.layers} == {717}
    assert exact.report.width_multiples == {"neurons": 1}


def test_global_ranking_widths_stay_multiples():
    res = hfprune.prune(wide_llama(), PruningConfig(criterion="wanda", granularity="neurons", sparsity=0.4,
                                                     scope="global"), calibration_data=ids(), progress=False)
    assert all(m.mlp.gate_proj.out_features % 128 == 0 for m in res.model.model.layers)


def test_residual_width_and_target_search_use_the_same_grid():
    model = wide_llama()
    res = hfprune.prune(model, PruningConfig(criterion="magnitude", granularity="hidden",
                                             width_depth={"hidden_sparsity": 0.3}), calibration_data=ids(),
                        progress=False)
    assert res.model.config.hidden_size == 384  # 512 x 0.7 = 358.4, rounded up to 6 x 64
    assert res.report.width_multiples == {"hidden": 64}
    before = sum(p.numel() for p in wide_llama().parameters())
    target = int(before * 0.7)
    res = hfprune.prune(wide_llama(), PruningConfig(criterion="wanda", granularity="hidden+neurons",
                                                     width_depth={"target_params": target}),
                        calibration_data=ids(), progress=False)
    cfg = res.model.config
    assert cfg.hidden_size % 64 == 0 and cfg.intermediate_size % 128 == 0
    assert res.report.width_multiples == {"neurons": 128, "hidden": 64}
    assert sum(p.numel() for p in res.model.parameters()) <= target


def test_target_search_tolerance_is_one_ffn_step_on_a_coarse_grid():
    """FFN widths in steps of 128 cannot land within 1% of every target: the search screens candidates within one
    step (here 128 neurons x 3 matrices x 512 wide x 2 blocks), so FFN-only candidates are not left out."""
    from hfprune.width_depth.search import tolerance

    model, target = wide_llama(), 5_000_000
    auto = tolerance(model, PruningConfig(granularity="hidden+neurons", width_depth={"target_params": target}),
                     target)
    assert auto == pytest.approx(128 * 3 * 512 * 2 / target)
    exact = tolerance(model, PruningConfig(granularity="hidden+neurons", round_to=1,
                                           width_depth={"target_params": target}), target)
    assert exact == 0.01


def test_target_search_screens_each_architecture_once():
    """Width mixes whose neuron fractions differ but round to the same FFN width on the grid are one candidate."""
    from hfprune.width_depth.search import candidates

    model = wide_llama()
    before = sum(p.numel() for p in model.parameters())
    for target in (int(before * f) for f in (0.5, 0.7, 0.9)):  # at 0.5 two mixes both keep FFN 1,024
        cfg = PruningConfig(criterion="wanda", granularity="hidden+neurons+layers",
                            width_depth={"target_params": target})
        found = candidates(model, cfg, target)
        shapes = [(c.layers, c.hidden, c.heads, c.params) for c in found]
        assert found and len(shapes) == len(set(shapes))
