"""Relative importance against naive per-sample loops over its definition (contribution shares)."""

from __future__ import annotations

import math

import torch
from torch import nn

from hfprune import PruningConfig
from hfprune.criteria import get_criterion
from hfprune.criteria import ri_regularizer
from hfprune.structure.groups import Coupling, UnitGroup
from hfprune.structure.layers import Layer

from tests.helpers.models import forward_statistics


def naive_shares(w: list[list[float]], samples: list[list[float]]) -> tuple[list, list]:
    """mu and sigma (population) of r_ij = |W_ij a_j| / sum_k |W_ik a_k| over samples, 0 where the sum is 0."""
    n_out, n_in = len(w), len(w[0])
    mu = [[0.0] * n_in for _ in range(n_out)]
    sd = [[0.0] * n_in for _ in range(n_out)]
    for i in range(n_out):
        for j in range(n_in):
            rs = []
            for a in samples:
                total = sum(abs(w[i][k] * a[k]) for k in range(n_in))
                rs.append(abs(w[i][j] * a[j]) / total if total > 0 else 0.0)
            m = sum(rs) / len(rs)
            mu[i][j] = m
            sd[i][j] = math.sqrt(max(sum(r * r for r in rs) / len(rs) - m * m, 0.0))
    return mu, sd


def test_linear_scores_match_naive_shares():
    torch.manual_seed(0)
    lin = nn.Linear(5, 4)
    x = torch.randn(2, 7, 5)  # batch x tokens x features: every token is a sample
    x[0, 3] = 0  # a token where no neuron receives anything: shares 0
    layer = Layer("l", lin)
    samples = x.reshape(-1, 5).tolist()
    mu, sd = naive_shares(lin.weight.tolist(), samples)
    mu, sd = torch.tensor(mu), torch.tensor(sd)
    for k in (0.0, 1.5):
        crit = get_criterion(PruningConfig(criterion="relative_importance", options={"k": k}))
        stats = forward_statistics(crit, layer, list(x.split(1)))
        torch.testing.assert_close(crit.weight_scores(layer, stats), (mu + k * sd).float(), rtol=1e-5, atol=1e-6)


def test_conv_scores_match_naive_shares_over_positions():
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 2, stride=1, padding=1)
    x = torch.randn(2, 2, 3, 3)
    layer = Layer("c", conv)
    samples = []  # naive windows: every image x output position, padded by hand
    for b in range(2):
        for r in range(4):
            for c in range(4):
                samples.append([float(x[b, ch, r + dr - 1, c + dc - 1]) if 0 <= r + dr - 1 < 3 and 0 <= c + dc - 1 < 3
                                else 0.0 for ch in range(2) for dr in range(2) for dc in range(2)])
    mu, sd = naive_shares(conv.weight.reshape(3, -1).tolist(), samples)
    crit = get_criterion(PruningConfig(criterion="relative_importance", options={"k": 1.0}))
    stats = forward_statistics(crit, layer, [x])
    torch.testing.assert_close(crit.weight_scores(layer, stats), (torch.tensor(mu) + torch.tensor(sd)).float(),
                               rtol=1e-5, atol=1e-6)


def test_gpt2_conv1d_layout():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(2)
    c1 = Conv1D(4, 3)  # nx=3 inputs, nf=4 outputs, weight stored [in, out]
    x = torch.randn(6, 3)
    mu, _ = naive_shares(c1.weight.t().tolist(), x.tolist())
    crit = get_criterion(PruningConfig(criterion="relative_importance"))
    layer = Layer("g", c1)
    scores = crit.weight_scores(layer, forward_statistics(crit, layer, [x]))
    torch.testing.assert_close(scores, torch.tensor(mu).float())


def test_tau_rule_removes_less_than_tau_over_fan_in():
    torch.manual_seed(3)
    lin = nn.Linear(6, 4)
    x = torch.randn(30, 6)
    mu, _ = naive_shares(lin.weight.tolist(), x.tolist())
    layer = Layer("l", lin)
    crit = get_criterion(PruningConfig(criterion="relative_importance", options={"threshold": "tau", "tau": 0.8}))
    scores = crit.weight_scores(layer, forward_statistics(crit, layer, [x]))
    expected = torch.tensor([[m < 0.8 / 6 for m in row] for row in mu])
    assert expected.any() and not expected.all()
    assert torch.equal(crit.removal_mask(layer, scores), expected)
    plain = get_criterion(PruningConfig(criterion="relative_importance"))
    assert plain.removal_mask(layer, scores) is None


def test_tau_rule_with_global_scope():
    """Every layer decides its own removals under the tau rule, so a global ranking has nothing left to rank
    (this used to fail in torch.cat); the masks are the tau rule's."""
    from hfprune import prune

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(40, 6)
    config = PruningConfig(criterion="relative_importance", scope="global", options={"threshold": "tau", "tau": 1.0},
                           calibration={"num_samples": 40, "batch_size": 20})
    result = prune(model, config, calibration_data=x, progress=False)
    for name, mask in result.masks.items():
        assert torch.equal(model.get_submodule(name).weight != 0, mask)
    assert 0 < result.report.nonzero_after < result.report.params_before


def test_unit_score_sums_consumer_column_shares():
    torch.manual_seed(4)
    up, down = nn.Linear(3, 4), nn.Linear(4, 2)
    a = torch.relu(up(torch.randn(25, 3))).detach()
    mu, _ = naive_shares(down.weight.tolist(), a.tolist())
    perm = torch.tensor([2, 0, 3, 1])
    group = UnitGroup("ffn", "neurons", 4, [Coupling("up", "out", perm.view(4, 1)),
                                            Coupling("down", "in", perm.view(4, 1))])
    crit = get_criterion(PruningConfig(criterion="relative_importance", granularity="neurons"))
    layers = {"up": Layer("up", up), "down": Layer("down", down)}
    stats = {"down": forward_statistics(crit, layers["down"], [a])}
    expected = torch.tensor([sum(mu[i][int(p)] for i in range(2)) for p in perm]).double()
    torch.testing.assert_close(crit.unit_scores(group, stats, layers), expected)


def test_regularizer_forms_match_naive_and_give_weight_gradients():
    torch.manual_seed(5)
    lin = nn.Linear(4, 3)
    x = torch.randn(10, 4)
    mu, _ = naive_shares(lin.weight.tolist(), x.tolist())
    entropy = 0.0
    l1 = 0.0
    for i, row in enumerate(mu):
        total = sum(row)
        entropy -= sum((m / total) * math.log(m / total) for m in row if m > 0)
        l1 += sum((1 - m) * abs(float(lin.weight.detach()[i, j])) for j, m in enumerate(row))
    h = ri_regularizer(lin, x)
    assert abs(h.item() - entropy) < 1e-4
    assert abs(ri_regularizer(Layer("l", lin), x, form="l1").item() - l1) < 1e-4
    h.backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
