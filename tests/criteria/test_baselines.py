"""Baseline criteria against independent computations of their definitions: Taylor in both published forms."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import calibration, tiny_model
from hfprune import PruningConfig
from hfprune.calibration.data import prepare_calibration
from hfprune.criteria import get_criterion
from hfprune.steps.scoring import compute_masks
from hfprune.structure import target_layers


@pytest.mark.parametrize("form", ["squared", "absolute"])
def test_taylor_scores_equal_per_batch_gradients(form):
    """squared: mean over batches of (w * g_b)^2 (Molchanov et al. 2019); absolute: |w * mean_b g_b| (2017)."""
    torch.manual_seed(0)
    model = tiny_model("llama")
    cfg = PruningConfig(criterion="taylor", sparsity=0.5, options={"form": form},
                        calibration={"num_samples": 8, "batch_size": 4})
    batches = prepare_calibration(calibration("llama", 8), model, cfg).batches
    layers = target_layers(model, cfg)
    crit = get_criterion(cfg)
    _, _, stats = compute_masks(model, crit, layers, None, batches, progress=False)
    name = "model.layers.1.mlp.up_proj"
    w = model.get_submodule(name).weight
    grads = []
    for b in batches:  # independent: autograd of each batch's mean next-token loss
        ids = b["input_ids"]
        loss = model(input_ids=ids, attention_mask=b.get("attention_mask"), labels=ids).loss
        grads.append(torch.autograd.grad(loss, w)[0].detach())
    g = torch.stack(grads)
    ref = (w.detach() * g).square().mean(0) if form == "squared" else (w.detach() * g.mean(0)).abs()
    got = crit.weight_scores(layers[name], stats[name])
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-12 + 1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("form", ["squared", "absolute"])
def test_taylor_loss_backward_in_pieces_equals_the_whole_batch(form, monkeypatch):
    """The loss backward runs on pieces of a batch (memory); each piece's loss weighs its share of the predicted
    tokens, so the weight gradients, and Taylor's scores, are the unsplit batch's, padding included."""
    from hfprune.calibration import collector

    torch.manual_seed(0)
    model = tiny_model("llama")
    cfg = PruningConfig(criterion="taylor", sparsity=0.5, options={"form": form},
                        calibration={"num_samples": 8, "batch_size": 4})
    ids = calibration("llama", 8)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padded rows: pieces hold different numbers of predicted tokens
    mask[6, 3:] = 0
    batches = [{"input_ids": ids[i:i + 4], "attention_mask": mask[i:i + 4]} for i in (0, 4)]
    layers = target_layers(model, cfg)
    crit = get_criterion(cfg)
    _, _, whole = compute_masks(model, crit, layers, None, batches, progress=False)
    monkeypatch.setattr(collector, "OUTPUT_GRAD_TOKENS", 12)  # one row per piece
    assert len(collector.loss_pieces(model, collector.with_lm_labels(model, batches[0]))) == 4
    _, _, split = compute_masks(model, crit, layers, None, batches, progress=False)
    for name in layers:
        ref = whole[name]["grad"]
        assert torch.allclose(split[name]["grad"], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
        assert float(split[name]["batches"]) == 2


def test_taylor_auto_form_is_squared_for_weights_and_absolute_for_units():
    from hfprune.config.settle import settle

    assert get_criterion(PruningConfig(criterion="taylor", sparsity=0.5)).form == "squared"
    assert get_criterion(PruningConfig(criterion="taylor", granularity="2:4")).form == "squared"
    assert get_criterion(PruningConfig(criterion="taylor", granularity="neurons", sparsity=0.5)).form == "absolute"
    assert settle(PruningConfig(criterion="taylor", sparsity=0.5), True).options.form == "squared"
    assert settle(PruningConfig(criterion="taylor", granularity="neurons"), True).options.form == "absolute"


def test_taylor_compares_within_rows_unless_told_otherwise():
    """hfprune's choice for taylor (reported in the saved config); compare_within='layer' gives the papers' rule."""
    from hfprune import prune

    torch.manual_seed(0)
    ids = calibration("llama", 8)
    kept = {}
    for within in ("auto", "layer"):
        model = tiny_model("llama")
        cfg = PruningConfig(criterion="taylor", sparsity=0.5, compare_within=within,
                            calibration={"num_samples": 8, "batch_size": 4}, reconstruction={"method": "none"})
        result = prune(model, cfg, ids, progress=False)
        w = model.get_submodule("model.layers.0.self_attn.q_proj").weight
        kept[within] = (w != 0).sum(dim=1)
        assert result.config.compare_within == ("row" if within == "auto" else "layer")
    assert (kept["auto"] == kept["auto"][0]).all()  # the same count in every row
    assert not (kept["layer"] == kept["layer"][0]).all()


def test_taylor_global_scope_still_ranks_globally():
    cfg = PruningConfig(criterion="taylor", sparsity=0.5, scope="global")
    assert not get_criterion(cfg).compares_rows
    assert get_criterion(PruningConfig(criterion="taylor", sparsity=0.5)).compares_rows
    assert get_criterion(PruningConfig(criterion="wanda", sparsity=0.5, compare_within="layer")).compares_rows is False
