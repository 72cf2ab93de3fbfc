"""Refit a structurally compacted model to a reference model's outputs, block by block (hfprune extension).

After blocks, residual channels, heads or neurons are *removed* (the shapes changed), every kept linear layer of
every kept block is refit by least squares so that, on the inputs it now receives in the pruned model, it
reproduces what its counterpart in the reference (the model before the removal: ``dense`` below) outputs on the
reference's inputs, restricted to the rows it kept:

    W'~ = W~_rows X (H' + lambda I)^-1,   X = sum a~ a'~^T,   H' = sum a'~ a'~^T

with ``a`` the dense layer input, ``a'`` the pruned one, ``~`` a constant 1 appended when the layer has a bias (the
bias is fitted jointly, undamped) and ``lambda`` = ``damp`` x the mean diagonal of ``H'/n`` (as in SparseGPT, Frantar
& Alistarh 2023). It is the least-squares machinery of the unit axes (`hfprune.reconstruction.refit`, "dense"
target) generalised to inputs of another width, so it covers every axis at once:

- removed residual channels: readers (q/k/v, gate/up) see fewer input channels, writers (o_proj, down_proj) keep
  the rows of the kept channels;
- removed blocks: the next kept block's input projections are refit to the outputs its dense counterpart gives on
  the dense stream, which had passed through the removed blocks;
- removed heads / neurons: the consumers (o_proj, down_proj) refit their kept columns, as on the unit axes.

Blocks are refit in order on cached block inputs (`hfprune.calibration.sequential`), and inside a block in call
order, one stage per distinct input (q/k/v, then o_proj, then gate/up, then down_proj for Llama), so that each
stage is fitted on inputs produced by the already refit stages before it. The dense model's layer inputs of one
block are cached once (memory: calibration tokens x the sum of the block's distinct input widths); each stage's
pruned pass stops after its last layer. Blocks before the first change (the same weights, on the same stream)
already give the reference output: they are passed through once, not fitted. Layers outside the blocks (the LM
head, tied to the embedding on most LLMs) are not refit. A layer whose fit is worse on the calibration statistics
than its compacted weights keeps them.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..calibration.sequential import capture_block_inputs, find_blocks, release_memory
from ..errors import CalibrationError
from ..structure.layers import ORIGIN, Layer


@dataclass
class DenseFit:
    """One refit layer: relative output error against the reference layer before (compacted) and after the refit."""

    name: str
    error_before: float
    error_after: float
    reverted: bool = False


@dataclass
class DenseRefitReport:
    damp: float
    seconds: float = 0.0
    layers: list[DenseFit] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # kept layers outside the blocks: not refit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_EXACT = 1e-10  # relative error below which a compacted layer is left as it is


class _Stop(Exception):
    """Raised after a stage's last layer: the rest of the block need not run."""


class PairedGram:
    """For one distinct input: ``H' = sum a'~ a'~^T``, ``X = sum a~ a'~^T`` and ``Hd = sum a~ a~^T`` (by matrix
    products; ``~``: with the constant 1 appended, so layers with and without a bias share them). Float64: the
    inputs of an output projection after heads are removed can be ill-conditioned enough that float32 sums miss
    the least-squares optimum (measured on the tiny test models)."""

    def __init__(self, dense_dim: int, pruned_dim: int, device: torch.device) -> None:
        self.Hp = torch.zeros(pruned_dim + 1, pruned_dim + 1, dtype=torch.float64, device=device)
        self.X = torch.zeros(dense_dim + 1, pruned_dim + 1, dtype=torch.float64, device=device)
        self.Hd = torch.zeros(dense_dim + 1, dense_dim + 1, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, dense: torch.Tensor, pruned: torch.Tensor) -> None:
        if dense.shape[0] != pruned.shape[0]:
            raise CalibrationError("Dense refit: the dense and the pruned layer saw different token counts.")
        a = torch.cat([dense.double(), dense.new_ones(dense.shape[0], 1, dtype=torch.float64)], 1)
        p = torch.cat([pruned.double(), pruned.new_ones(pruned.shape[0], 1, dtype=torch.float64)], 1)
        a = a.to(self.Hp.device)
        self.Hp.addmm_(p.T, p)
        self.X.addmm_(a.T, p)
        self.Hd.addmm_(a.T, a)
        self.n += p.shape[0]


def _augmented(layer: Layer, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``[W b]`` (float64; ``b`` = 0 without a bias), optionally only ``rows``."""
    W = layer.weight_matrix().detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else W.new_zeros(W.shape[0])
    Wb = torch.cat([W, b[:, None]], 1)
    return Wb if rows is None else Wb[rows.to(Wb.device)]


def solve_dense_fit(W_dense: torch.Tensor, W_pruned: torch.Tensor, g: PairedGram, damp: float, bias: bool
                    ) -> tuple[torch.Tensor, float, float]:
    """(refit ``[W' b']``, relative error before, after) for one layer. ``W_dense``: the dense rows kept, ``[W b]``;
    ``W_pruned``: the compacted ``[W' b']``. Without a bias the constant column is left out of the fit."""
    n = g.n
    Hp, X, Hd = g.Hp / n, g.X / n, g.Hd / n
    cols = slice(None) if bias else slice(0, Hp.shape[0] - 1)
    Hs, Xs = Hp[cols, cols], X[:, cols]
    B = W_dense @ Xs  # [out, in'~]: E[y a'^T]
    diag = torch.diagonal(Hs[:-1, :-1] if bias else Hs)
    lam = damp * float(diag.mean()) if diag.numel() else 0.0
    Ht = Hs.clone()
    Ht.diagonal()[: diag.numel()] += lam  # the bias entry stays undamped
    try:
        L = torch.linalg.cholesky(Ht)
        Wn = torch.cholesky_solve(B.T, L).T
    except torch.linalg.LinAlgError:
        Wn = torch.linalg.lstsq(Ht, B.T).solution.T
    Wp = W_pruned[:, cols]
    energy = float(torch.einsum("ij,jk,ik->", W_dense, Hd, W_dense))

    def error(M: torch.Tensor) -> float:  # E||M a'~ - W a~||^2
        return float(torch.einsum("ij,jk,ik->", M, Hs, M) - 2 * torch.einsum("ij,jk,ik->", M, Xs.T, W_dense)) + energy

    ref = max(energy, 1e-30)
    if not bias:
        Wn = torch.cat([Wn, Wn.new_zeros(Wn.shape[0], 1)], 1)
    return Wn, max(error(Wp), 0.0) / ref, max(error(Wn[:, cols]), 0.0) / ref


def _tracked(block: nn.Module) -> dict[str, Layer]:
    return {n: Layer(n, m) for n, m in block.named_modules() if hasattr(m, ORIGIN)}


def _stages(block: nn.Module, layers: dict[str, Layer], entry: list[Any]) -> list[list[str]]:
    """The block's layers grouped by the input tensor they share, in call order (one forward on one batch)."""
    order: list[tuple[str, Any]] = []
    handles = [l.module.register_forward_hook(lambda m, a, o, n=n: order.append((n, a[0]))) for n, l in layers.items()]
    try:
        _run(block, entry, write=False)
    finally:
        for h in handles:
            h.remove()
    stages: list[tuple[Any, list[str]]] = []
    for name, x in order:
        for seen, names in stages:
            if seen is x:
                if name not in names:
                    names.append(name)
                break
        else:
            stages.append((x, [name]))
    return [names for _, names in stages]


def _run(block: nn.Module, entry: list[Any], write: bool) -> None:
    """Run ``block`` on one cached batch; ``write``: its output becomes the cached input. Replaced, never copied
    in place (as `hfprune.reconstruction.refit` does): the stage inputs recorded by `_dense_inputs` are kept
    until their stage is fitted, and a block whose first layer reads the stream itself (post-norm BERT) would
    otherwise see its recorded input overwritten."""
    hidden, args, kwargs = entry
    out = block(hidden, *args, **kwargs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    if write:
        entry[0] = out


def _dense_inputs(block: nn.Module, names: list[list[str]], cache: list[list[Any]]) -> list[list[torch.Tensor]]:
    """Per stage, per batch: the dense block's input to that stage (flattened to ``[tokens, in]``); the block's
    output replaces its input in ``cache`` (the next dense block's input)."""
    firsts = [stage[0] for stage in names]
    out: list[list[torch.Tensor]] = [[] for _ in firsts]
    handles = [block.get_submodule(n).register_forward_hook(
        lambda m, a, o, s=s: out[s].append(a[0].detach().reshape(-1, a[0].shape[-1]))) for s, n in enumerate(firsts)]
    try:
        for entry in cache:
            _run(block, entry, write=True)
    finally:
        for h in handles:
            h.remove()
    return out


@torch.no_grad()
def refit_to_dense(dense: nn.Module, pruned: nn.Module, removed_blocks: list[int], batches: list[Any],
                   damp: float = 0.01, progress: bool = False) -> DenseRefitReport:
    """Refit every kept linear layer of ``pruned`` (compacted under `track_origins`) to ``dense``, block by block;
    see the module. ``removed_blocks``: indices of the dense blocks that ``pruned`` no longer has."""
    from tqdm.auto import tqdm

    if not batches:
        raise CalibrationError("Reconstruction needs calibration batches (the layer inputs it refits on).")
    t0 = time.perf_counter()
    report = DenseRefitReport(float(damp))
    _, dblocks = find_blocks(dense)
    prefix, pblocks = find_blocks(pruned)
    kept = [i for i in range(len(dblocks)) if i not in set(removed_blocks)]
    if len(kept) != len(pblocks):
        raise CalibrationError(f"Dense refit: {len(pblocks)} pruned blocks for {len(kept)} kept dense blocks.")
    report.skipped = sorted(n for n, m in pruned.named_modules() if hasattr(m, ORIGIN)
                            and not n.startswith(prefix + "."))
    was = dense.training, pruned.training
    dense.eval(), pruned.eval()
    try:
        dcache = capture_block_inputs(dense, dblocks[0], batches)
        pcache = capture_block_inputs(pruned, pblocks[0], batches)
        same = all(torch.equal(p[0], q[0]) for p, q in zip(pcache, dcache))  # the streams have not diverged yet
        d = 0
        for j, i in enumerate(tqdm(kept, desc="refitting to the reference model, block by block",
                                   disable=not progress, leave=False)):
            for k in range(d, i):  # the dense stream passes through the removed blocks
                for entry in dcache:
                    _run(dblocks[k], entry, write=True)
            same = same and i == d and _same_weights(dblocks[i], pblocks[j])
            layers = _tracked(pblocks[j])
            if same:  # the block already gives the reference output on the reference input: nothing to fit
                report.layers += [DenseFit(f"{prefix}.{j}.{n}", 0.0, 0.0) for n in layers]
                for p_entry, d_entry in zip(pcache, dcache):  # one forward serves both streams (`_run` replaces
                    _run(pblocks[j], p_entry, write=True)        # the hidden state, never writes into it)
                    d_entry[0] = p_entry[0]
                d = i + 1
                continue
            stages = _stages(pblocks[j], layers, pcache[0])
            dense_in = _dense_inputs(dblocks[i], stages, dcache)
            for s, names in enumerate(stages):
                _refit_stage(report, f"{prefix}.{j}", dblocks[i], pblocks[j], layers, names, dense_in[s], pcache,
                             damp)
                dense_in[s] = []
            for entry in pcache:
                _run(pblocks[j], entry, write=True)
            d = i + 1
            release_memory()
    finally:
        dense.train(was[0])
        pruned.train(was[1])
    report.seconds = time.perf_counter() - t0
    return report


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two blocks hold the same parameters (names, shapes and values)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(pa[k].shape == pb[k].shape and torch.equal(pa[k], pb[k]) for k in pa)


def _refit_stage(report: DenseRefitReport, where: str, dblock: nn.Module, pblock: nn.Module,
                 layers: dict[str, Layer], names: list[str], dense_in: list[torch.Tensor], pcache: list[list[Any]],
                 damp: float) -> None:
    """Accumulate one stage's paired statistics (the pruned block stops after the stage's layers) and refit them."""
    first = layers[names[0]]
    g: PairedGram | None = None
    batch = iter(dense_in)

    def hook(m: nn.Module, a: tuple, o: Any) -> None:
        nonlocal g
        x = first.input_matrix(a[0].detach())
        ref = next(batch)
        if g is None:
            g = PairedGram(ref.shape[-1], x.shape[-1], x.device)
        g.add(ref, x)
        raise _Stop

    last = layers[names[-1]].module
    seen: set[str] = set()

    def note(m: nn.Module, a: tuple, o: Any, n: str) -> None:
        seen.add(n)
        if m is last and len(seen) == len(names):
            hook(m, a, o)

    handles = [layers[n].module.register_forward_hook(lambda m, a, o, n=n: note(m, a, o, n)) for n in names]
    try:
        for entry in pcache:
            seen.clear()
            try:
                _run(pblock, entry, write=False)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    if g is None or g.n == 0:
        raise CalibrationError(f"Dense refit of {where}: the layers {names} were not called.")
    if not all(torch.isfinite(t).all() for t in (g.Hp, g.X, g.Hd)):
        raise CalibrationError(f"Reconstruction of {where} ({', '.join(names)}): the input statistics hold NaN or "
                               "inf (overflowing activations, or non-finite weights/data); the blocks before it are "
                               "already refit, so discard this model. Use float32 weights and check the "
                               "calibration data, or set reconstruction.method='none'.")
    for n in names:
        layer = layers[n]
        rows = getattr(layer.module, ORIGIN)
        dlayer = Layer(n, dblock.get_submodule(n))
        bias = layer.bias is not None
        Wn, before, after = solve_dense_fit(_augmented(dlayer, rows), _augmented(layer), g, damp, bias)
        fit = DenseFit(f"{where}.{n}", before, after)
        if before <= _EXACT:  # the layer already reproduces the reference one (nothing before it changed)
            fit.error_after = before
        elif not math.isfinite(after) or not torch.isfinite(Wn).all() or after > before:  # keep the compacted
            fit.reverted, fit.error_after = True, before
        else:
            w = layer.module.weight
            w.copy_(layer.from_matrix(Wn[:, :-1].to(w.device, w.dtype)))
            if bias:
                layer.bias.copy_(Wn[:, -1].to(layer.bias.device, layer.bias.dtype))
        report.layers.append(fit)
