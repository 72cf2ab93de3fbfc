"""Structured OBS (`obs`, ZipLM-style): each greedy step removes the unit whose removal, with the kept columns refit by
least squares, leaves the smallest output error, checked against torch.linalg.lstsq on the stacked inputs; scores
are the cumulative error; it needs reconstruction and ends in a reloadable, smaller model."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import calibration, tiny_model
from hfprune import PruningConfig, prune
from hfprune.criteria.obs import _greedy
from hfprune.errors import ConfigError


def _lstsq_error(A: torch.Tensor, W: torch.Tensor, keep: torch.Tensor, lam: float) -> float:
    """``min_W' ||A W^T - A_K W'^T||^2 + n lam ||W - W'||^2`` (the dampened objective), by lstsq."""
    n = A.shape[0]
    s = (n * lam) ** 0.5
    Aug = torch.cat([A, s * torch.eye(A.shape[1], dtype=A.dtype)])
    Y = Aug @ W.T
    sol = torch.linalg.lstsq(Aug[:, keep], Y).solution
    return float(((Y - Aug[:, keep] @ sol) ** 2).sum()) / n


@pytest.mark.parametrize("width", [1, 2])
def test_greedy_steps_are_the_least_squares_optimum(width):
    g = torch.Generator().manual_seed(0)
    d, out, n = 8, 5, 300
    A = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    W = torch.randn(out, d, generator=g, dtype=torch.float64)
    lam = 0.01 * float((A.T @ A / n).diagonal().mean())
    Ht = A.T @ A / n + lam * torch.eye(d, dtype=torch.float64)
    index = torch.arange(d).view(d // width, width)
    units = index.shape[0]
    scores = _greedy(W, torch.linalg.inv(Ht), index, steps=2)
    order = scores.argsort()
    removed: list[int] = []
    base = _lstsq_error(A, W, torch.ones(d, dtype=torch.bool), lam)  # 0: nothing removed
    for step in range(2):
        errors = {}
        for u in set(range(units)) - set(removed):
            keep = torch.ones(d, dtype=torch.bool)
            keep[index[[*removed, u]].flatten()] = False
            errors[u] = _lstsq_error(A, W, keep, lam) - base
        best = min(errors, key=errors.get)
        assert int(order[step]) == best  # the greedy pick is the brute-force optimum
        assert float(scores[best]) == pytest.approx(errors[best], rel=1e-6)  # cumulative error, exact
        removed.append(best)
    assert (scores[order[2:]] > scores[order[1]]).all()  # units never removed score above the removed ones


def test_needs_reconstruction_and_linear_units():
    with pytest.raises(ConfigError, match="reconstruction.method='weights'"):  # at construction
        PruningConfig(criterion="obs", granularity="neurons", sparsity=0.25, reconstruction={"method": "none"})
    with pytest.raises(ConfigError, match="obs"):
        prune(tiny_model("llama"), PruningConfig(criterion="obs", granularity="weights",
                                                 reconstruction={"method": "weights"}),
              calibration("llama", 4))


@pytest.mark.parametrize("granularity", ["neurons", "heads"])
def test_prune_with_obs_is_smaller_and_reloads(tmp_path, granularity):
    import transformers

    model = tiny_model("llama")
    cfg = PruningConfig(criterion="obs", granularity=granularity,
                        sparsity=0.5 if granularity == "neurons" else 1 / 3, reconstruction={"method": "weights"},
                        calibration={"num_samples": 8, "batch_size": 4})
    result = prune(model, cfg, calibration("llama", 8), progress=False)
    assert result.report.params_after < result.report.params_before
    assert result.report.reconstruction["layers"]
    result.save_pretrained(tmp_path / "out")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    x = torch.randint(0, again.config.vocab_size, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, result.model(x).logits)


def test_obs_beats_magnitude_on_layer_error():
    """Same sparsity, both refit: obs's choice leaves no more output error in any refit layer than magnitude's."""
    errors = {}
    for crit in ("obs", "magnitude"):
        model = tiny_model("llama")
        cfg = PruningConfig(criterion=crit, granularity="neurons", sparsity=0.5,
                            reconstruction={"method": "weights"}, calibration={"num_samples": 8, "batch_size": 4})
        rep = prune(model, cfg, calibration("llama", 8), progress=False).report
        errors[crit] = {f["name"]: f["error_after"] for f in rep.reconstruction["layers"]}
    first = next(iter(sorted(errors["obs"])))  # block 0 sees the same (dense) inputs under both criteria
    assert first.endswith("layers.0.mlp.down_proj")
    assert errors["obs"][first] <= errors["magnitude"][first] * (1 + 1e-6)
