"""Perplexity of pruned SmolLM2 folders before and after 4-bit weight quantization (optimum-quanto, groups of 128,
through ``hfprune export --format quanto-int4``), on the three evaluation sets of scripts/bench/target_size.py.

Pass saved pruned folders with ``--folders`` (e.g. the target-size output of scripts/bench/target_size.py
``--save-dir``); ``--ffn30 DIR`` first prunes SmolLM2's FFN neurons by 30% (wanda, 64 x 512 Lee calibration,
default settings) into DIR. Results go to ``--out``.

    PYTHONPATH=.:scripts python scripts/deploy/quantize.py --ffn30 bench_out/ffn30 \\
        --folders bench_out/ts_models_auto/hfprune bench_out/ffn30 --out bench_out/quantize.json
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/: _common
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import torch  # noqa: E402
import transformers  # noqa: E402
from _common import bench_parser, device_line, lee_texts, load_smollm2, save_json, set_threads  # noqa: E402
from target_size import evaluate  # noqa: E402

import hfprune  # noqa: E402
from hfprune import PruningConfig  # noqa: E402


def prune_ffn30(folder: str, args) -> None:
    model, tok = load_smollm2()
    config = PruningConfig(criterion="wanda", granularity="neurons", sparsity=0.3,
                           calibration={"num_samples": args.num_samples, "seq_len": args.seq_len})
    res = hfprune.prune(model, config, calibration_data=lee_texts("background"), tokenizer=tok, progress=False)
    res.save_pretrained(folder, overwrite=True)
    tok.save_pretrained(folder)


def main() -> None:
    ap = bench_parser(__doc__, num_samples=64, seq_len=512)
    ap.add_argument("--folders", nargs="+", required=True)
    ap.add_argument("--ffn30", default=None, help="prune SmolLM2's FFN by 30%% into this folder first")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench_out/quantize.json")
    args = ap.parse_args()
    set_threads(args.threads)
    from optimum.quanto import QuantizedModelForCausalLM

    if args.ffn30:
        prune_ffn30(args.ffn30, args)
    results = {"device": device_line(), "quantizer": "optimum-quanto qint4, weight-only, groups of 128",
               "models": {}}
    for folder in args.folders:
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        pruned = hfprune.load_pruned(folder)
        row = {"config": {k: getattr(pruned.config, k) for k in ("hidden_size", "intermediate_size",
                                                                 "num_hidden_layers")},
               "pruned": evaluate(pruned, tok, args)}
        t = time.perf_counter()
        out = hfprune.export(folder, folder.rstrip("/") + "-int4", format="quanto-int4", overwrite=True)
        row["quantize_seconds"] = round(time.perf_counter() - t, 1)
        row["quantized"] = evaluate(QuantizedModelForCausalLM.from_pretrained(out)._wrapped.eval(), tok, args)
        row["increase"] = {k: round(row["quantized"][k] / row["pruned"][k] - 1, 4) for k in row["pruned"]}
        results["models"][folder] = row
        print(folder, row, flush=True)
        save_json(args.out, results)


if __name__ == "__main__":
    with torch.no_grad():
        main()
