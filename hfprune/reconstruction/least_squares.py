"""The least-squares pieces of weight reconstruction (`hfprune.reconstruction.refit`, which holds the method's
description): input statistics accumulated by matrix products (Gram matrices, paired with the dense model's
inputs for the dense target), their dampened factors, the refit solvers, and the output errors the fits are
judged by. Nothing here touches a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import CalibrationError
from ..structure import Layer


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

    def mean(self) -> torch.Tensor:
        """``mu``, the mean input (float64)."""
        return self.s / self.n

    def moments(self, centered: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(second moment ``H/n``, or covariance ``S`` when ``centered``; the mean ``mu``), float64."""
        mu = self.s / self.n
        m = self.H.double()
        m /= self.n  # in place: one float64 [in, in] matrix, not two
        if centered:
            m -= torch.outer(mu, mu)
        return m, mu

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
        """Upper Cholesky factor of ``Ht^-1`` (SparseGPT's ``Hinv``), computed once per input. The lower factor of
        ``Ht`` it starts from is kept only if something asked for it before: rows refits never need it again, and
        at an 8,192-wide input each float64 matrix is 0.5 GB."""
        if self._hinv_u is None:
            inverse = torch.cholesky_inverse(self._chol if self._chol is not None else _cholesky(self.Ht))
            self._hinv_u = torch.linalg.cholesky(inverse, upper=True)
            del inverse
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
                                   "damping; raise reconstruction.damp.")
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
    m.diagonal().add_(lam)  # in place: no identity matrix nor second copy (the widest input's float64 matrices
    return Factor(m, mu, lam, rank_deficient, dead)  # are a refit's memory peak, docs/scaling.md)


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


def _quad(A: torch.Tensor, m: torch.Tensor, B: torch.Tensor | None = None) -> float:
    """``sum((A m) * B)`` (``B = A`` by default) by float32 products summed in float64: the errors are reported and
    compared, never solved for, and float64 products took twice the solve's time (docs/scaling.md)."""
    a = A.float()
    return float(((a @ m.float()) * (a if B is None else B.float())).sum(dtype=torch.float64))


def output_error(D: torch.Tensor, delta: torch.Tensor | None, W: torch.Tensor, st: GramStats) -> float:
    """``E||D a + W d + delta||^2`` from the statistics (never the samples themselves): the error of the refit
    layer ``W + D`` (and bias change ``delta``) on the pruned model's inputs ``a`` against the dense layer on the
    dense inputs ``a0 = a - d`` (``d = 0`` unless the statistics are paired)."""
    mu = st.mean()
    err = _quad(D, st.H) / st.n  # the float32 sums as they are: no float64 copy of H per call
    shift = D.new_zeros(D.shape[0])
    if st.paired:
        P, Q, md = st.shift_moments(False)
        err += 2 * _quad(D, P, W) + _quad(W, Q)
        shift = W @ md
    if delta is not None:
        err += float(delta @ delta) + 2 * float(delta @ (D @ mu + shift))
    return max(err, 0.0)


def output_energy(W: torch.Tensor, st: GramStats) -> float:
    """``E||W a0||^2``, the dense layer's output energy (the reference of the relative errors)."""
    if not st.paired:
        return max(_quad(W, st.H) / st.n, 1e-30)
    m, _ = st.moments(False)
    P, Q, _ = st.shift_moments(False)
    return max(_quad(W, m - P - P.T + Q), 1e-30)
