"""Expressiveness against the pairwise-Hamming definition, evaluated naively per pair of samples."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from hfprune import ConfigError, PruningConfig
from hfprune.criteria import get_criterion
from hfprune.structure.groups import Coupling, UnitGroup, blocks
from hfprune.structure.layers import Layer

from tests.helpers.models import forward_statistics


def pairwise_hamming(states: list[list[bool]]) -> float:
    """2/(N(N-1)) sum_{n<m} mean_p XOR(c_n(p), c_m(p)); ``states[n][p]`` is the unit's state in sample n."""
    pairs = list(itertools.combinations(range(len(states)), 2))
    return sum(sum(a != b for a, b in zip(states[n], states[m])) / len(states[n]) for n, m in pairs) / len(pairs)


def crit(**kw):
    return get_criterion(PruningConfig(criterion="expressiveness", granularity=kw.pop("granularity", "neurons"), **kw))


def test_linear_consumer_matches_pairwise_definition():
    torch.manual_seed(0)
    down = nn.Linear(5, 3)
    x = torch.randn(3, 4, 5)  # 12 tokens
    x[..., 1] = x[..., 1].abs() + 0.1  # always on: scores 0
    x[..., 4] = torch.where(torch.arange(4) < 1, 1.0, -1.0)  # on in 1 of 4 tokens of each sequence
    n = 12
    perm = torch.tensor([4, 2, 0, 1, 3])
    group = UnitGroup("ffn", "neurons", 5, [Coupling("up", "out", perm.view(5, 1)),
                                            Coupling("down", "in", perm.view(5, 1))])
    c = crit()
    layers = {"down": Layer("down", down)}
    stats = {"down": forward_statistics(c, layers["down"], list(x.split(1)))}
    tokens = x.reshape(n, 5)
    naive = torch.tensor([pairwise_hamming([[bool(tokens[t, p] > 0)] for t in range(n)]) for p in perm.tolist()])
    got = c.unit_scores(group, stats, layers)
    torch.testing.assert_close(got * n / (n - 1), naive.double())
    assert got[perm.tolist().index(1)] == 0


def test_head_scores_mean_of_its_output_dimensions():
    torch.manual_seed(1)
    o_proj = nn.Linear(8, 8)
    x = torch.randn(10, 8)
    x[:, 4:] = torch.randn(10, 1).expand(10, 4)  # head 1: all dims share one pattern
    group = UnitGroup("attn", "heads", 2, [Coupling("q", "out", blocks(2, 4)), Coupling("o", "in", blocks(2, 4))])
    c = crit(granularity="heads")
    layers = {"o": Layer("o", o_proj)}
    got = c.unit_scores(group, {"o": forward_statistics(c, layers["o"], [x])}, layers)
    naive = [sum(pairwise_hamming([[bool(x[t, d] > 0)] for t in range(10)]) for d in range(4 * h, 4 * h + 4)) / 4
             for h in range(2)]
    torch.testing.assert_close(got * 10 / 9, torch.tensor(naive).double())


def test_conv_consumer_aligns_positions_across_images():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 2, 3, padding=1)
    x = torch.randn(5, 3, 4, 4)
    group = UnitGroup("ch", "channels", 3, [Coupling("prev", "out", torch.arange(3).view(3, 1)),
                                            Coupling("c", "in", torch.arange(3).view(3, 1))])
    c = crit(granularity="channels")
    layers = {"c": Layer("c", conv)}
    got = c.unit_scores(group, {"c": forward_statistics(c, layers["c"], list(x.split(2)))}, layers)
    naive = [pairwise_hamming([(x[i, ch].flatten() > 0).tolist() for i in range(5)]) for ch in range(3)]
    torch.testing.assert_close(got * 5 / 4, torch.tensor(naive).double())


def test_single_image_uses_positions_as_samples():
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 2, 1)
    x = torch.randn(1, 2, 3, 3)
    group = UnitGroup("ch", "channels", 2, [Coupling("c", "in", torch.arange(2).view(2, 1))])
    c = crit(granularity="channels")
    layers = {"c": Layer("c", conv)}
    got = c.unit_scores(group, {"c": forward_statistics(c, layers["c"], [x])}, layers)
    naive = [pairwise_hamming([[bool(v > 0)] for v in x[0, ch].flatten()]) for ch in range(2)]
    torch.testing.assert_close(got * 9 / 8, torch.tensor(naive).double())
    assert (got > 0).all()  # the aligned form would give 0 with one image


def test_single_image_flattened_into_linear_uses_positions_as_samples():
    """A conv channel read by a Linear after Flatten owns one input per position: with one image those are its
    samples (before, every channel scored 0 and the ranking was the channel index)."""
    torch.manual_seed(4)
    fc = nn.Linear(2 * 9, 3)
    x = torch.randn(1, 2, 3, 3)
    group = UnitGroup("ch", "channels", 2, [Coupling("fc", "in", torch.arange(18).view(2, 9))])
    c = crit(granularity="channels")
    layers = {"fc": Layer("fc", fc)}
    got = c.unit_scores(group, {"fc": forward_statistics(c, layers["fc"], [x.flatten(1)])}, layers)
    naive = [pairwise_hamming([[bool(v > 0)] for v in x[0, ch].flatten()]) for ch in range(2)]
    torch.testing.assert_close(got * 9 / 8, torch.tensor(naive).double())
    assert (got > 0).all()


def test_refuses_single_weights():
    with pytest.raises(ConfigError, match="neurons, heads, channels"):
        crit(granularity="weights")
    with pytest.raises(ConfigError, match="supports"):
        crit(granularity="2:4")
