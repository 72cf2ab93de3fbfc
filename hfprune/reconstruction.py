"""Weight reconstruction after selection (hfprune extension; METHODS.md section 4): refit the kept weights of each
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
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration.sequential import block_of, capture_block_inputs, find_blocks, release_memory
from .compaction import add_bias
from .errors import CalibrationError, ConfigError
from .masks import apply_unit_masks, removed_columns
from .structure import Layer, UnitGroup

METHODS = ("obs", "exact")
TARGETS = ("dense", "layer")


# --- statistics -----------------------------------------------------------------------------------------------------
class GramStats:
    """``H = sum a a^T`` (float32, by matrix products), ``sum a`` (float64) and the sample count of one input.

    Paired (``target="dense"``): ``a`` is the input the layer receives in the pruned model and ``d = a - a0`` its
    difference from the dense model's input ``a0``; then also ``P = sum a d^T``, ``Q = sum d d^T`` and
    ``sum d``, from which the dense target's fit and exact output errors follow (no cancellation: both vanish
    when the inputs agree)."""

    def __init__(self, dim: int, device: torch.device, paired: bool = False) -> None:
        self.H = torch.zeros(dim, dim, dtype=torch.float32, device=device)
        self.s = torch.zeros(dim, dtype=torch.float64, device=device)
        self.n = 0
        self.P = torch.zeros(dim, dim, dtype=torch.float32, device=device) if paired else None
        self.Q = torch.zeros(dim, dim, dtype=torch.float32, device=device) if paired else None
        self.sd = torch.zeros(dim, dtype=torch.float64, device=device) if paired else None

    @property
    def paired(self) -> bool:
        return self.P is not None

    def add(self, a: torch.Tensor, dense: torch.Tensor | None = None) -> None:
        a = a.reshape(-1, a.shape[-1]).float()
        self.H.addmm_(a.T, a)
        self.s += a.sum(dim=0, dtype=torch.float64)
        self.n += a.shape[0]
        if self.paired:
            d = a - dense.reshape(-1, dense.shape[-1]).float()
            self.P.addmm_(a.T, d)
            self.Q.addmm_(d.T, d)
            self.sd += d.sum(dim=0, dtype=torch.float64)

    def check(self, names: list[str]) -> None:
        if self.n == 0:
            raise CalibrationError(f"Reconstruction of {names}: no calibration input reached these layers.")
        parts = [self.H, self.s] + ([self.P, self.Q, self.sd] if self.paired else [])
        if not all(torch.isfinite(t).all() for t in parts):
            raise CalibrationError(f"Reconstruction of {names}: the input statistics hold NaN or inf (overflowing "
                                   "activations, or non-finite weights/data); nothing was written. Use float32 "
                                   "weights and check the calibration data.")

    def moments(self, centered: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(second moment ``H/n``, or covariance ``S`` when ``centered``; the mean ``mu``), float64."""
        mu = self.s / self.n
        m = self.H.double() / self.n
        return (m - torch.outer(mu, mu) if centered else m), mu

    def shift_moments(self, centered: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Paired only: (``E[a d^T]``, ``E[d d^T]``, mean of ``d``), float64; centred (covariances) if asked."""
        mu, md = self.s / self.n, self.sd / self.n
        P, Q = self.P.double() / self.n, self.Q.double() / self.n
        if centered:
            P, Q = P - torch.outer(mu, md), Q - torch.outer(md, md)
        return P, Q, md


class InputStatistics:
    """Forward hooks giving every layer one `GramStats` per distinct input tensor: layers fed the same tensor
    object (q/k/v, gate/up) share it and it is accumulated once per forward call.

    Paired (dense target): before each pruned-model call, the block runs once on the dense model's input with
    `recording` on; the hooks keep each layer's dense input of that call, and the next (pruned) call pairs with it.
    """

    def __init__(self, layers: dict[str, Layer], paired: bool = False) -> None:
        self.layers = layers
        self.paired = paired
        self.recording = False
        self.stats: dict[str, GramStats] = {}
        self._seen: list[tuple[torch.Tensor, GramStats]] = []  # this call's inputs, held so addresses stay unique
        self._dense: dict[str, list[torch.Tensor]] = {}  # paired: the dense call's inputs, per layer
        self._handles = [l.module.register_forward_hook(self._hook(n)) for n, l in layers.items()]

    def _hook(self, name: str):
        def fn(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0]  # the object itself (``detach()`` would make a new one per call)
            if self.recording:
                self._dense.setdefault(name, []).append(self.layers[name].input_matrix(x.detach()))
                return
            dense = self._dense[name].pop(0) if self.paired else None
            for seen, st in self._seen:
                if seen is x:
                    self.stats.setdefault(name, st)
                    return
            st = self.stats.get(name)
            if st is None:
                st = self.stats[name] = GramStats(x.shape[-1], x.device, self.paired)
            if any(s is st for _, s in self._seen):  # shared with a layer already fed this call
                return
            st.add(self.layers[name].input_matrix(x.detach()), dense)
            self._seen.append((x, st))
        return fn

    def next_call(self) -> None:
        self._seen.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._seen.clear()
        self._dense.clear()


# --- solvers --------------------------------------------------------------------------------------------------------
@dataclass
class Factor:
    """Dampened statistics of one distinct input and its damping facts (shared by the layers it feeds)."""

    Ht: torch.Tensor  # [in, in] float64, dampened
    mu: torch.Tensor  # [in] float64
    lam: float
    rank_deficient: bool
    dead: int  # inputs that are always zero (centered: constant)
    _chol: torch.Tensor | None = None
    _hinv_u: torch.Tensor | None = None

    def cholesky(self) -> torch.Tensor:
        """Lower Cholesky factor of ``Ht``, computed once per input."""
        if self._chol is None:
            self._chol = _cholesky(self.Ht)
        return self._chol

    def hinv_upper(self) -> torch.Tensor:
        """Upper Cholesky factor of ``Ht^-1`` (SparseGPT's ``Hinv``), computed once per input."""
        if self._hinv_u is None:
            self._hinv_u = torch.linalg.cholesky(torch.cholesky_inverse(self.cholesky()), upper=True)
        return self._hinv_u


def _cholesky(m: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(m)
    if int(info) != 0:  # numerically indefinite even after damping: add more, as SparseGPT users do by hand
        bump = 1e-6 * float(m.diagonal().mean().clamp(min=1e-12))
        for _ in range(8):
            m = m + bump * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
            L, info = torch.linalg.cholesky_ex(m)
            if int(info) == 0:
                break
            bump *= 10
        else:
            raise CalibrationError("Reconstruction: the input statistics are not positive definite even after "
                                   "damping; raise reconstruction_damp.")
    return L


def make_factor(st: GramStats, damp: float, centered: bool) -> Factor:
    """Dampen ``H/n`` (or ``S``) by ``damp`` x its mean diagonal and note whether it was singular without it."""
    m, mu = st.moments(centered)
    diag = m.diagonal()
    dead = int((diag <= 1e-12 * float(diag.abs().max().clamp(min=1e-30))).sum())
    rank_deficient = dead > 0 or int(torch.linalg.cholesky_ex(m)[1]) != 0
    lam = damp * float(diag.mean().clamp(min=1e-12))
    if lam == 0 and rank_deficient:
        lam = 1e-8 * float(diag.mean().clamp(min=1e-12))  # damp=0 asked, but a singular H has no solution
    return Factor(m + lam * torch.eye(m.shape[0], dtype=m.dtype, device=m.device), mu, lam, rank_deficient, dead)


def refit_columns(W: torch.Tensor, keep_cols: torch.Tensor, f: Factor) -> torch.Tensor:
    """Removed input units: ``W'_K = W Ht_{:,K} Ht_KK^-1``, zero elsewhere; ``[out, in]`` float64."""
    Wd = W.double()
    K = keep_cols.nonzero().flatten()
    L = _cholesky(f.Ht[K][:, K])
    rhs = f.Ht[K] @ Wd.T  # [|K|, out]
    out = torch.zeros_like(Wd)
    out[:, K] = torch.cholesky_solve(rhs, L).T
    return out


def refit_rows_exact(W: torch.Tensor, keep: torch.Tensor, f: Factor, chunk: int = 16) -> torch.Tensor:
    """Per-row least squares ``Ht_{K_i K_i} w'_{K_i} = (Ht w_i)_{K_i}``; rows padded to the largest |K_i| with an
    identity block so that they solve in batches."""
    Wd = W.double()
    out = torch.zeros_like(Wd)
    rhs_full = Wd @ f.Ht  # [out, in]: (Ht w_i)^T per row (Ht symmetric)
    counts = keep.sum(dim=1)
    kmax = int(counts.max())
    if kmax == 0:
        return out
    order = torch.argsort(~keep.to(torch.uint8), dim=1, stable=True)[:, :kmax]  # kept indices first, in order
    valid = torch.arange(kmax, device=keep.device)[None] < counts[:, None]
    for r0 in range(0, W.shape[0], chunk):
        idx, v = order[r0:r0 + chunk].to(W.device), valid[r0:r0 + chunk].to(W.device)
        A = f.Ht[idx[:, :, None], idx[:, None, :]]
        pair = v[:, :, None] & v[:, None, :]
        eye = torch.eye(kmax, dtype=A.dtype, device=A.device).expand_as(A)
        A = torch.where(pair, A, eye * (~v[:, :, None]))
        b = torch.where(v, torch.gather(rhs_full[r0:r0 + chunk], 1, idx), torch.zeros((), dtype=A.dtype))
        x = torch.cholesky_solve(b.unsqueeze(-1), torch.linalg.cholesky(A)).squeeze(-1)
        out[r0:r0 + chunk].scatter_(1, idx, torch.where(v, x, torch.zeros((), dtype=x.dtype)))
    return out * keep.to(out.dtype).to(out.device)


def refit_rows_obs(W: torch.Tensor, keep: torch.Tensor, f: Factor, blocksize: int = 128) -> torch.Tensor:
    """SparseGPT's optimal-brain-surgeon sweep with a given mask: column by column, each removed weight's error
    ``(w - q) / Hinv_jj`` is pushed onto the later columns through row j of the upper factor of ``Ht^-1``; the
    updates of a block of columns reach the rest of the matrix in one product (lazy batch update)."""
    Hinv = f.hinv_upper().float()
    Wf = W.detach().float().clone()
    M = keep.to(Wf.device)
    cols = Wf.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = Wf[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        H1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            q = w * M[:, i1 + i]
            err = (w - q) / H1[i, i]
            W1[:, i:] -= err.unsqueeze(1) @ H1[i, i:].unsqueeze(0)
            W1[:, i] = q
            Err1[:, i] = err
        Wf[:, i1:i2] = W1
        Wf[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return (Wf * M).double()


def refine_rows_cg(W: torch.Tensor, Wn: torch.Tensor, keep: torch.Tensor, f: Factor, steps: int) -> torch.Tensor:
    """Continue from ``Wn`` (e.g. OBS's solution) toward the exact per-row optimum by ``steps`` iterations of
    Jacobi-preconditioned conjugate gradients on every row at once (hfprune extension).

    Row i minimises ``(w'_i - w_i)^T Ht (w'_i - w_i)`` over its kept entries ``K_i``; the rows are independent,
    so one ``[out, in] x [in, in]`` product per iteration serves them all, each row with its own step sizes.
    CG never increases a row's objective, so the result is at least as good as ``Wn`` on the statistics, and
    after ``max |K_i|`` steps it is the exact solve (in exact arithmetic): OBS's fixed-mask sweep cannot move a
    weight to compensate for removed weights in *earlier* columns, these iterations can."""
    Ht = f.Ht.float()
    M = keep.to(Ht.device, torch.float32)
    Wd = W.to(Ht.device, torch.float32)
    X = Wn.to(Ht.device, torch.float32) * M
    dinv = 1.0 / Ht.diagonal().clamp(min=1e-30)
    R = ((Wd - X) @ Ht) * M  # minus the gradient, restricted to the kept entries
    Z = R * dinv
    P = Z.clone()
    rz = (R * Z).sum(dim=1)
    for _ in range(steps):
        Q = (P @ Ht) * M
        pq = (P * Q).sum(dim=1)
        alpha = torch.where(pq > 0, rz / pq.clamp(min=1e-30), torch.zeros_like(pq))
        X += alpha[:, None] * P
        R -= alpha[:, None] * Q
        Z = R * dinv
        rz_new = (R * Z).sum(dim=1)
        beta = torch.where(rz > 0, rz_new / rz.clamp(min=1e-30), torch.zeros_like(rz))
        P = Z + beta[:, None] * P
        rz = rz_new
    return X.double() * keep.to(X.device, torch.float64)


def dense_target(W: torch.Tensor, f: Factor, st: GramStats, centered: bool) -> torch.Tensor:
    """Paired statistics: the full-width weights ``W~`` whose output on the pruned model's input ``a`` best
    reproduces the dense layer's output ``W a0`` (hfprune extension, in the manner of GPTAQ's asymmetric
    calibration): ``W~ = W - W P^T Ht^-1`` with ``P = E[a d^T]``, ``d = a - a0`` (covariances when ``centered``).
    Then ``E||W' a - W a0||^2 = tr((W' - W~) H (W' - W~)^T) + const``, so any masked solver given ``W~`` in place of
    ``W`` minimises the error against the dense output; the damping still pulls toward ``W``."""
    P, _, _ = st.shift_moments(centered)
    Wd = W.double()
    return Wd - torch.cholesky_solve(P @ Wd.T, f.cholesky()).T


def output_error(D: torch.Tensor, delta: torch.Tensor | None, W: torch.Tensor, st: GramStats) -> float:
    """``E||D a + W d + delta||^2`` from the statistics (never the samples themselves): the error of the refit
    layer ``W + D`` (and bias change ``delta``) on the pruned model's inputs ``a`` against the dense layer on the
    dense inputs ``a0 = a - d`` (``d = 0`` unless the statistics are paired)."""
    m, mu = st.moments(False)
    err = float(((D @ m) * D).sum())
    shift = D.new_zeros(D.shape[0])
    if st.paired:
        P, Q, md = st.shift_moments(False)
        err += 2 * float(((D @ P) * W).sum()) + float(((W @ Q) * W).sum())
        shift = W @ md
    if delta is not None:
        err += float(delta @ delta) + 2 * float(delta @ (D @ mu + shift))
    return max(err, 0.0)


def output_energy(W: torch.Tensor, st: GramStats) -> float:
    """``E||W a0||^2``, the dense layer's output energy (the reference of the relative errors)."""
    m, _ = st.moments(False)
    if st.paired:
        P, Q, _ = st.shift_moments(False)
        m = m - P - P.T + Q
    return max(float(((W @ m) * W).sum()), 1e-30)


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
    """Per layer to refit: ("rows", [out, in] keep mask) or ("columns", [in] kept columns)."""
    plan: dict[str, tuple[str, torch.Tensor]] = {}
    if groups is None:
        for n, m in masks.items():
            if not m.all():
                plan[n] = ("rows", m.bool().cpu())
        return plan
    for n in sorted({c.layer for g in groups for c in g.consumers if c.layer in layers}):
        removed = removed_columns(layers[n], groups, masks)
        if removed is not None and removed.any():
            plan[n] = ("columns", ~removed[0])
    return plan


def _fit_layer(layer: Layer, how: str, keep: torch.Tensor, f: Factor, st: GramStats, method: str, bias: bool,
               cg_steps: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, LayerFit]:
    W = layer.weight_matrix().detach()
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
    _, mu = st.moments(False)
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
    return Wn, delta, fit


def reconstruct(model: nn.Module, layers: dict[str, Layer], masks: dict[str, torch.Tensor],
                batches: list[Any], *, groups: list[UnitGroup] | None = None, damp: float = 0.01,
                sequential: bool = True, target: str = "layer", method: str = "obs", cg_steps: int = 0,
                fit_bias: bool | set[str] = False, adapter: Any = None, progress: bool = False) -> ReconstructionReport:
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
    but on SmolLM2 FFN neurons it generalised worse: 54.5 against 49.8).
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
    plan = _plan(layers, masks, groups)
    prefix, blocks = find_blocks(model)
    where = block_of(list(plan), prefix, len(blocks))
    report.skipped = sorted(n for n, i in where.items() if i is None)
    group_block: dict[str, set] = {}
    done: set[str] = set()
    if groups is not None:
        gw = block_of([c.layer for g in groups for c in g.couplings], prefix, len(blocks))
        group_block = {g.name: {gw[c.layer] for c in g.couplings} for g in groups}
    last = max((i for i in where.values() if i is not None), default=-1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            cache = capture_block_inputs(model, blocks[0], batches) if last >= 0 else []
            dense = [[e[0].clone(), *e[1:]] for e in cache] if paired else None  # the dense model's block inputs
            for i in tqdm(range(last + 1), desc="reconstructing, block by block", disable=not progress, leave=False):
                names = [n for n in plan if where[n] == i]
                hooks = InputStatistics({n: layers[n] for n in names}, paired)
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
                seen = {}
                for n in names:
                    st = hooks.stats.get(n)
                    if st is None:
                        raise CalibrationError(f"Reconstruction: layer {n} was not called by block {i}.")
                    seen.setdefault(id(st), (st, []))[1].append(n)
                for st, ns in seen.values():
                    st.check(ns)
                fits = {}
                factors: dict[tuple[int, bool], Factor] = {}
                for n in names:
                    st = hooks.stats[n]
                    bias = layers[n].bias is not None or fit_bias is True or (
                        isinstance(fit_bias, set) and n in fit_bias)
                    key = (id(st), bias)
                    if key not in factors:
                        factors[key] = make_factor(st, damp, bias)
                    how, keep = plan[n]
                    fits[n] = _fit_layer(layers[n], how, keep, factors[key], st, method, bias, cg_steps)
                for n, (Wn, delta, fit) in fits.items():  # write only once the whole block fitted
                    _write(model, layers[n], Wn, delta, plan[n], adapter)
                    report.layers.append(fit)
                if groups is not None:
                    here = [g for g in groups if group_block[g.name] == {i}]
                    apply_unit_masks(model, here, masks)
                    done.update(g.name for g in here)
                del fits, factors, hooks
                if sequential and i < last:
                    for entry in cache:
                        _run_block(blocks[i], entry, write=True)
                release_memory()
    finally:
        model.train(was_training)
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
