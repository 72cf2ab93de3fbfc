"""Why expressiveness / hybrid / magnitude collapse SmolLM2 at 20% of the FFN neurons, and why EC's bias
compensation collapses it on the gate/up projections. Measures massive activations (Sun et al. 2024) at the
down_proj inputs (FFN neurons) and the gate/up inputs (normed residual channels), which neurons each criterion
removes, single-neuron ablations, and how much of the gate/up input means come from a few tokens.

    PYTHONPATH=. nice -n 10 python scripts/diagnose/collapse.py --num-samples 8 --ppl-tokens 4096
"""

from __future__ import annotations

import copy
import json

import torch

import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # scripts/: the shared helpers
from _common import bench_parser, lee_texts, load_smollm2, perplexity, set_threads, token_batches
from hfprune import PruningConfig, prune


@torch.no_grad()
def activation_stats(model, batches) -> dict:
    """Per block: max |a| and on-fraction of every down_proj input (FFN neuron); max |x| of every gate/up input
    channel, its mean, and the share of sum |x| carried by the top 1% of tokens."""
    out: dict = {"down": [], "gate": []}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        d = {"max": None, "on": None, "n": 0}
        g = {"max": None, "sum": None, "abs": None, "top": None}
        out["down"].append(d)
        out["gate"].append(g)

        def hd(m, args, o, d=d):
            a = args[0].reshape(-1, args[0].shape[-1]).float()
            mx = a.abs().amax(0)
            d["max"] = mx if d["max"] is None else torch.maximum(d["max"], mx)
            on = (a > 0).sum(0).double()
            d["on"] = on if d["on"] is None else d["on"] + on
            d["n"] += a.shape[0]

        def hg(m, args, o, g=g):
            a = args[0].reshape(-1, args[0].shape[-1]).float()
            mx = a.abs().amax(0)
            g["max"] = mx if g["max"] is None else torch.maximum(g["max"], mx)
            s, ab = a.sum(0).double(), a.abs().sum(0).double()
            k = max(1, a.shape[0] // 100)
            top = a.abs().topk(k, dim=0).values.sum(0).double()
            for key, v in (("sum", s), ("abs", ab), ("top", top)):
                g[key] = v if g[key] is None else g[key] + v
            g["n"] = g.get("n", 0) + a.shape[0]

        hooks.append(layer.mlp.down_proj.register_forward_hook(hd))
        hooks.append(layer.mlp.gate_proj.register_forward_hook(hg))
    for b in batches:
        model(**b)
    for h in hooks:
        h.remove()
    return out


def main() -> None:
    ap = bench_parser(__doc__, num_samples=8, batch_size=4)
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench_out/diagnosis.json")
    args = ap.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    model, tok = load_smollm2()
    batches = token_batches(tok, model, args.num_samples, args.seq_len, args.batch_size)
    st = activation_stats(model, batches)
    res: dict = {"calibration": f"{args.num_samples} x {args.seq_len}", "ppl_tokens": args.ppl_tokens}
    # massive FFN neurons: max|a| against the layer's median max|a|
    rows = []
    for i, d in enumerate(st["down"]):
        med = d["max"].median().item()
        q = d["on"] / d["n"]
        for j in d["max"].topk(3).indices.tolist():
            rows.append({"block": i, "neuron": j, "max_abs": d["max"][j].item(), "ratio_to_median": d["max"][j].item() / med,
                         "on_fraction": q[j].item(), "expressiveness": (2 * q[j] * (1 - q[j])).item()})
    rows.sort(key=lambda r: -r["ratio_to_median"])
    res["top_ffn_neurons"] = rows[:12]
    ratios = torch.cat([d["max"] / d["max"].median() for d in st["down"]])
    res["ffn_neurons_ratio_gt"] = {str(t): int((ratios > t).sum()) for t in (10, 20, 50, 100)}
    q_all = torch.cat([d["on"] / d["n"] for d in st["down"]])
    e_all = 2 * q_all * (1 - q_all)
    res["expressiveness_quantiles"] = [e_all.quantile(t).item() for t in (0.0, 0.05, 0.2, 0.5)]
    res["on_fraction_of_massive"] = [q_all[k].item() for k in (ratios > 20).nonzero().flatten()[:20].tolist()]
    # gate/up inputs (normed residual): massive channels, their share of |x| in the top 1% tokens
    grows = []
    for i, g in enumerate(st["gate"]):
        med = g["max"].median().item()
        j = int(g["max"].argmax())
        grows.append({"block": i, "channel": j, "max_abs": g["max"][j].item(), "ratio_to_median": g["max"][j].item() / med,
                      "mean": (g["sum"][j] / g["n"]).item(), "top1pct_share_of_abs": (g["top"][j] / g["abs"][j]).item(),
                      "median_top1pct_share": (g["top"] / g["abs"]).median().item()})
    res["gate_inputs"] = grows
    # which neurons each criterion removes at 20% FFN
    massive = {(r["block"], r["neuron"]) for r in rows if r["ratio_to_median"] > 20}
    res["massive_set"] = sorted(massive)
    crit = {}
    for c in ("expressiveness", "hybrid", "magnitude", "taylor", "elimination_compensation"):
        cfg = PruningConfig(round_to=1, criterion=c, granularity="neurons", sparsity=0.2,
                            calibration={"num_samples": args.num_samples, "seq_len": args.seq_len, "batch_size": args.batch_size})
        if c in ("taylor", "elimination_compensation"):
            cfg = PruningConfig(**{**cfg.to_dict(), "options": {"compensate": False}}) if c == "elimination_compensation" else cfg
        r = prune(copy.deepcopy(model), cfg, calibration_data=lee_texts("background"), tokenizer=tok, progress=False)
        masks = {int(n.split(".")[2]): m for n, m in r.masks.items()}
        removed = sorted((b, j) for b, j in massive if not masks[b][j])
        crit[c] = {"massive_removed": removed, "n_massive": len(massive)}
        print(c, crit[c], flush=True)
    res["criteria"] = crit
    # ablation: zero the single most massive neuron vs the median-ratio neuron of the same layer
    dense = perplexity(model, tok, lee_texts("test"), 512, args.ppl_tokens)
    res["dense_ppl"] = dense
    abl = []
    for r in rows[:3]:
        m = copy.deepcopy(model)
        with torch.no_grad():
            m.model.layers[r["block"]].mlp.down_proj.weight[:, r["neuron"]] = 0
        abl.append({**{k: r[k] for k in ("block", "neuron")}, "ppl": perplexity(m, tok, lee_texts("test"), 512, args.ppl_tokens)})
        d = st["down"][r["block"]]
        j = int((d["max"] - d["max"].median()).abs().argmin())
        m = copy.deepcopy(model)
        with torch.no_grad():
            m.model.layers[r["block"]].mlp.down_proj.weight[:, j] = 0
        abl.append({"block": r["block"], "neuron": j, "typical": True,
                    "ppl": perplexity(m, tok, lee_texts("test"), 512, args.ppl_tokens)})
        print(abl[-2:], flush=True)
    res["ablation"] = abl
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
