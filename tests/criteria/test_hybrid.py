"""Hybrid against its formula, with E and I recomputed independently of the library."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hfprune import PruningConfig
from hfprune.criteria import get_criterion
from hfprune.criteria import rank_norm
from hfprune.structure.groups import Coupling, UnitGroup
from hfprune.structure.layers import Layer


def naive_rank_norm(values: list[float]) -> list[float]:
    n = len(values)
    return [(sum(v < x for v in values) + (sum(v == x for v in values) - 1) / 2) / (n - 1) for x in values]


def test_rank_norm_ties_share_their_mean_rank():
    x = torch.tensor([3.0, 1.0, 3.0, 0.5, 2.0, 3.0])
    torch.testing.assert_close(rank_norm(x), torch.tensor(naive_rank_norm(x.tolist())).double())
    assert rank_norm(torch.tensor([7.0])).item() == 1.0


def setup():
    torch.manual_seed(0)
    up, down = nn.Linear(3, 6), nn.Linear(6, 2)
    a = torch.randn(20, 6)
    a[:, 5] = 1.0  # always on: E = 0
    group = UnitGroup("ffn", "neurons", 6, [Coupling("up", "out", torch.arange(6).view(6, 1)),
                                            Coupling("down", "in", torch.arange(6).view(6, 1))])
    layers = {"up": Layer("up", up), "down": Layer("down", down)}
    q = (a > 0).double().mean(0)
    e = 2 * q * (1 - q)
    magnitude = (up.weight.detach().abs().sum(1) + down.weight.detach().abs().sum(0)).double()  # L1 of coupled weights
    return group, layers, a, e, magnitude


def scores(group, layers, a, **kw):
    c = get_criterion(PruningConfig(criterion="hybrid", granularity="neurons", **kw))
    names = c.observed_layers(layers, [group])
    assert names == ["down"]  # magnitude needs no data; expressiveness reads the consumer's input
    stats = {n: c.init_stats(layers[n]) for n in names}
    c.accumulate(layers["down"], stats["down"], a)
    return c.unit_scores(group, stats, layers)


@pytest.mark.parametrize("alpha", [0.5, 0.2])
def test_rank_form(alpha):
    group, layers, a, e, magnitude = setup()
    expected = [alpha * re + (1 - alpha) * ri
                for re, ri in zip(naive_rank_norm(e.tolist()), naive_rank_norm(magnitude.tolist()))]
    torch.testing.assert_close(scores(group, layers, a, options={"alpha": alpha}), torch.tensor(expected).double())


def test_product_form():
    group, layers, a, e, magnitude = setup()
    got = scores(group, layers, a, options={"alpha": 0.3, "form": "product"})
    torch.testing.assert_close(got, e ** 0.3 * magnitude ** 0.7)
    assert got[5] == 0


def test_gradient_importance_passes_its_statistics_through():
    c = get_criterion(PruningConfig(criterion="hybrid", granularity="neurons", options={"importance": "taylor"}))
    assert c.grad_mode == "loss"
    lin = nn.Linear(4, 3)
    layer = Layer("l", lin)
    stats = c.init_stats(layer)
    assert {"expressiveness.on", "importance.grad"} <= set(stats)
    lin(torch.randn(5, 4)).sum().backward()
    c.after_backward(layer, stats)
    torch.testing.assert_close(stats["importance.grad"], lin.weight.grad)


def test_compensation_comes_from_the_importance_criterion():
    torch.manual_seed(1)
    lin = nn.Linear(4, 3)
    layer = Layer("l", lin)
    a = torch.randn(30, 4)
    removed = torch.zeros(3, 4, dtype=torch.bool)
    removed[:, 2] = True
    expected = lin.weight.detach()[:, 2] * a[:, 2].mean()  # ec_output="layer": Db = W E[a]
    for importance, want in (("elimination_compensation", expected), ("magnitude", None)):
        c = get_criterion(PruningConfig(criterion="hybrid", granularity="neurons", options={"importance": importance,
                                                             "importance_options": {"output": "layer"} if importance
                                                             == "elimination_compensation" else {}}))
        stats = c.init_stats(layer)
        c.accumulate(layer, stats, a)
        got = c.bias_compensation(layer, stats, removed)
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want)
