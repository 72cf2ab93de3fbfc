"""One-shot FFN pruning in and out of the calibration domain: hfprune (wanda, its defaults: reconstruction and
energy protection) calibrated on lee_background, on text the model writes itself, or on a half/half mix, against
Torch-Pruning's group Taylor (calibrated on lee_background), all at the same fraction of FFN neurons per layer.
Perplexity on held-out lee.cor, the movie reviews and Python's documentation; the ratio column is hfprune's
perplexity increase over dense divided by Torch-Pruning's.

    PYTHONPATH=.:scripts nice -n 5 python scripts/bench/ood_ffn.py --num-samples 64 --out bench_out/ood_ffn.json
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/: _common

import yaml  # noqa: E402
from _common import bench_parser, device_line, lee_texts, load_smollm2, save_json, set_threads, token_batches  # noqa: E402
from bench.quality import _tp_group_scores  # noqa: E402
from bench.target_size import evaluate  # noqa: E402

from hfprune.config.pruning_config import PruningConfig  # noqa: E402
from hfprune.prune import prune  # noqa: E402


def main() -> None:
    ap = bench_parser(__doc__, num_samples=64, seq_len=512, batch_size=4)
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--calibrations", nargs="+", default=["lee", "mixed", "generated"],
                    choices=["lee", "mixed", "generated"])
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=[], metavar="GROUP.FIELD=VALUE",
                    help="config changes for the hfprune rows, e.g. reconstruction.damp=0.1 calibration.mode=one_pass")
    ap.add_argument("--tp-from", help="a previous --out file whose dense and Torch-Pruning rows are reused (same "
                                      "sizes; saves that run)")
    ap.add_argument("--out", default="bench_out/ood_ffn.json")
    args = ap.parse_args()
    set_threads(args.threads)
    base, tok = load_smollm2()
    out = {"device": device_line(), "args": vars(args), "rows": []}
    if args.tp_from:
        with open(args.tp_from) as f:
            previous = json.load(f)
        dense, tp = previous["dense"], {**previous["rows"][0], "from": args.tp_from}
    else:
        dense = evaluate(base, tok, args)
        batches = token_batches(tok, base, args.num_samples, args.seq_len, args.batch_size)
        m = copy.deepcopy(base)
        t = time.perf_counter()
        note = _tp_group_scores(m, batches, "taylor", args.sparsity)
        tp = {"method": "Torch-Pruning group Taylor (lee)", "ppl": evaluate(m, tok, args),
              "seconds": round(time.perf_counter() - t, 1), "note": note}
        del m
    out["dense"] = dense
    print("dense", dense, flush=True)
    out["rows"].append(tp)
    print(tp, flush=True)
    save_json(args.out, out)
    changes: dict = {}
    for item in args.set:
        key, value = item.split("=", 1)
        group, field = key.split(".")
        changes.setdefault(group, {})[field] = yaml.safe_load(value)
    for cal in args.calibrations:
        m = copy.deepcopy(base)
        source = {"lee": "data", "mixed": "mixed", "generated": "generated"}[cal]
        calibration = {"num_samples": args.num_samples, "seq_len": args.seq_len, "batch_size": args.batch_size,
                       "source": source, **changes.get("calibration", {})}
        cfg = PruningConfig(round_to=1, criterion="wanda", granularity="neurons", sparsity=args.sparsity,
                            calibration=calibration, **{g: v for g, v in changes.items() if g != "calibration"})
        t = time.perf_counter()
        prune(m, cfg, None if cal == "generated" else lee_texts("background"), tokenizer=tok, progress=False)
        ppl = evaluate(m, tok, args)
        method = f"hfprune wanda defaults ({cal})" + (f" {' '.join(args.set)}" if args.set else "")
        row = {"method": method, "ppl": ppl, "seconds": round(time.perf_counter() - t, 1),
               "increase_vs_tp": {k: round((ppl[k] - dense[k]) / (tp["ppl"][k] - dense[k]), 3) for k in ppl}}
        out["rows"].append(row)
        print(row, flush=True)
        save_json(args.out, out)
        del m


if __name__ == "__main__":
    main()
