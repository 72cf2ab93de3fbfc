"""Elimination-compensation against its definition: per-sample autograd of the first-order output change."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from tests.helpers.models import calibration, tiny_model
from hfprune import PruningConfig
from hfprune.criteria import get_criterion
from hfprune.structure.groups import Coupling, UnitGroup
from hfprune.structure.layers import Layer



@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons need double precision; restored afterwards for other test modules."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.bias.normal_()
    return net


def engine_stats(net: nn.Module, layer: Layer, crit, x: torch.Tensor, batches: int = 3) -> dict:
    """Drive the criterion like the calibration engine: one-hot output cotangents (exact for <= 16 outputs)."""
    stats = crit.init_stats(layer)
    for xb in x.chunk(batches):
        seen = {}

        def hook(mod, inp, out):
            seen["a"], seen["z"] = inp[0], out

        h = layer.module.register_forward_hook(hook)
        y = net(xb)
        h.remove()
        grads = None
        if crit.grad_mode == "output":
            grads = [torch.autograd.grad(y, seen["z"], torch.eye(y.shape[1])[k].expand_as(y), retain_graph=True)[0]
                     for k in range(y.shape[1])]
        elif crit.grad_mode == "loss":
            grads = [torch.autograd.grad(y.square().sum(), seen["z"])[0]]
        if grads is not None:  # the collector hands EC the sum of the squared gradients
            grads = [sum(g.square() for g in grads)]
        crit.accumulate(layer, stats, seen["a"], grads)
        crit.after_backward(layer, stats)
    return stats


def naive_ec(net: nn.Module, idx: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """I_ij = min_Db E_x[sum_k (dy_k/dW_ij W_ij - dy_k/db_i Db)^2], solved per weight from per-sample Jacobians."""
    params = dict(net.named_parameters())
    wname, bname = f"{idx}.weight", f"{idx}.bias"

    def out(w, b, xi):
        return functional_call(net, {**params, wname: w, bname: b}, (xi.unsqueeze(0),)).squeeze(0)

    jw, jb = vmap(jacrev(out, argnums=(0, 1)), in_dims=(None, None, 0))(params[wname], params[bname], x)
    w = params[wname].detach()
    n_out, n_in = w.shape
    imp, db = torch.zeros(n_out, n_in), torch.zeros(n_out, n_in)
    for i in range(n_out):
        for j in range(n_in):
            u = jw[:, :, i, j] * w[i, j]  # [samples, k]: dy_k/dW_ij * W_ij
            v = jb[:, :, i]  # [samples, k]: dy_k/db_i
            d = (u * v).sum(1).mean() / v.square().sum(1).mean()  # least squares over samples and outputs
            db[i, j] = d
            imp[i, j] = (u - v * d).square().sum(1).mean()
    return imp, db


def test_hidden_layer_matches_per_sample_definition():
    net = mlp()
    x = torch.randn(60, 4)
    layer = Layer("2", net[2])
    crit = get_criterion(PruningConfig(criterion="elimination_compensation"))
    assert crit.grad_mode == "output"
    stats = engine_stats(net, layer, crit, x)
    imp, db = naive_ec(net, 2, x)
    torch.testing.assert_close(crit.weight_scores(layer, stats).double(), imp, rtol=1e-5, atol=1e-9)
    for i, j in [(0, 0), (3, 5), (4, 2)]:
        removed = torch.zeros_like(imp, dtype=torch.bool)
        removed[i, j] = True
        delta = crit.bias_compensation(layer, stats, removed)
        expected = torch.zeros(imp.shape[0])
        expected[i] = db[i, j]
        torch.testing.assert_close(delta, expected, rtol=1e-6, atol=1e-10)
    # compensations of several removed weights add up per neuron
    removed = torch.zeros_like(imp, dtype=torch.bool)
    removed[1, :3] = True
    torch.testing.assert_close(crit.bias_compensation(layer, stats, removed)[1], db[1, :3].sum())


def last_layer_setup(x: torch.Tensor):
    net = mlp(1)
    layer = Layer("4", net[4])
    crit = get_criterion(PruningConfig(criterion="elimination_compensation"))
    return net, layer, crit, engine_stats(net, layer, crit, x)


def expected_change(net: nn.Module, layer: Layer, removed: torch.Tensor, delta: torch.Tensor | None, x):
    """E_x ||y_pruned - y||^2 measured by actually pruning."""
    with torch.no_grad():
        y = net(x)
        w, b = layer.module.weight.clone(), layer.module.bias.clone()
        layer.module.weight[removed] = 0
        if delta is not None:
            layer.module.bias += delta
        change = (net(x) - y).square().sum(1).mean()
        layer.module.weight.copy_(w)
        layer.module.bias.copy_(b)
    return change


def test_last_layer_removal_and_compensation_is_exact():
    x = torch.randn(80, 4)
    net, layer, crit, stats = last_layer_setup(x)
    scores = crit.weight_scores(layer, stats).double()
    for i, j in [(0, 1), (2, 4)]:
        removed = torch.zeros_like(scores, dtype=torch.bool)
        removed[i, j] = True
        delta = crit.bias_compensation(layer, stats, removed)
        torch.testing.assert_close(expected_change(net, layer, removed, delta, x), scores[i, j], rtol=1e-6,
                                   atol=1e-12)
        assert expected_change(net, layer, removed, None, x) > scores[i, j]  # compensation lowered the change


def test_structured_input_unit_on_last_layer_is_exact():
    x = torch.randn(80, 4)
    net, layer, crit, stats = last_layer_setup(x)
    group = UnitGroup("hidden", "neurons", 5, [Coupling("2", "out", torch.arange(5).view(5, 1)),
                                                Coupling("4", "in", torch.arange(5).view(5, 1))])
    unit = crit.unit_scores(group, {"4": stats}, {"4": layer})
    removed = torch.zeros(3, 5, dtype=torch.bool)
    removed[:, 3] = True
    delta = crit.bias_compensation(layer, stats, removed)
    torch.testing.assert_close(expected_change(net, layer, removed, delta, x), unit[3], rtol=1e-6, atol=1e-12)


def test_layer_output_mode_is_weighted_input_variance():
    net = mlp(2)
    x = torch.randn(50, 4)
    layer = Layer("2", net[2])
    crit = get_criterion(PruningConfig(criterion="elimination_compensation", options={"output": "layer"}))
    assert crit.grad_mode is None
    stats = engine_stats(net, layer, crit, x)
    a = torch.tanh(net[0](x))
    w = net[2].weight.detach()
    torch.testing.assert_close(crit.weight_scores(layer, stats).double(), w.square() * a.var(0, unbiased=False),
                               rtol=1e-5, atol=1e-9)
    removed = torch.zeros_like(w, dtype=torch.bool)
    removed[2, 1] = True
    torch.testing.assert_close(crit.bias_compensation(layer, stats, removed)[2], w[2, 1] * a[:, 1].mean())


def test_loss_mode_weights_by_squared_loss_gradient():
    net = mlp(3)
    x = torch.randn(40, 4)
    layer = Layer("2", net[2])
    crit = get_criterion(PruningConfig(criterion="elimination_compensation", options={"output": "loss"}))
    stats = engine_stats(net, layer, crit, x, batches=1)
    a = torch.tanh(net[0](x))
    z = net[2](a).detach().requires_grad_()
    (g,) = torch.autograd.grad(net[4](net[3](z)).square().sum(), z)
    gs = g.square()  # [samples, out]
    naive = torch.zeros(5, 6)
    w = net[2].weight.detach()
    for i in range(5):
        for j in range(6):
            abar = (gs[:, i] * a[:, j]).sum() / gs[:, i].sum()
            naive[i, j] = w[i, j] ** 2 * (gs[:, i] * (a[:, j] - abar) ** 2).mean()
    torch.testing.assert_close(crit.weight_scores(layer, stats).double(), naive, rtol=1e-5, atol=1e-9)


def test_compensate_false_returns_none():
    x = torch.randn(20, 4)
    net = mlp()
    layer = Layer("4", net[4])
    crit = get_criterion(PruningConfig(criterion="elimination_compensation", options={"compensate": False}))
    stats = engine_stats(net, layer, crit, x, batches=1)
    assert crit.bias_compensation(layer, stats, torch.ones(3, 5, dtype=torch.bool)) is None


def test_conv_layer_statistics_treat_positions_as_samples():
    torch.manual_seed(4)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    layer = Layer("c", conv)
    crit = get_criterion(PruningConfig(criterion="elimination_compensation", options={"output": "layer"}))
    x = torch.randn(2, 2, 5, 5)
    stats = crit.init_stats(layer)
    crit.accumulate(layer, stats, x)
    # naive: every (image, position) window is a sample
    xp = nn.functional.pad(x, (1, 1, 1, 1))
    windows = torch.stack([xp[b, :, r:r + 3, c:c + 3].reshape(-1) for b in range(2) for r in range(5)
                           for c in range(5)])
    w = conv.weight.detach().reshape(3, -1)
    torch.testing.assert_close(crit.weight_scores(layer, stats).double(),
                               w.square() * windows.var(0, unbiased=False), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("granularity", ["weights", "2:4", "neurons"])
def test_supports_every_granularity(granularity):
    assert get_criterion(PruningConfig(criterion="elimination_compensation", granularity=granularity))


def test_compensation_lowers_output_error_on_a_trained_network():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data) / 16.0
    t = torch.tensor(data.target)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[:1200]), t[:1200]).backward()
        opt.step()
    calib, test = x[:1200], x[1200:]
    for idx in (0, 2):
        layer = Layer(str(idx), net[idx])
        crit = get_criterion(PruningConfig(criterion="elimination_compensation"))
        stats = engine_stats(net, layer, crit, calib, batches=4)
        scores = crit.weight_scores(layer, stats)
        removed = scores <= scores.flatten().kthvalue(scores.numel() // 2).values  # lowest half
        delta = crit.bias_compensation(layer, stats, removed)
        with_comp = expected_change(net, layer, removed, delta, test)
        without = expected_change(net, layer, removed, None, test)
        assert with_comp < 0.8 * without, (idx, with_comp, without)


def test_output_gradients_in_pieces_give_the_same_statistics(monkeypatch):
    """Network-output gradients run on pieces of each batch (memory: one piece's graph at a time); with exact G
    (2 logits) the summed statistics equal the unsplit batch's, and the hook keeps one squared-gradient sum per
    layer instead of one gradient per backward pass."""
    from hfprune.calibration import collector
    from hfprune.calibration.data import prepare_calibration
    from hfprune.structure import target_layers

    model = tiny_model("bert")
    cfg = PruningConfig(criterion="elimination_compensation", sparsity=0.5,
                        calibration={"num_samples": 8, "batch_size": 8})
    batches = prepare_calibration(calibration("bert", 8), model, cfg).batches
    layers = target_layers(model, cfg)
    crit = get_criterion(cfg)
    whole = collector.collect_statistics(model, crit, layers, list(layers), batches, progress=False)
    kept: list[int] = []
    keep = collector._keep_grad
    def counting(k: list, g: torch.Tensor, squared: bool) -> None:
        keep(k, g, squared)
        kept.append(len(k))

    monkeypatch.setattr(collector, "_keep_grad", counting)
    monkeypatch.setattr(collector, "OUTPUT_GRAD_TOKENS", 24)  # 2 rows of 12 tokens per piece
    pieces = collector.collect_statistics(model, crit, layers, list(layers), batches, progress=False)
    assert max(kept) == 1  # one running sum, never a list of per-pass gradients
    for n in layers:
        for k in whole[n]:
            torch.testing.assert_close(pieces[n][k], whole[n][k], rtol=1e-4, atol=1e-6)
