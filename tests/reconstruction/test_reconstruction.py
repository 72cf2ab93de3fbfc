"""Weight reconstruction (hfprune extension): the solvers against torch.linalg.lstsq on stacked inputs, masks kept,
output error never larger than masking, damping of singular statistics, non-finite statistics refused."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from tests.helpers.models import calibration, tiny_model
from hfprune import PruningConfig
from hfprune.calibration.data import prepare_calibration
from hfprune.calibration.sequential import capture_block_inputs
from hfprune.criteria import get_criterion
from hfprune.errors import CalibrationError, ConfigError
from hfprune.steps.scoring import compute_masks
from hfprune.reconstruction.least_squares import (GramStats, dense_target, make_factor, output_error, refine_rows_cg, refit_columns,
                                   refit_rows_exact, refit_rows_obs)
from hfprune.reconstruction.refit import reconstruct
from hfprune.structure import find_groups, find_layers, target_layers


def _data(n: int = 200, d: int = 12, out: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    A += 0.5  # a mean, so that the bias term matters
    W = torch.randn(out, d, generator=g, dtype=torch.float64)
    st = GramStats(d, torch.device("cpu"))
    st.add(A.float())
    return A, W, st


def test_columns_equal_lstsq_without_and_with_bias():
    A, W, st = _data()
    keep = torch.ones(12, dtype=torch.bool)
    keep[[1, 4, 7]] = False
    got = refit_columns(W, keep, make_factor(st, 0.0, centered=False))
    ref = torch.linalg.lstsq(A[:, keep], A @ W.T).solution.T
    assert torch.allclose(got[:, keep], ref, atol=1e-4)
    assert (got[:, ~keep] == 0).all()
    # with a bias: least squares on [A_K, 1]; b' - b = (W - W') mu
    b = torch.randn(5, dtype=torch.float64)
    f = make_factor(st, 0.0, centered=True)
    got = refit_columns(W, keep, f)
    X = torch.cat([A[:, keep], torch.ones(len(A), 1, dtype=A.dtype)], dim=1)
    sol = torch.linalg.lstsq(X, A @ W.T + b).solution
    assert torch.allclose(got[:, keep], sol[:-1].T, atol=1e-4)
    assert torch.allclose(b + (W - got) @ f.mu, sol[-1], atol=1e-4)


def _paired(seed: int = 1):
    """Dense inputs A0 and the pruned model's inputs A = A0 + a perturbation correlated with A0."""
    A0, W, _ = _data(seed=seed)
    g = torch.Generator().manual_seed(seed + 10)
    A = A0 @ (torch.eye(12, dtype=A0.dtype) + 0.2 * torch.randn(12, 12, generator=g, dtype=A0.dtype)) \
        + 0.3 * torch.randn(A0.shape, generator=g, dtype=A0.dtype) + 0.1
    st = GramStats(12, torch.device("cpu"), paired=True)
    for i in range(0, len(A), 64):  # several batches, as in a calibration run
        st.add(A[i:i + 64].float(), A0[i:i + 64].float())
    return A0, A, W, st


def test_dense_target_equals_lstsq_against_dense_outputs():
    """Paired statistics: the refit on the pruned inputs A reproduces the dense layer on the dense inputs A0."""
    A0, A, W, st = _paired()
    keep = torch.ones(12, dtype=torch.bool)
    keep[[0, 5, 9]] = False
    f = make_factor(st, 0.0, centered=False)
    got = refit_columns(dense_target(W, f, st, False), keep, f)
    ref = torch.linalg.lstsq(A[:, keep], A0 @ W.T).solution.T
    assert torch.allclose(got[:, keep], ref, atol=1e-4)
    # per-row masks, exact solver
    rows = torch.rand(W.shape, generator=torch.Generator().manual_seed(7)) > 0.4
    got_rows = refit_rows_exact(dense_target(W, f, st, False), rows, f)
    for i in range(W.shape[0]):
        sol = torch.linalg.lstsq(A[:, rows[i]], A0 @ W[i]).solution
        assert torch.allclose(got_rows[i, rows[i]], sol, atol=1e-4)
    # with a bias: least squares on [A_K, 1] against A0 W^T + b; b' = b + W mu0 - W' mu
    b = torch.randn(5, dtype=torch.float64)
    fc = make_factor(st, 0.0, centered=True)
    got = refit_columns(dense_target(W, fc, st, True), keep, fc)
    X = torch.cat([A[:, keep], torch.ones(len(A), 1, dtype=A.dtype)], dim=1)
    sol = torch.linalg.lstsq(X, A0 @ W.T + b).solution
    assert torch.allclose(got[:, keep], sol[:-1].T, atol=1e-4)
    assert torch.allclose(b + W @ A0.mean(0) - got @ A.mean(0), sol[-1], atol=1e-4)


def test_paired_output_error_is_the_error_against_the_dense_output():
    A0, A, W, st = _paired(seed=2)
    Wn = W * (torch.rand(W.shape, generator=torch.Generator().manual_seed(8)) > 0.5) + 0.01
    delta = torch.randn(5, dtype=torch.float64)
    direct = float(((A @ Wn.T + delta - A0 @ W.T) ** 2).sum(dim=1).mean())
    assert output_error(Wn - W, delta, W, st) == pytest.approx(direct, rel=1e-4)
    assert output_error(Wn - W, None, W, st) == pytest.approx(float(((A @ Wn.T - A0 @ W.T) ** 2).sum(1).mean()),
                                                              rel=1e-4)
    same = GramStats(12, torch.device("cpu"), paired=True)  # identical inputs: the unpaired error
    same.add(A0.float(), A0.float())
    plain = GramStats(12, torch.device("cpu"))
    plain.add(A0.float())
    assert output_error(Wn - W, delta, W, same) == pytest.approx(output_error(Wn - W, delta, W, plain), rel=1e-6)
    assert torch.allclose(dense_target(W, make_factor(same, 0.01, False), same, False), W)


def test_exact_rows_equal_lstsq_per_row():
    A, W, st = _data()
    g = torch.Generator().manual_seed(3)
    keep = torch.rand(W.shape, generator=g) > 0.5
    got = refit_rows_exact(W, keep, make_factor(st, 0.0, centered=False), chunk=2)
    for i in range(W.shape[0]):
        K = keep[i]
        ref = torch.linalg.lstsq(A[:, K], A @ W[i]).solution
        assert torch.allclose(got[i, K], ref, atol=1e-4)
        assert (got[i, ~K] == 0).all()


def test_damping_is_lstsq_on_augmented_rows():
    """Ht = H/n + lam I: the same as appending sqrt(n lam) I rows with targets sqrt(n lam) w (pull toward w)."""
    A, W, st = _data()
    keep = torch.rand(W.shape, generator=torch.Generator().manual_seed(4)) > 0.5
    f = make_factor(st, 0.05, centered=False)
    got = refit_rows_exact(W, keep, f)
    s = (len(A) * f.lam) ** 0.5
    Aug = torch.cat([A, s * torch.eye(12, dtype=A.dtype)])
    for i in range(W.shape[0]):
        K = keep[i]
        ref = torch.linalg.lstsq(Aug[:, K], Aug @ W[i]).solution
        assert torch.allclose(got[i, K], ref, atol=1e-4)


def test_obs_keeps_mask_and_never_beats_exact():
    A, W, st = _data(d=16)
    keep = torch.rand(W.shape, generator=torch.Generator().manual_seed(5)) > 0.5
    f = make_factor(st, 0.01, centered=False)
    obs = refit_rows_obs(W.float(), keep, f, blocksize=4)
    exact = refit_rows_exact(W, keep, f)
    assert ((obs != 0) <= keep).all() and (obs[~keep] == 0).all()
    m, mu = st.moments(False)
    masked = output_error(W * ~keep, None, W, st)
    e_obs, e_exact = output_error(W - obs, None, W, st), output_error(W - exact, None, W, st)
    assert e_exact <= e_obs * (1 + 1e-6) and e_obs < masked


def test_cg_refinement_reaches_lstsq_and_never_worsens_obs():
    """OBS + conjugate gradients: each step no worse than the last, the mask kept, and after |K| steps the
    per-row least-squares solution of torch.linalg.lstsq on the stacked (damped) inputs."""
    A, W, st = _data(d=16)
    keep = torch.rand(W.shape, generator=torch.Generator().manual_seed(6)) > 0.5
    f = make_factor(st, 0.01, centered=False)
    m, mu = st.moments(False)
    obs = refit_rows_obs(W.float(), keep, f, blocksize=4)
    errors = [output_error(W - obs, None, W, st)]
    for steps in (1, 2, 4, 16):
        got = refine_rows_cg(W, obs, keep, f, steps)
        assert (got[~keep] == 0).all()
        errors.append(output_error(W - got, None, W, st))
    assert all(b <= a * (1 + 1e-5) for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0]
    s = (len(A) * f.lam) ** 0.5
    Aug = torch.cat([A, s * torch.eye(16, dtype=A.dtype)])
    for i in range(W.shape[0]):
        K = keep[i]
        ref = torch.linalg.lstsq(Aug[:, K], Aug @ W[i]).solution
        assert torch.allclose(got[i, K], ref, atol=1e-3, rtol=1e-3)


def test_rank_deficient_statistics_are_damped_and_reported():
    A, W, st0 = _data()
    A[:, 3] = 0  # dead input
    A[:, 5] = A[:, 6]  # duplicated input
    st = GramStats(12, torch.device("cpu"))
    st.add(A.float())
    for damp in (0.01, 0.0):
        f = make_factor(st, damp, centered=False)
        assert f.rank_deficient and f.dead == 1 and f.lam > 0
        keep = torch.ones(12, dtype=torch.bool)
        keep[[0, 6]] = False
        got = refit_columns(W, keep, f)
        assert torch.isfinite(got).all()
        m, mu = st.moments(False)
        assert output_error(W - got, None, W, st) <= output_error(W * keep, None, W, st)


def test_nonfinite_statistics_raise_before_writing():
    st = GramStats(4, torch.device("cpu"))
    st.add(torch.tensor([[1.0, float("nan"), 0.0, 2.0]]))
    with pytest.raises(CalibrationError, match="NaN or inf"):
        st.check(["x"])
    model = tiny_model("llama")
    batches = _batches(model)
    layers = target_layers(model, PruningConfig())
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[0] = float("inf")
    before = {n: p.clone() for n, p in model.named_parameters()}
    masks = {n: torch.rand(l.weight_matrix().shape, generator=torch.Generator().manual_seed(0)) > 0.5
             for n, l in layers.items()}
    with pytest.raises(CalibrationError, match="NaN or inf"):
        reconstruct(model, layers, masks, batches)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if torch.isfinite(p).all())


def test_bad_arguments():
    model = tiny_model("llama")
    layers = target_layers(model, PruningConfig())
    with pytest.raises(ConfigError, match="method"):
        reconstruct(model, layers, {}, _batches(model), method="gptq")
    with pytest.raises(ConfigError, match="damp"):
        reconstruct(model, layers, {}, _batches(model), damp=-1)
    with pytest.raises(ConfigError, match="cg_steps"):
        reconstruct(model, layers, {}, _batches(model), cg_steps=-2)
    with pytest.raises(CalibrationError, match="batches"):
        reconstruct(model, layers, {}, [])


def _batches(model, n: int = 8):
    cfg = PruningConfig(criterion="wanda", calibration={"num_samples": n, "batch_size": 4})
    return prepare_calibration(calibration("llama", n), model, cfg).batches


def _first_block_inputs(model, batches, name):
    """Inputs of layer ``name`` of block 0 on the calibration batches (block 0 sees dense inputs)."""
    seen = []
    h = model.get_submodule(name).register_forward_hook(lambda m, a, o: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    cache = capture_block_inputs(model, model.model.layers[0], batches)
    with torch.no_grad():
        for hidden, args, kwargs in cache:
            model.model.layers[0](hidden, *args, **kwargs)
    h.remove()
    return torch.cat(seen).double()


@pytest.mark.parametrize("granularity", ["weights", "2:4"])
@pytest.mark.parametrize("method", ["obs", "obs+cg", "exact"])
def test_unstructured_masks_unchanged_and_error_not_larger(granularity, method):
    torch.manual_seed(0)
    model = tiny_model("llama")
    cfg = PruningConfig(criterion="wanda", granularity=granularity, sparsity=0.5,
                        calibration={"num_samples": 8, "batch_size": 4})
    batches = _batches(model)
    layers = target_layers(model, cfg)
    sel, _, _ = compute_masks(model, get_criterion(cfg), layers, None,
                              _batches(model), progress=False)
    dense = copy.deepcopy(model)
    rep = reconstruct(model, layers, sel.masks, batches, method=method.split("+")[0],
                      cg_steps=10 if "cg" in method else 0)
    assert {f.name for f in rep.layers} == set(layers) and not rep.skipped
    for n, l in layers.items():
        w = l.weight_matrix()
        assert (w[~sel.masks[n]] == 0).all()
    for f in rep.layers:
        assert f.error_after <= f.error_before
    name = "model.layers.0.mlp.gate_proj"  # independent check on the real inputs
    a = _first_block_inputs(dense, batches, name)
    W = dense.get_submodule(name).weight.detach().double()
    Wn = model.get_submodule(name).weight.detach().double()
    err = lambda D: float(((a @ D.T) ** 2).sum())  # noqa: E731
    assert err(W - Wn) < err(W * ~sel.masks[name])


@pytest.mark.parametrize("sequential", [True, False])
def test_structured_refit_then_compaction(sequential):
    from hfprune.steps.compaction import compact_units
    from hfprune.structure import adapter_for

    torch.manual_seed(0)
    model = tiny_model("llama")
    cfg = PruningConfig(criterion="magnitude", granularity="neurons+heads", sparsity=0.5, head_sparsity=1 / 3,
                        calibration={"num_samples": 8, "batch_size": 4})
    batches = _batches(model)
    layers = find_layers(model)
    groups = find_groups(model, cfg, batches[0])
    sel, _, _ = compute_masks(model, get_criterion(cfg), layers, groups, [], progress=False)
    dense = copy.deepcopy(model)
    rep = reconstruct(model, layers, sel.masks, batches, groups=groups, sequential=sequential)
    assert sorted(f.name for f in rep.layers) == sorted(
        f"model.layers.{i}.{p}" for i in range(2) for p in ("mlp.down_proj", "self_attn.o_proj"))
    assert all(f.kind == "columns" and f.error_after < f.error_before for f in rep.layers)
    name = "model.layers.0.mlp.down_proj"
    a = _first_block_inputs(dense, batches, name)
    g = next(g for g in groups if g.name.startswith("model.layers.0.mlp"))
    keep = sel.masks[g.name]
    W, Wn = (m.get_submodule(name).weight.detach().double() for m in (dense, model))
    assert (Wn[:, ~keep] == 0).all()
    ref = torch.linalg.lstsq(a[:, keep], a @ W.T).solution.T  # damping is small: close to the plain solution
    assert torch.allclose(Wn[:, keep], ref, atol=0.05 * float(ref.abs().max()))
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        masked = model(input_ids=ids).logits
        compact_units(model, groups, sel.masks, adapter_for(model))
        assert torch.allclose(model(input_ids=ids).logits, masked, atol=1e-5)  # compaction only slices


def _layer_inputs(model, batches, name):
    """Inputs of layer ``name`` over the calibration batches, whole-model forward passes."""
    seen = []
    h = model.get_submodule(name).register_forward_hook(lambda m, a, o: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for b in batches:
            model(input_ids=b["input_ids"])
    h.remove()
    return torch.cat(seen).double()


def test_dense_target_in_sequential_mode_reports_the_error_against_the_dense_model():
    """Block 1 sees the refit block 0's outputs; with target='dense' its refit is judged (and reported) against the
    dense model's down_proj output on the dense inputs, and block 0 (dense inputs) fits as with target='layer'."""
    torch.manual_seed(0)
    model = tiny_model("llama")
    cfg = PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.5,
                        calibration={"num_samples": 8, "batch_size": 4})
    batches = _batches(model)
    groups = find_groups(model, cfg, batches[0])
    sel, _, _ = compute_masks(model, get_criterion(cfg), find_layers(model), groups, [], progress=False)
    dense, by_layer = copy.deepcopy(model), copy.deepcopy(model)
    rep = reconstruct(model, find_layers(model), sel.masks, batches, groups=groups, target="dense")
    ref = reconstruct(by_layer, find_layers(by_layer), sel.masks, batches, groups=groups, target="layer")
    assert rep.target == "dense" and ref.target == "layer"
    first = "model.layers.0.mlp.down_proj"
    f0, r0 = (next(f for f in r.layers if f.name == first) for r in (rep, ref))
    assert f0.error_after == pytest.approx(r0.error_after, rel=1e-6)
    name = "model.layers.1.mlp.down_proj"
    a, a0 = _layer_inputs(model, batches, name), _layer_inputs(dense, batches, name)
    W, Wn = (m.get_submodule(name).weight.detach().double() for m in (dense, model))
    y0 = a0 @ W.T
    direct = float(((a @ Wn.T - y0) ** 2).sum()) / float((y0 ** 2).sum())
    fit = next(f for f in rep.layers if f.name == name)
    assert fit.error_after == pytest.approx(direct, rel=1e-3)
    Wl = by_layer.get_submodule(name).weight.detach().double()  # fitted to its own output instead: worse here
    al = _layer_inputs(by_layer, batches, name)
    assert direct < float(((al @ Wl.T - y0) ** 2).sum()) / float((y0 ** 2).sum())


def test_joint_bias_fit_creates_bias():
    from hfprune.structure import adapter_for

    torch.manual_seed(0)
    model = tiny_model("llama")
    cfg = PruningConfig(criterion="magnitude", granularity="neurons", sparsity=0.5,
                        calibration={"num_samples": 8, "batch_size": 4})
    batches = _batches(model)
    layers = find_layers(model)
    groups = find_groups(model, cfg, batches[0])
    sel, _, _ = compute_masks(model, get_criterion(cfg), layers, groups, [], progress=False)
    plain = copy.deepcopy(model)
    r0 = reconstruct(plain, find_layers(plain), sel.masks, batches, groups=groups)
    rep = reconstruct(model, layers, sel.masks, batches, groups=groups, fit_bias=True, adapter=adapter_for(model))
    assert model.config.mlp_bias and model.model.layers[0].mlp.down_proj.bias is not None
    assert all(f.bias for f in rep.layers)
    assert rep.layers[0].error_after <= r0.layers[0].error_after  # one more free parameter per output


def test_through_prune_masks_unchanged_and_reported():
    from hfprune import prune

    cfg = PruningConfig(criterion="wanda", sparsity=0.5, calibration={"num_samples": 8, "batch_size": 4},
                        reconstruction={"method": "none"})
    plain = prune(tiny_model("llama"), cfg, calibration("llama"), progress=False)
    res = prune(tiny_model("llama"), dataclasses.replace(cfg,
                                                         reconstruction=dataclasses.replace(cfg.reconstruction, method="weights")), calibration("llama"),
                progress=False)
    assert res.masks.keys() == plain.masks.keys()
    assert all(torch.equal(res.masks[n], m) for n, m in plain.masks.items())
    for n, m in res.masks.items():
        assert (res.model.get_submodule(n).weight[~m] == 0).all()
    rec = res.report.reconstruction
    assert rec["method"] == "obs" and len(rec["layers"]) == len(res.masks)
    assert all(f["error_after"] <= f["error_before"] for f in rec["layers"])
    assert "reconstruction" in res.report.timings and plain.report.reconstruction == {}


def test_through_prune_ec_bias_fitted_jointly_not_compensated_twice():
    from hfprune import prune

    cfg = PruningConfig(criterion="elimination_compensation", granularity="neurons", sparsity=0.5,
                        options={"output": "layer"}, calibration={"num_samples": 8, "batch_size": 4},
                        reconstruction={"method": "weights"})
    res = prune(tiny_model("llama"), cfg, calibration("llama"), progress=False)
    assert res.model.config.mlp_bias
    fits = res.report.reconstruction["layers"]
    assert all(f["bias"] for f in fits)
    # the bias is the joint least-squares one: EC's own shift W_R abar was not added on top
    model = tiny_model("llama")
    batches = _batches(model)
    layers = find_layers(model)
    groups = find_groups(model, cfg, batches[0])
    ref = reconstruct(model, layers, {g.name: res.masks[g.name] for g in groups}, batches, groups=groups,
                      fit_bias=True, damp=cfg.reconstruction.damp)
    name = "model.layers.1.mlp.down_proj"
    assert torch.allclose(res.model.get_submodule(name).bias, model.get_submodule(name).bias, atol=1e-5)
    assert ref.layers[0].bias


def test_one_statistic_per_distinct_input():
    from hfprune.reconstruction.least_squares import InputStatistics

    model = tiny_model("llama")
    batches = _batches(model)
    block = "model.layers.0"
    names = [f"{block}.self_attn.{p}_proj" for p in "qkvo"] + [f"{block}.mlp.{p}_proj" for p in ("gate", "up", "down")]
    layers = {n: l for n, l in find_layers(model).items() if n in names}
    hooks = InputStatistics(layers)
    with torch.no_grad():
        for b in batches:
            hooks.next_call()
            model(**b)
    hooks.remove()
    st = hooks.stats
    q, k, v, o, g, u, d = (st[n] for n in names)
    assert q is k is v and g is u and len({id(x) for x in (q, o, g, d)}) == 4
    a = _first_block_inputs(model, batches, names[0]).float()
    assert q.n == a.shape[0] and torch.allclose(q.H, a.T @ a, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_smollm2_first_block_refit_lowers_calibration_loss():
    """Real model, one block (kept short): every layer's error down, the masks those of Wanda, and the LM loss on
    the calibration tokens lower than with the same masks applied without refitting."""
    from hfprune import prune
    from hfprune.examples import lee_texts, load_smollm2
    from hfprune.steps.masks import apply_weight_masks

    torch.manual_seed(0)
    cfg = PruningConfig(criterion="wanda", sparsity=0.5, targets=["model.layers.0.*"],
                        calibration={"num_samples": 2, "seq_len": 128, "batch_size": 2},
                        reconstruction={"method": "weights"})
    model, tok = load_smollm2()
    texts = lee_texts("background")
    ids = torch.cat([b["input_ids"] for b in prepare_calibration(texts, model, cfg, tok).batches])
    plain = copy.deepcopy(model)
    res = prune(model, cfg, texts, tok, progress=False)
    layers = target_layers(plain, cfg)
    sel, _, _ = compute_masks(plain, get_criterion(cfg), layers, None,
                              prepare_calibration(texts, plain, cfg, tok).batches, progress=False)
    assert all(torch.equal(res.masks[n], m) for n, m in sel.masks.items())
    apply_weight_masks(layers, sel.masks)
    fits = res.report.reconstruction["layers"]
    assert len(fits) == 7 and all(f["error_after"] < f["error_before"] for f in fits)
    with torch.no_grad():
        assert model(input_ids=ids, labels=ids).loss < plain(input_ids=ids, labels=ids).loss
