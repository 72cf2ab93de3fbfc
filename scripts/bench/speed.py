"""Latency / throughput of dense vs structurally pruned SmolLM2 and MiniLM next to the MACs ratio, and
the time and peak memory (max RSS of a fresh process) of `prune()` for every registered criterion.

    PYTHONPATH=. python scripts/bench/speed.py
    PYTHONPATH=. python scripts/bench/speed.py --only prune-cost --num-samples 8
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch

import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # scripts/: the shared helpers
from _common import (device_line, set_threads, supports, lee_sentences, lee_texts, load_minilm, load_smollm2, max_rss_mb,
                     run_child, save_json, table, token_batches)
from hfprune import PruningConfig, prune
from hfprune.criteria import available_criteria


@torch.no_grad()
def _latency(model, inputs, repeats) -> tuple[float, float]:
    """(median wall seconds, median process CPU seconds) of one forward pass, after one warm-up."""
    model(**inputs)
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        model(**inputs)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def speed_rows(name, model, inputs, sparsities, repeats, granularity="neurons") -> list[dict]:
    tokens = inputs["input_ids"].numel()
    dw, dc = _latency(model, inputs, repeats)
    rows = [{"model": name, "sparsity": 0.0, "wall ms": dw * 1e3, "cpu ms": dc * 1e3, "tokens/s (cpu)": tokens / dc,
             "speed-up (wall)": 1.0, "speed-up (cpu)": 1.0, "MACs ratio": 1.0, "speed-up (cpu) / MACs ratio": 1.0}]
    for s in sparsities:
        res = prune(copy.deepcopy(model), PruningConfig(round_to=1, criterion="magnitude", granularity=granularity, sparsity=s),
                    progress=False)
        w, c = _latency(res.model, inputs, repeats)
        macs = res.report.macs_before / res.report.macs_after
        rows.append({"model": name, "sparsity": s, "wall ms": w * 1e3, "cpu ms": c * 1e3,
                     "tokens/s (cpu)": tokens / c, "speed-up (wall)": dw / w, "speed-up (cpu)": dc / c,
                     "MACs ratio": macs, "speed-up (cpu) / MACs ratio": dc / c / macs})
    return rows


def child_prune(model_name: str, criterion: str, granularity: str, num_samples: int, seq_len: int) -> None:
    """Runs in a fresh process: load, prune once, print JSON with time and peak RSS."""
    model, tok = load_smollm2() if model_name == "smollm2" else load_minilm()
    rss_loaded = max_rss_mb()
    cfg = PruningConfig(round_to=1, criterion=criterion, granularity=granularity, sparsity=0.3,
                        calibration={"num_samples": num_samples, "seq_len": seq_len, "batch_size": 4})
    t = time.perf_counter()
    res = prune(model, cfg, calibration_data=lee_texts("background"), tokenizer=tok, progress=False)
    total = time.perf_counter() - t
    print(json.dumps({"prune s": total, "calibration s": res.report.timings.get("calibration"),
                      "RSS after load MB": rss_loaded, "peak RSS MB": max_rss_mb()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["speed", "prune-cost"], default=None)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--seq-len", type=int, default=512, help="SmolLM2 latency input length")
    ap.add_argument("--minilm-batch", type=int, default=32, help="MiniLM latency batch of lee sentences")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--num-samples", type=int, default=8, help="calibration sequences for the prune() cost runs")
    ap.add_argument("--calib-seq-len", type=int, default=256)
    ap.add_argument("--models", nargs="+", default=["smollm2", "minilm"])
    ap.add_argument("--criteria", nargs="+", default=None, help="prune() cost runs: these criteria (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is faithful on a shared "
                    "machine; 0: torch default)")
    ap.add_argument("--json", default="/tmp/bench_speed.json")
    ap.add_argument("--child", nargs=5, metavar=("MODEL", "CRITERION", "GRANULARITY", "N", "SEQ"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        m, c, g, n, s = args.child
        return child_prune(m, c, g, int(n), int(s))
    set_threads(args.threads)
    print(device_line())
    out = {"args": vars(args)}
    if args.only != "prune-cost":
        rows = []
        if "smollm2" in args.models:
            model, tok = load_smollm2()
            ids = token_batches(tok, model, 1, args.seq_len, 1)[0]
            rows += speed_rows("SmolLM2-135M (1 x %d tokens)" % args.seq_len, model, ids, args.sparsities,
                               args.repeats)
            del model
        if "minilm" in args.models:
            model, tok = load_minilm()
            enc = tok(lee_sentences("test", args.minilm_batch), padding="max_length", truncation=True,
                      max_length=128, return_tensors="pt")
            rows += speed_rows(f"MiniLM-L6 ({args.minilm_batch} x 128 tokens)", model, dict(enc), args.sparsities,
                               args.repeats)
        print("\nStructured (FFN neurons, magnitude) latency, median of %d after warm-up, torch.no_grad; wall and "
              "process CPU time\n" % args.repeats)
        print(table(rows))
        out["speed"] = rows
    if args.only != "speed":
        rows = []
        for m in args.models:
            for c in args.criteria or available_criteria():
                g = "neurons" if supports(c, "neurons") else "weights"
                r = run_child([sys.argv[0], "--child", m, c, g, str(args.num_samples), str(args.calib_seq_len)])
                rows.append({"model": m, "criterion": c, "granularity": g, **r})
                print(rows[-1], flush=True)
        print(f"\nprune() cost, sparsity 0.3, calibration {args.num_samples} x {args.calib_seq_len} tokens "
              "(lee_background), each in a fresh process; peak RSS = ru_maxrss including the loaded model\n")
        print(table(rows, ["model", "criterion", "granularity", "prune s", "calibration s", "RSS after load MB",
                           "peak RSS MB", "error"]))
        out["prune_cost"] = rows
    save_json(args.json, out)


if __name__ == "__main__":
    main()
