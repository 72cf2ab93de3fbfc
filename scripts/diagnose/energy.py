"""How much of each block's FFN output the 20%-FFN masks of magnitude / expressiveness remove. For every
FFN neuron j of block b: its output energy E_t[a_j(t)^2] ||W_down[:, j]||^2 (what it writes into the residual), and
the residual stream's peak |h_c| after each block (massive activations, Sun et al. 2024). Masks from prune().

    PYTHONPATH=.:scripts nice -n 10 python scripts/diagnose/energy.py --num-samples 4
"""

from __future__ import annotations

import copy
import json

import torch

import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # scripts/: the shared helpers
from _common import bench_parser, lee_texts, load_smollm2, set_threads, token_batches
from hfprune import PruningConfig, prune


def main() -> None:
    ap = bench_parser(__doc__, num_samples=4, batch_size=2)
    ap.add_argument("--out", default="bench_out/diagnosis_energy.json")
    args = ap.parse_args()
    set_threads(1)
    model, tok = load_smollm2()
    batches = token_batches(tok, model, args.num_samples, args.seq_len, args.batch_size)
    L = len(model.model.layers)
    a2 = [torch.zeros(model.config.intermediate_size, dtype=torch.float64) for _ in range(L)]
    peak = [None] * L
    n = [0]
    hooks = []
    for i, layer in enumerate(model.model.layers):
        def hd(m, a, o, i=i):
            x = a[0].reshape(-1, a[0].shape[-1]).double()
            a2[i] += x.square().sum(0)
        def hb(m, a, o, i=i):
            h = (o[0] if isinstance(o, tuple) else o).reshape(-1, model.config.hidden_size).abs()
            mx = h.amax(0)
            peak[i] = mx if peak[i] is None else torch.maximum(peak[i], mx)
        hooks += [layer.mlp.down_proj.register_forward_hook(hd), layer.register_forward_hook(hb)]
    with torch.no_grad():
        for b in batches:
            model(**b)
            n[0] += b["input_ids"].numel()
    for h in hooks:
        h.remove()
    energy = [a2[i] / n[0] * model.model.layers[i].mlp.down_proj.weight.detach().double().square().sum(0)
              for i in range(L)]
    res = {"calibration": f"{args.num_samples} x {args.seq_len}", "residual_peak": [], "removed_energy": {}}
    for i in range(L):
        p = peak[i]
        res["residual_peak"].append({"block": i, "channel": int(p.argmax()), "peak": float(p.max()),
                                     "ratio_to_median": float(p.max() / p.median())})
    k = int(round(0.2 * model.config.intermediate_size))
    for c in ("magnitude", "expressiveness", "taylor"):
        cfg = PruningConfig(round_to=1, criterion=c, granularity="neurons", sparsity=0.2,
                            calibration={"num_samples": args.num_samples, "seq_len": args.seq_len, "batch_size": args.batch_size})
        r = prune(copy.deepcopy(model), cfg, calibration_data=lee_texts("background"), tokenizer=tok, progress=False)
        share = []
        for name, m in r.masks.items():
            i = int(name.split(".")[2])
            e = energy[i]
            lowest = e.sort().values[:k].sum()
            share.append({"block": i, "removed_share": float(e[~m].sum() / e.sum()),
                          "lowest_possible_share": float(lowest / e.sum())})
        res["removed_energy"][c] = sorted(share, key=lambda s: s["block"])
        print(c, [round(s["removed_share"], 3) for s in res["removed_energy"][c]], flush=True)
    print([round(s["lowest_possible_share"], 4) for s in res["removed_energy"]["magnitude"]])
    print([(p["block"], p["channel"], round(p["peak"], 1), round(p["ratio_to_median"], 1)) for p in res["residual_peak"]])
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
