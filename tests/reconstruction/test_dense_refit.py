"""Reconstruction on the width/depth axes (hfprune extension): after blocks, residual channels, heads and neurons
are removed, every kept layer equals an independent least-squares fit to its dense counterpart's output, the
model's error to the dense model shrinks, and the result reloads with plain transformers and generates."""

from __future__ import annotations


import pytest
import torch
import transformers as T

import hfprune
from hfprune.structure.layers import find_layers
from tests.helpers.models import calibration as calib
from tests.width_depth.test_width_depth import cfg, greedy, out, reload_plain, tiny

AXES = {
    "layers": dict(granularity="layers", width_depth={"layer_sparsity": 0.25}),
    "hidden": dict(granularity="hidden", width_depth={"hidden_sparsity": 0.25}),
    "heads": dict(granularity="heads+layers", criterion="wanda", sparsity=1 / 3, width_depth={"layer_sparsity": 0.25}),
    "hidden+layers": dict(granularity="hidden+layers", width_depth={"hidden_sparsity": 0.25, "layer_sparsity": 0.25}),
    "all": dict(granularity="hidden+neurons+heads+layers", criterion="wanda", sparsity=0.25, head_sparsity=1 / 3,
                width_depth={"hidden_sparsity": 0.25, "layer_sparsity": 0.25}),
}


def _tiny(family: str):
    """The width/depth tests' models; Qwen2 (biases) without its sliding window: block-by-block runs give every
    block the first block's attention mask (docs/criteria.md), so the exact check needs full attention."""
    if family == "qwen2_full":
        torch.manual_seed(0)
        return T.Qwen2ForCausalLM(T.Qwen2Config(hidden_size=48, num_hidden_layers=4, num_attention_heads=6,
                                                num_key_value_heads=3, intermediate_size=64, vocab_size=100)).eval()
    return tiny(family)


def _prune(family: str, axes: str, method: str, damp: float = 0.01):
    model = _tiny(family)
    x = calib("llama", 8)  # the calibration size of `cfg`: the refit sees exactly these tokens
    res = hfprune.prune(model, cfg(**AXES[axes], reconstruction={"method": method, "damp": damp}), x)
    return model, res, x


def _inputs(model, x) -> dict[str, torch.Tensor]:
    """Every Linear's input on ``x`` (tokens x features), by module name."""
    got: dict[str, torch.Tensor] = {}
    def keep(name: str, a: tuple) -> None:
        got.setdefault(name, a[0].reshape(-1, a[0].shape[-1]))

    hooks = [l.module.register_forward_hook(lambda m, a, o, n=n: keep(n, a)) for n, l in find_layers(model).items()]
    with torch.no_grad():
        model(input_ids=x)
    for h in hooks:
        h.remove()
    return got


@pytest.mark.parametrize("family,axes", [("llama", "hidden+layers"), ("qwen2_full", "hidden"), ("llama_tied", "layers")])
def test_refit_equals_independent_least_squares(family, axes):
    """Each kept layer solves min ||[W' b'] [a'; 1] - [W b]_rows [a; 1]|| on its own inputs in the refit model
    (a') and its dense counterpart's (a): torch.linalg.lstsq on stacked inputs, no damping."""
    dense = _tiny(family)
    model, res, x = _prune(family, axes, "weights", damp=0.0)
    removed = res.info.groups["layers"]["removed"] if "layers" in res.info.groups else []
    kept_blocks = [i for i in range(dense.config.num_hidden_layers) if i not in removed]
    hidden = res.info.groups.get("hidden", {})
    assert hidden or removed
    a_dense, a_pruned = _inputs(dense, x), _inputs(model, x)
    dense_layers, checked = find_layers(dense), 0
    # the kept residual channels, read off the embedding (sliced, never refit): column j of the pruned one is
    # column channels[j] of the dense one
    emb, demb = model.get_input_embeddings().weight, dense.get_input_embeddings().weight
    channels = torch.cdist(emb.T.double(), demb.T.double()).argmin(1)
    torch.testing.assert_close(emb, demb[:, channels], atol=0, rtol=0)
    for name, layer in find_layers(model).items():
        if not name.startswith("model.layers."):
            continue
        j, rest = name.split(".")[2], name.split(".", 3)[3]
        dname = f"model.layers.{kept_blocks[int(j)]}.{rest}"
        W = dense_layers[dname].module.weight.detach().double()
        b = dense_layers[dname].module.bias
        Y = a_dense[dname].double() @ W.T + (b.detach().double() if b is not None else 0)
        A = a_pruned[name].double()
        if layer.module.bias is not None:
            A = torch.cat([A, torch.ones(len(A), 1, dtype=A.dtype)], 1)
        sol = torch.linalg.lstsq(A, Y).solution.T  # [rows of the dense layer, in'(+1)]
        got = layer.module.weight.detach().double()
        if layer.module.bias is not None:
            got = torch.cat([got, layer.module.bias.detach().double()[:, None]], 1)
        # every kept row is the least-squares fit of one dense row (the nearest; a wrong one would not match),
        # compared by its outputs on the calibration inputs (coefficients are ill-conditioned for o_proj's inputs)
        fitted, best = A @ got.T, A @ sol.T
        idx = torch.cdist(fitted.T, best.T).argmin(1)
        writes = rest.endswith(("o_proj", "down_proj"))  # rows are residual channels; readers keep all rows
        torch.testing.assert_close(idx, channels if writes else torch.arange(len(idx)), atol=0, rtol=0)
        torch.testing.assert_close(fitted, best[:, idx], atol=5e-3 * float(best.abs().max()), rtol=0)
        # and it reaches the least-squares optimum (float32 statistics: within 0.1% of the residual energy)
        r_got = (fitted - Y[:, idx]).square().sum(0)
        r_best = (best[:, idx] - Y[:, idx]).square().sum(0)
        assert (r_got <= r_best * 1.001 + 1e-6 * Y[:, idx].square().sum(0)).all()
        checked += 1
    assert checked >= 7


@pytest.mark.parametrize("axes", ["layers", "hidden", "heads", "all"])
def test_refit_reduces_the_error_to_the_dense_model(axes):
    """On the calibration data: the mean relative layer error falls, and so does the logits' distance to the dense
    model's (hidden axes compared on the full vocabulary)."""
    dense = tiny("llama")
    x = calib("llama", 8)
    with torch.no_grad():
        ref = dense(input_ids=x).logits
    errs = {}
    for method in ("none", "weights"):
        model, res, _ = _prune("llama", axes, method)
        with torch.no_grad():
            errs[method] = float((model(input_ids=x).logits - ref).square().mean())
        if method == "weights":
            rec = res.report.reconstruction
            before = sum(f["error_before"] for f in rec["layers"]) / len(rec["layers"])
            after = sum(f["error_after"] for f in rec["layers"]) / len(rec["layers"])
            assert rec["compacted"] and after < before
    assert errs["weights"] < errs["none"]


def test_blocks_before_the_first_removed_one_are_passed_through(monkeypatch):
    """Blocks before the first removed block hold the reference weights on the reference stream: they are not
    fitted (no statistics), stay bitwise equal, and the report lists their layers with zero error; the blocks
    after it are fitted."""
    import copy

    import hfprune.reconstruction.dense_refit as dr
    from hfprune.structure.layers import track_origins
    from hfprune.width_depth.blocks import remove_blocks

    fitted: list[str] = []
    real = dr._refit_stage
    monkeypatch.setattr(dr, "_refit_stage", lambda report, where, *a, **k: (fitted.append(where),
                                                                            real(report, where, *a, **k))[1])
    dense = tiny("llama")
    model = copy.deepcopy(dense)
    x = calib("llama", 8)
    with track_origins(model):
        remove_blocks(model, [2])
        report = dr.refit_to_dense(dense, model, [2], [{"input_ids": x[:4]}, {"input_ids": x[4:]}])
    for j in (0, 1):
        for (n, p), (_, q) in zip(model.model.layers[j].named_parameters(), dense.model.layers[j].named_parameters()):
            assert torch.equal(p, q), (j, n)
    assert sorted(set(fitted)) == ["model.layers.2"]  # the block after the removed one (index 2 once renumbered)
    early = [f for f in report.layers if int(f.name.split(".")[2]) < 2]
    assert len(early) == 14 and all(f.error_before == f.error_after == 0.0 for f in early)  # 7 linears x 2 blocks
    assert any(f.error_after < f.error_before for f in report.layers if f.name.startswith("model.layers.2."))


def test_refit_is_the_default_with_data_and_off_without():
    _, with_data, _ = _prune("llama", "hidden", "auto")
    assert with_data.config.reconstruction.method == "weights" and with_data.report.reconstruction["layers"]
    model = tiny("llama")
    res = hfprune.prune(model, cfg(granularity="layers", width_depth={"layer_sparsity": 0.25,
                                                                       "block_score": "magnitude"}), None)
    assert res.config.reconstruction.method == "none" and not res.report.reconstruction


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_refit_model_reloads_plain_and_generates(family, tmp_path):
    model, res, _ = _prune(family, "all" if family == "llama" else "hidden", "weights")
    assert res.report.loader == "transformers"
    got = out(model, family)
    res.save_pretrained(tmp_path / "m")
    child = reload_plain(tmp_path / "m", family)
    torch.testing.assert_close(torch.tensor(child["out"]), got, atol=1e-4, rtol=1e-4)
    assert child["gen"] == greedy(model)
    card = (tmp_path / "m" / "README.md").read_text()
    assert "every kept layer of every kept block" in card
