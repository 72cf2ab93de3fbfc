"""Why elimination-compensation's bias shift wrecks SmolLM2's SwiGLU gate/up projections. For a few blocks,
per token: G_i = sum_k (dy_k/dz_i)^2 of the gate/up outputs (network output, Hutchinson projections as hfprune
does), the gate/up inputs a; then the share of sum_t G_i(t) carried by the top 1% tokens, the G-weighted mean
abar against the plain mean mu, and the layer output error E||W_R a - delta||^2 / E||W a||^2 for the weights R
that EC removes at 50% (its own scores, per layer) with delta = 0, W_R mu (G = 1) and W_R abar (EC's).

    PYTHONPATH=.:scripts nice -n 10 python scripts/diagnose/ec.py --num-samples 2 --seq-len 512
"""

from __future__ import annotations

import json

import torch

import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # scripts/: the shared helpers
from _common import bench_parser, load_smollm2, set_threads, token_batches


def main() -> None:
    ap = bench_parser(__doc__, num_samples=2, batch_size=1)
    ap.add_argument("--blocks", type=int, nargs="+", default=[0, 10, 20, 29])
    ap.add_argument("--projections", type=int, default=4)
    ap.add_argument("--out", default="bench_out/diagnosis_ec.json")
    args = ap.parse_args()
    set_threads(1)
    torch.manual_seed(0)
    model, tok = load_smollm2()
    for p in model.parameters():
        p.requires_grad_(False)
    batches = token_batches(tok, model, args.num_samples, args.seq_len, args.batch_size)
    names = [(b, p) for b in args.blocks for p in ("gate_proj", "up_proj")]
    A = {k: [] for k in names}
    G = {k: [] for k in names}
    gen = torch.Generator().manual_seed(0)
    for batch in batches:
        zs, hs = {}, []
        for b, p in names:
            mod = getattr(model.model.layers[b].mlp, p)

            def hook(m, args_, out, key=(b, p)):
                A[key].append(args_[0].detach().reshape(-1, args_[0].shape[-1]))
                out.requires_grad_(True) if not out.requires_grad else None
                zs[key] = out
            hs.append(mod.register_forward_hook(hook))
        # make the graph: the embeddings need grad so that z depends on a differentiable path
        emb = model.get_input_embeddings()(batch["input_ids"]).requires_grad_(True)
        logits = model(inputs_embeds=emb).logits
        for h in hs:
            h.remove()
        keys = list(zs)
        acc = {k: torch.zeros(zs[k].reshape(-1, zs[k].shape[-1]).shape) for k in keys}
        for _ in range(args.projections):
            v = torch.randn(logits.shape, generator=gen) / args.projections ** 0.5
            gs = torch.autograd.grad(logits, [zs[k] for k in keys], v, retain_graph=True)
            for k, g in zip(keys, gs):
                acc[k] += g.reshape(acc[k].shape).square()
        for k in keys:
            G[k].append(acc[k])
        del logits
        zs.clear()
    res = {"calibration": f"{args.num_samples} x {args.seq_len}", "projections": args.projections, "layers": []}
    for b, p in names:
        a, g = torch.cat(A[(b, p)]).double(), torch.cat(G[(b, p)]).double()
        W = getattr(model.model.layers[b].mlp, p).weight.detach().double()
        n = a.shape[0]
        k = max(1, n // 100)
        share = (g.topk(k, dim=0).values.sum(0) / g.sum(0))  # per output i
        mu = a.mean(0)
        abar = (g.T @ a) / g.sum(0)[:, None]  # [out, in]
        spread = (g.T @ a.square()) / g.sum(0)[:, None] - abar.square()
        score = W.square() * spread.clamp(min=0) * g.sum(0)[:, None]  # EC: W^2 E[G (a - abar)^2]
        keep = score >= score.flatten().kthvalue(score.numel() // 2).values  # EC's per-layer 50%
        R = W * ~keep
        out = a @ W.T
        err = lambda d: float(((a @ R.T - d).square().sum()) / out.square().sum())  # noqa: E731
        d1 = R @ mu
        dg = (R * abar).sum(1)
        top_tok = g.sum(1).topk(5).indices.tolist()
        res["layers"].append({
            "block": b, "proj": p, "tokens": n,
            "median_top1pct_share_of_G": float(share.median()), "max_top1pct_share_of_G": float(share.max()),
            "tokens_with_most_G": top_tok,
            "rel_err_no_shift": err(0), "rel_err_mean_shift_G1": err(d1), "rel_err_EC_shift": err(dg),
            "shift_norm_EC_over_G1": float(dg.norm() / d1.norm().clamp(min=1e-12)),
        })
        print(res["layers"][-1], flush=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
