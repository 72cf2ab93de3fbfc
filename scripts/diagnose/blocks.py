"""Which blocks (and neurons) make magnitude / expressiveness collapse SmolLM2 at 20% of the FFN neurons.
Masks come from prune() on the whole model; then the removed neurons of ONE block at a time are zeroed (their
down_proj columns: the same function as removing them) and the perplexity measured; in the worst block the removed
set is bisected down to the neurons that carry the damage.

    PYTHONPATH=.:scripts nice -n 10 python scripts/diagnose/blocks.py --num-samples 8 --ppl-tokens 2048
"""

from __future__ import annotations

import copy
import json

import torch

import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # scripts/: the shared helpers
from _common import bench_parser, lee_texts, load_smollm2, perplexity, set_threads
from hfprune import PruningConfig, prune


def zeroed(model, removed: dict[int, list[int]]):
    m = copy.deepcopy(model)
    with torch.no_grad():
        for b, idx in removed.items():
            m.model.layers[b].mlp.down_proj.weight[:, idx] = 0
    return m


def main() -> None:
    ap = bench_parser(__doc__, num_samples=8, batch_size=4)
    ap.add_argument("--ppl-tokens", type=int, default=2048)
    ap.add_argument("--criteria", nargs="+", default=["magnitude", "expressiveness"])
    ap.add_argument("--out", default="bench_out/diagnosis_blocks.json")
    args = ap.parse_args()
    set_threads(1)
    model, tok = load_smollm2()
    test = lee_texts("test")
    ppl = lambda m: perplexity(m, tok, test, 512, args.ppl_tokens)  # noqa: E731
    res = {"dense": ppl(model), "calibration": f"{args.num_samples} x {args.seq_len}", "ppl_tokens": args.ppl_tokens}
    print(res, flush=True)
    for c in args.criteria:
        cfg = PruningConfig(round_to=1, criterion=c, granularity="neurons", sparsity=0.2,
                            calibration={"num_samples": args.num_samples, "seq_len": args.seq_len, "batch_size": args.batch_size})
        r = prune(copy.deepcopy(model), cfg, calibration_data=lee_texts("background"), tokenizer=tok, progress=False)
        removed = {int(n.split(".")[2]): (~m).nonzero().flatten().tolist() for n, m in r.masks.items()}
        per_block = {}
        for b in sorted(removed):
            per_block[b] = ppl(zeroed(model, {b: removed[b]}))
            print(c, b, per_block[b], flush=True)
        worst = max(per_block, key=per_block.get)
        cand = removed[worst]
        steps = []
        while len(cand) > 1:  # keep the half that hurts more
            a, z = cand[: len(cand) // 2], cand[len(cand) // 2:]
            pa, pz = ppl(zeroed(model, {worst: a})), ppl(zeroed(model, {worst: z}))
            steps.append({"n": len(cand), "first_half": pa, "second_half": pz})
            cand = a if pa >= pz else z
            print(c, worst, steps[-1], flush=True)
        res[c] = {"per_block": per_block, "worst_block": worst, "bisection": steps, "culprit": cand,
                  "culprit_alone": ppl(zeroed(model, {worst: cand})),
                  "all_but_worst_block": ppl(zeroed(model, {b: v for b, v in removed.items() if b != worst}))}
        print(c, res[c], flush=True)
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
