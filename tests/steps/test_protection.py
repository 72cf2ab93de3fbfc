"""Outlier protection (hfprune extension): planted massive activations are detected, protected units are kept
whatever their score while the removed count stays the configured one, and with nothing protected the masks are
exactly the criterion's."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import calibration, tiny_model
from hfprune import PruningConfig
from hfprune.calibration.data import prepare_calibration
from hfprune.criteria import get_criterion
from hfprune.errors import ConfigError
from hfprune.steps.scoring import compute_masks, select
from hfprune.steps.protection import Protection, detect_outliers
from hfprune.steps.selection import protect_scores
from hfprune.structure import find_groups, find_layers, target_layers

NEURON = 5


def _planted():
    """Tiny Llama whose FFN neuron 5 of block 0 fires ~300x harder, with a down_proj column 300x smaller (the same
    function): a massive activation."""
    model = tiny_model("llama")
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        mlp.up_proj.weight[NEURON] *= 300
        mlp.down_proj.weight[:, NEURON] /= 300
        mlp.gate_proj.weight[NEURON] = mlp.gate_proj.weight[NEURON].abs() + 0.05  # on for most tokens
    return model


def _setup(granularity: str, criterion: str = "magnitude"):
    torch.manual_seed(0)
    model = _planted()
    cfg = PruningConfig(criterion=criterion, granularity=granularity, sparsity=0.5,
                        calibration={"num_samples": 8, "batch_size": 4})
    calib = prepare_calibration(calibration("llama", 8), model, cfg)
    structured = cfg.structured
    layers = find_layers(model) if structured else target_layers(model, cfg)
    groups = find_groups(model, cfg, calib.batches[0]) if structured else None
    crit = get_criterion(cfg)
    sel, scores, _ = compute_masks(model, crit, layers, groups, calib.batches, progress=False)
    return model, cfg, calib, layers, groups, crit, sel, scores


def test_planted_neuron_detected_and_kept():
    model, cfg, calib, layers, groups, crit, sel, scores = _setup("neurons")
    g0 = "model.layers.0.mlp"
    name = next(g.name for g in groups if g.name.startswith(g0))
    prot = detect_outliers(model, layers, groups, calib.batches, threshold=20)
    assert prot.masks[name].nonzero().flatten().tolist() == [NEURON]
    assert prot.to_report() == {name: [NEURON]}
    scores = {**scores, name: scores[name].clone()}
    scores[name][NEURON] = scores[name].min() - 1  # the criterion's lowest: removed without protection
    sel = select(crit, layers, groups, scores, {}, {"selection": 0.0}, cfg)
    assert not sel.masks[name][NEURON]
    protected = select(crit, layers, groups, protect_scores(scores, prot.masks), {}, {"selection": 0.0}, cfg)
    assert protected.masks[name][NEURON]
    for g in groups:  # same number removed everywhere; only the protected unit swapped in
        assert protected.masks[g.name].sum() == sel.masks[g.name].sum()
        changed = (protected.masks[g.name] != sel.masks[g.name]).sum()
        assert changed == (2 if g.name == name else 0)


@pytest.mark.parametrize("granularity", ["weights", "2:4"])
def test_unstructured_protects_input_columns(granularity):
    model, cfg, calib, layers, groups, crit, sel, scores = _setup(granularity, "wanda")
    prot = detect_outliers(model, layers, None, calib.batches, threshold=20)
    down = "model.layers.0.mlp.down_proj"
    assert prot.masks[down].nonzero().flatten().tolist() == [NEURON]
    protected = select(crit, layers, None, protect_scores(scores, prot.masks), {}, {"selection": 0.0}, cfg)
    assert protected.masks[down][:, NEURON].all()
    for n, m in protected.masks.items():
        assert m.sum() == sel.masks[n].sum()  # per-row (Wanda) and N:M counts unchanged


@pytest.mark.parametrize("criterion", ["magnitude", "expressiveness", "elimination_compensation"])
def test_nothing_protected_gives_the_criterion_masks(criterion):
    model, cfg, calib, layers, groups, crit, sel, scores = _setup("neurons", criterion)
    none = Protection({g.name: torch.zeros(g.num_units, dtype=torch.bool) for g in groups})
    again = select(crit, layers, groups, protect_scores(scores, none.masks), {}, {"selection": 0.0}, cfg)
    assert all(torch.equal(again.masks[n], m) for n, m in sel.masks.items())
    assert none.to_report() == {}


def test_config_fields():
    assert PruningConfig().protection.mode == "auto" and PruningConfig().reconstruction.method == "auto"
    with pytest.raises(ConfigError, match="protection.mode"):
        PruningConfig(protection={"mode": "massive"})
    with pytest.raises(ConfigError, match="protection.threshold"):
        PruningConfig(protection={"threshold": 0.5})
    with pytest.raises(ConfigError, match="reconstruction.damp"):
        PruningConfig(reconstruction={"damp": -0.1})
    with pytest.raises(ConfigError, match="reconstruction"):
        PruningConfig(reconstruction={"method": "gptq"})


@pytest.mark.parametrize("granularity, data, blocks, expected", [
    ("neurons", True, True, ("weights", "energy", 2.0)),
    ("neurons+heads", True, True, ("weights", "energy", 2.0)),
    ("weights", True, True, ("weights", "none", None)),
    ("2:4", True, True, ("weights", "none", None)),
    ("neurons", False, True, ("none", "none", None)),  # a data-free run stays data-free
    ("neurons", True, False, ("none", "energy", 2.0)),  # no list of blocks to refit one by one
    ("channels", True, True, ("none", "none", None)),
    ("layers", True, True, ("weights", "none", None)),  # blocks and residual channels are refit too
    ("layers", False, True, ("none", "none", None)),
])
def test_auto_defaults_settle_per_run(granularity, data, blocks, expected):
    from hfprune.config.settle import settle

    extra = {"width_depth": {"layer_sparsity": 0.25}} if granularity == "layers" else {}
    got = settle(PruningConfig(granularity=granularity, **extra), data, blocks)
    assert (got.reconstruction.method, got.protection.mode, got.protection.threshold) == expected
    explicit = PruningConfig(granularity="neurons", reconstruction={"method": "none"},
                             protection={"mode": "outliers"})
    assert settle(explicit, True).protection.threshold == 20.0
    assert settle(explicit, True).reconstruction.method == "none"


def test_through_prune_reported_and_off_is_faithful():
    from hfprune import prune

    cfg = PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.5,
                        calibration={"num_samples": 8, "batch_size": 4}, reconstruction={"method": "none"})
    faithful = prune(tiny_model("llama"), cfg, progress=False)  # magnitude without data: the criterion's own masks
    assert faithful.config.protection.mode == "none"
    off = prune(tiny_model("llama"), PruningConfig(**{**cfg.to_dict(), "protection": {"mode": "none"}}), calibration("llama"),
                progress=False)
    assert all(torch.equal(off.masks[n], m) for n, m in faithful.masks.items()) and off.report.protected == {}
    on = prune(_planted(), PruningConfig(**{**cfg.to_dict(), "protection": {"mode": "outliers"}}), calibration("llama"),
               progress=False)
    name = "model.layers.0.mlp"
    group = next(n for n in on.masks if n.startswith(name))
    assert on.report.protected == {group: [NEURON]} and on.masks[group][NEURON]
    assert "protection" in on.report.timings
    assert all(m.sum() == faithful.masks[n].sum() for n, m in on.masks.items())


def test_protection_and_reconstruction_are_on_the_card(tmp_path):
    from hfprune import prune

    cfg = PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.5,
                        calibration={"num_samples": 8, "batch_size": 4}, protection={"mode": "outliers"},
                        reconstruction={"method": "weights"})
    res = prune(_planted(), cfg, calibration("llama"), progress=False)
    res.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    group = next(iter(res.report.protected))
    assert "protection (hfprune extension)" in card and f"`{group}`: {NEURON}" in card
    assert "weight reconstruction (hfprune extension)" in card and "mean relative output error" in card
    plain = prune(_planted(), PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.5),
                  progress=False)
    plain.save_pretrained(tmp_path / "plain")
    assert "hfprune extension" not in (tmp_path / "plain" / "README.md").read_text()


@pytest.mark.parametrize("granularity", ["neurons", "weights"])
def test_energy_protection_keeps_the_highest_output_energy(granularity):
    """protect='energy': a unit (input column) is kept when E[a_j^2] ||W_:,j||^2 at its consumer exceeds the
    threshold x the group's median, checked against the energies computed from the captured inputs."""
    model, cfg, calib, layers, groups, crit, sel, scores = _setup(granularity)
    down = "model.layers.0.mlp.down_proj"
    seen = []
    h = model.get_submodule(down).register_forward_hook(lambda m, a, o: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    prot = detect_outliers(model, layers, groups if granularity == "neurons" else None, calib.batches, threshold=2,
                           mode="energy")
    h.remove()
    a = torch.cat(seen).double()
    energy = a.square().mean(dim=0) * model.get_submodule(down).weight.detach().double().square().sum(dim=0)
    expected = energy > 2 * energy.median()
    key = next(n for n in prot.masks if n.startswith("model.layers.0.mlp")) if granularity == "neurons" else down
    assert expected.any() and torch.equal(prot.masks[key].cpu(), expected)
