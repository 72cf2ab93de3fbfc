"""Weight reconstruction after selection (hfprune extension, after SparseGPT's layer-wise least squares, Frantar & Alistarh 2023): refit the kept weights of each
layer so that it reproduces the unpruned layer's output on the calibration inputs. The masks do not change.

With ``a`` a layer input, the statistics are ``H = sum a a^T``, ``sum a`` and the count, accumulated by matrix
products, one set per *distinct* input tensor (q/k/v share one, gate/up share one, and so do their
factorisations). ``Ht = H/n + lambda I`` (``lambda`` = ``damp`` x the mean diagonal, as in SparseGPT) is the
dampened second moment; with a bias in the fit the covariance ``S = H/n - mu mu^T`` replaces it.

- Removed input units (FFN neurons into ``down_proj``, heads into ``o_proj``), kept columns K of every row:
  ``W'_K = W Ht_{:,K} Ht_KK^-1`` (least squares; the damping pulls ``W'_K`` toward ``W_K``); with a bias,
  ``S`` for ``H`` and ``b' = b + (W - W') mu``.
- Unstructured / N:M masks (row i keeps K_i): ``method="obs"`` (default) is SparseGPT's column-by-column
  optimal-brain-surgeon update through the upper Cholesky factor of ``Ht^-1`` with lazy block updates, the
  criterion's mask imposed instead of chosen (Frantar & Alistarh 2023); ``method="exact"`` solves
  ``Ht_{K_i K_i} w'_{K_i} = (Ht w)_{K_i}`` per row (batched Cholesky solves; exact, about out x |K|^3 / 3 flops
  per layer against OBS's in^3: for small layers). OBS is the default because it is one to two orders of
  magnitude cheaper on wide layers (46x on a SmolLM2 block); the exact solve removes 1.3-1.8x as much of the
  masking error (measured in docs/benchmarks.md). ``cg_steps`` conjugate-gradient steps after OBS
  (`refine_rows_cg`, all rows at once, one ``[out, in] x [in, in]`` product per step) reach the exact solve's error
  within about 10-30 steps at a fraction of its cost (measured: docs/benchmarks.md).
- A layer whose fit comes out worse on the calibration statistics than plain masking (possible for OBS, whose
  sequential updates are not the row optimum) keeps the masked weights; the report says so.

Driver (`reconstruct`): block by block on cached block inputs (`hfprune.calibration.sequential`). With
``sequential=True`` block k's statistics come from blocks 0..k-1 already pruned and refit (two passes per block:
statistics, then the refit block's outputs); ``sequential=False`` feeds every block the dense model's inputs
(one pass). Sequential fits aim at each layer's own unpruned output on the inputs it now receives
(``target="layer"``, the default) or at the dense model's output (``target="dense"``, `dense_target`: three
passes per block, the dense block inputs cached beside the pruned ones). Layers outside the blocks are only masked.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration.offload import Offload, residency, to_device
from ..calibration.sequential import block_of, capture_block_inputs, find_blocks, release_memory
from ..steps.compaction import add_bias
from ..errors import CalibrationError, ConfigError
from .least_squares import (Factor, GramStats, InputStatistics, dense_target, make_factor, output_energy, output_error,
                            refine_rows_cg, refit_columns, refit_rows_exact, refit_rows_obs)
from ..steps.masks import apply_unit_masks, consumer_layers, removed_columns
from ..structure import Layer, UnitGroup

METHODS = ("obs", "exact")
TARGETS = ("dense", "layer")


# --- report ---------------------------------------------------------------------------------------------------------
@dataclass
class LayerFit:
    """One refit layer: relative output error on the calibration inputs before (masking only) and after."""

    name: str
    kind: str  # "rows" (unstructured / N:M) or "columns" (removed input units)
    method: str
    error_before: float
    error_after: float
    damp: float  # absolute lambda added to the diagonal
    rank_deficient: bool  # H (or S) was singular without damping: dead or duplicated inputs
    dead_inputs: int
    bias: bool  # the bias was fitted jointly
    reverted: bool = False  # the fit was worse than masking on the statistics; masked weights kept


@dataclass
class ReconstructionReport:
    sequential: bool
    damp: float
    method: str
    target: str = "layer"  # "layer": each layer's own output on its pruned inputs; "dense": the dense model's
    seconds: float = 0.0
    layers: list[LayerFit] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # layers outside the blocks: masked, not refit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def rank_deficient(self) -> list[str]:
        return [l.name for l in self.layers if l.rank_deficient]


# --- driver ---------------------------------------------------------------------------------------------------------
def _plan(layers: dict[str, Layer], masks: dict[str, torch.Tensor], groups: list[UnitGroup] | None
          ) -> dict[str, tuple[str, torch.Tensor]]:
    """Per layer of ``layers`` to refit: ("rows", [out, in] keep mask) or ("columns", [in] kept columns)."""
    plan: dict[str, tuple[str, torch.Tensor]] = {}
    if groups is None:
        for n in layers:
            m = masks[n] if n in masks else None
            if m is not None and not m.all():
                plan[n] = ("rows", m.bool().cpu())
        return plan
    for n in consumer_layers(layers, groups):
        removed = removed_columns(layers[n], groups, masks)
        if removed is not None and removed.any():
            plan[n] = ("columns", ~removed[0])
    return plan


class BlockChooser(Protocol):
    """Masks decided block by block inside the refit pass (`hfprune.steps.scoring.BlockSelector`)."""

    observed: dict[int, list[str]]  # per block, the layers whose statistics the choice reads
    measured: dict[int, list[str]]  # per block, the layers whose inputs protection measures
    selection: Any  # .masks: per layer or group, filled block by block

    def watch(self, i: int) -> list[Any]: ...

    def decide_block(self, i: int) -> None: ...

    def finish(self) -> Any: ...


def _fit_layer(layer: Layer, how: str, keep: torch.Tensor, f: Factor, st: GramStats, method: str, bias: bool,
               cg_steps: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, LayerFit]:
    W = layer.weight_matrix().detach()
    keep = keep.to(W.device)
    Wd = W.double()
    target = dense_target(Wd, f, st, bias) if st.paired else Wd
    keep_full = keep.expand(W.shape[0], -1) if how == "columns" else keep
    if how == "columns":
        Wn = refit_columns(target, keep, f)
    elif method == "exact":
        Wn = refit_rows_exact(target, keep_full, f)
    else:
        Wn = refit_rows_obs(target, keep_full, f)
        if cg_steps:
            Wn = refine_rows_cg(target, Wn, keep_full, f, cg_steps)
            method = f"obs+cg{cg_steps}"
    mu = st.mean()
    D0 = -Wd * (~keep_full).to(Wd.device)  # plain masking
    D1 = Wn - Wd
    delta = None
    if bias:  # the optimal bias change for these weights: minus the mean output difference
        delta = -(D1 @ mu) - (Wd @ st.shift_moments(False)[2] if st.paired else 0)
    before, after = output_error(D0, None, Wd, st), output_error(D1, delta, Wd, st)
    ref = output_energy(Wd, st)
    fit = LayerFit(layer.name, how, "lstsq" if how == "columns" else method, before / ref, after / ref, f.lam,
                   f.rank_deficient, f.dead, bias)
    if after > before:
        fit.reverted, fit.error_after, fit.bias = True, before / ref, False
        return D0.new_zeros(0), None, fit
    return Wn.to(W.dtype), delta, fit  # held in the weights' dtype until the block is written


def reconstruct(model: nn.Module, layers: dict[str, Layer], masks: dict[str, torch.Tensor],
                batches: list[Any], *, groups: list[UnitGroup] | None = None, damp: float = 0.01,
                sequential: bool = True, target: str = "layer", method: str = "obs", cg_steps: int = 0,
                fit_bias: bool | set[str] = False, adapter: Any = None, progress: bool = False,
                offload: Offload = Offload(), chooser: BlockChooser | None = None) -> ReconstructionReport:
    """Refit the kept weights of every masked layer in place (masks unchanged), block by block; see the module.

    ``masks``: per layer ``[out, in]`` keep masks (``groups=None``) or per group ``[units]`` keep masks. After the
    call the removed weights (unstructured) or units (structured: producer rows, consumer columns) are zero, so
    compaction only slices. ``fit_bias``: True, or a set of layer names, whose bias is fitted jointly (covariance
    instead of H; created, with the family's bias flag, where the layer has none: pass ``adapter``); layers that
    already have a bias always get it fitted. Use it in place of elimination-compensation's bias compensation.
    ``cg_steps``: after OBS, that many conjugate-gradient steps toward the exact per-row optimum
    (`refine_rows_cg`; unstructured and N:M only, 0 = OBS alone). ``target`` (with ``sequential``): "layer" fits
    each layer to the unpruned layer's output on the inputs it now receives (SparseGPT's choice), "dense" to the
    *dense* model's output on the dense inputs (`dense_target`; the errors of the blocks before are corrected too,
    but on SmolLM2 FFN neurons it generalised worse: 54.5 against 49.8). ``offload``: the blocks wait in CPU
    memory or on disk and each is refit on the execution device (`hfprune.calibration.offload`). ``chooser``
    (one pass, ``calibration.mode='one_pass'``): ``masks`` is ignored; block i's criterion statistics are
    gathered in the same forward as its refit statistics, on the inputs the pruned and refit blocks before it give,
    and the chooser decides block i's masks before block i is refit.
    """
    if method not in METHODS:
        raise ConfigError(f"reconstruction method {method!r} is not one of {', '.join(METHODS)}.")
    if not isinstance(damp, (int, float)) or not math.isfinite(damp) or damp < 0:
        raise ConfigError(f"reconstruction damp={damp!r}: use a number >= 0 (a fraction of the mean diagonal).")
    if not isinstance(cg_steps, int) or isinstance(cg_steps, bool) or cg_steps < 0:
        raise ConfigError(f"reconstruction cg_steps={cg_steps!r}: use an integer >= 0 (0 = OBS alone).")
    if target not in TARGETS:
        raise ConfigError(f"reconstruction target {target!r} is not one of {', '.join(TARGETS)}.")
    if not batches:
        raise CalibrationError("Reconstruction needs calibration batches (the layer inputs it refits on).")
    t0 = time.perf_counter()
    paired = sequential and target == "dense"
    report = ReconstructionReport(sequential, float(damp), method, target if sequential else "dense")
    if chooser is not None:
        masks = chooser.selection.masks  # filled block by block, before each block's refit
    prefix, blocks = find_blocks(model)
    candidates = consumer_layers(layers, groups) if chooser is not None else list(_plan(layers, masks, groups))
    where = block_of(candidates, prefix, len(blocks))
    group_block: dict[str, set] = {}
    done: set[str] = set()
    if groups is not None:
        gw = block_of([c.layer for g in groups for c in g.couplings], prefix, len(blocks))
        group_block = {g.name: {gw[c.layer] for c in g.couplings} for g in groups}
    last = max((i for i in where.values() if i is not None), default=-1)
    if chooser is not None:
        last = max([last, *chooser.observed, *chooser.measured])
    plan: dict[str, tuple[str, torch.Tensor]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), residency(blocks, offload) as resident:
            cache = capture_block_inputs(model, blocks[0], batches) if last >= 0 else []
            if resident is not None:
                cache = to_device(cache, resident.device)
            dense = [[e[0].clone(), *e[1:]] for e in cache] if paired else None  # the dense model's block inputs
            for i in tqdm(range(last + 1), desc="reconstructing, block by block", disable=not progress, leave=False):
                if resident is not None:
                    resident.onload(i)
                here_layers = {n: layers[n] for n in candidates if where[n] == i}
                handles = chooser.watch(i) if chooser is not None else []
                hooks = InputStatistics(here_layers, paired)
                try:
                    for b, entry in enumerate(cache):
                        if dense is not None:  # block i is still dense: its output is the next dense input
                            hooks.recording = True
                            _run_block(blocks[i], dense[b], write=True)
                            hooks.recording = False
                        hooks.next_call()
                        _run_block(blocks[i], entry, write=not sequential)
                finally:
                    hooks.remove()
                    for h in handles:
                        h.remove()
                if chooser is not None:  # one pass: this block's masks from the inputs it now receives
                    chooser.decide_block(i)
                decided = [g for g in groups if g.name in masks] if groups is not None else None
                block_plan = _plan(here_layers, masks, decided)
                plan.update(block_plan)
                names = list(block_plan)
                seen = {}
                for n in names:
                    st = hooks.stats.get(n)
                    if st is None:
                        raise CalibrationError(f"Reconstruction: layer {n} was not called by block {i}.")
                    seen.setdefault(id(st), (st, []))[1].append(n)
                for st, ns in seen.values():
                    st.check(ns)
                fits = {}
                for st, ns in seen.values():  # one distinct input at a time: its factors go before the next's
                    factors: dict[bool, Factor] = {}
                    for n in ns:
                        bias = layers[n].bias is not None or fit_bias is True or (
                            isinstance(fit_bias, set) and n in fit_bias)
                        if bias not in factors:
                            factors[bias] = make_factor(st, damp, bias)
                        how, keep = block_plan[n]
                        fits[n] = _fit_layer(layers[n], how, keep, factors[bias], st, method, bias, cg_steps)
                    del factors
                for n in names:  # write only once the whole block fitted, in the plan's order
                    Wn, delta, fit = fits[n]
                    _write(model, layers[n], Wn, delta, block_plan[n], adapter)
                    report.layers.append(fit)
                if groups is not None:
                    here = [g for g in decided if group_block[g.name] == {i}]
                    apply_unit_masks(model, here, masks)
                    done.update(g.name for g in here)
                del fits, hooks, seen
                if sequential and i < last:
                    for entry in cache:
                        _run_block(blocks[i], entry, write=True)
                if resident is not None:
                    resident.offload(i, changed=bool(names) or groups is not None)
                release_memory()
    finally:
        model.train(was_training)
    if chooser is not None:  # units no block's statistics reached; masks is the chooser's, now complete
        masks = chooser.finish()[0].masks
    outside = [n for n in candidates if where[n] is None]
    plan.update(_plan({n: layers[n] for n in outside}, masks, groups))
    report.skipped = sorted(n for n in outside if n in plan)
    if groups is not None:  # units not zeroed block by block (spanning blocks, or after the last refit one)
        apply_unit_masks(model, [g for g in groups if g.name not in done], masks)
    for n in report.skipped:
        if plan[n][0] == "rows":
            w = layers[n].module.weight
            w.data.mul_(layers[n].from_matrix(plan[n][1].to(w.device, w.dtype)))
    report.seconds = time.perf_counter() - t0
    return report


def _run_block(block: nn.Module, entry: list[Any], write: bool) -> None:
    hidden, args, kwargs = entry
    out = block(hidden, *args, **kwargs)
    out = out[0] if isinstance(out, (tuple, list)) else out
    if write:
        if out.shape == hidden.shape and out.dtype == hidden.dtype:
            hidden.copy_(out)
        else:
            entry[0] = out


@torch.no_grad()
def _write(model: nn.Module, layer: Layer, Wn: torch.Tensor, delta: torch.Tensor | None,
           plan: tuple[str, torch.Tensor], adapter: Any) -> None:
    w = layer.module.weight
    if Wn.numel() == 0:  # reverted: plain masking
        how, keep = plan
        keep_full = keep.expand(layer.out_features, -1) if how == "columns" else keep
        w.mul_(layer.from_matrix(keep_full.to(w.device, w.dtype)))
        return
    w.copy_(layer.from_matrix(Wn.to(w.device, w.dtype)))
    if delta is not None:
        add_bias(model, layer, delta, adapter)
