"""Calibration overhead and structured speed-up on SmolLM2-135M: (a) Wanda calibration overhead vs plain forward
passes (target <= 1.3x);
(b) structured speed-up of 50% FFN neurons removed vs the MACs ratio (target speed-up / MACs ratio >= 0.8).

    PYTHONPATH=. python scripts/bench/core.py --num-samples 16 --seq-len 512
"""

from __future__ import annotations

import copy
import time

import torch

import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # scripts/: the shared helpers
from _common import bench_parser, device_line, set_threads, load_smollm2, median_time, save_json, table, token_batches
from hfprune import PruningConfig, prune
from hfprune.calibration import collector
from hfprune.calibration.collector import collect_statistics
from hfprune.calibration.forward import run_model
from hfprune.criteria import get_criterion
from hfprune.structure import target_layers


def plain_forward(model, batches) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for b in batches:
            run_model(model, b)
    return time.perf_counter() - t, time.process_time() - c


def calibration(model, batches, criterion, layers, observed) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    collect_statistics(model, criterion, layers, observed, batches, progress=False)
    return time.perf_counter() - t, time.process_time() - c


def overhead(model, tok, args) -> list[dict]:
    batches = token_batches(tok, model, args.num_samples, args.seq_len, args.batch_size)
    config = PruningConfig(criterion="wanda",
                           calibration={"num_samples": args.num_samples, "seq_len": args.seq_len, "batch_size": args.batch_size})
    criterion = get_criterion(config)
    layers = target_layers(model, config)
    observed = criterion.observed_layers(layers, None)
    print(f"wanda observes {len(observed)} layers; {len(batches)} batches of {args.batch_size} x {args.seq_len}")
    plain_forward(model, batches[:1])  # warm-up
    rows = []
    real_check, real_acc = collector._check_finite, type(criterion).accumulate
    variants = [("plain forward (no hooks)", None), ("collect_statistics (full)", "full"),
                ("  without isfinite check", "nocheck"), ("  hooks only (no accumulate, no check)", "hooks")]
    for _ in range(args.repeats):
        for label, mode in variants:
            if mode is None:
                s = plain_forward(model, batches)
            else:
                if mode in ("nocheck", "hooks"):
                    collector._check_finite = lambda name, x: None
                if mode == "hooks":
                    criterion.accumulate = lambda *a, **k: None
                try:
                    s = calibration(model, batches, criterion, layers, observed)
                finally:
                    collector._check_finite = real_check
                    criterion.__dict__.pop("accumulate", None)
            rows.append({"what": label, "wall s": s[0], "cpu s": s[1]})
            print(rows[-1], flush=True)
    assert type(criterion).accumulate is real_acc
    best: dict[str, dict] = {}
    for r in rows:  # per variant: minimum over repeats (least disturbed by other load)
        b = best.setdefault(r["what"], {"wall s": float("inf"), "cpu s": float("inf")})
        b["wall s"], b["cpu s"] = min(b["wall s"], r["wall s"]), min(b["cpu s"], r["cpu s"])
    base = best["plain forward (no hooks)"]
    return [{"what": k, **v, "wall ratio": v["wall s"] / base["wall s"], "cpu ratio": v["cpu s"] / base["cpu s"]}
            for k, v in best.items()]


def latency(model, ids, repeats, clock) -> float:
    with torch.no_grad():
        return median_time(lambda: model(input_ids=ids), repeats=repeats, warmup=1, clock=clock)


def speedup(model, tok, args) -> dict:
    ids = token_batches(tok, model, 1, args.seq_len, 1)[0]["input_ids"]
    dense = model
    pruned = prune(copy.deepcopy(model), PruningConfig(round_to=1, criterion="magnitude", granularity="neurons", sparsity=0.5),
                   progress=False)
    rep = pruned.report
    macs_ratio = rep.macs_before / rep.macs_after
    out = {"MACs ratio": macs_ratio, "params before": rep.params_before, "params after": rep.params_after}
    for name, clock in (("wall", time.perf_counter), ("cpu", time.process_time)):
        t_dense = [latency(dense, ids, args.latency_repeats, clock)]
        t_pruned = [latency(pruned.model, ids, args.latency_repeats, clock)]
        t_dense.append(latency(dense, ids, args.latency_repeats, clock))  # interleaved: dense, pruned, dense, pruned
        t_pruned.append(latency(pruned.model, ids, args.latency_repeats, clock))
        d, p = min(t_dense), min(t_pruned)
        out.update({f"dense {name} ms": d * 1e3, f"pruned {name} ms": p * 1e3, f"{name} speed-up": d / p,
                    f"{name} speed-up / MACs ratio": (d / p) / macs_ratio})
    return out


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each overhead variant (minimum reported)")
    ap.add_argument("--latency-repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: CPU time is then a faithful measure on a shared machine; 0: torch default)")
    ap.add_argument("--skip", choices=["overhead", "speedup"], default=None)
    ap.add_argument("--json", default="/tmp/bench_core.json")
    args = ap.parse_args()
    set_threads(args.threads)
    print(device_line())
    model, tok = load_smollm2()
    out = {"args": vars(args)}
    if args.skip != "overhead":
        rows = overhead(model, tok, args)
        print(f"\n(a) Wanda calibration overhead, {args.num_samples} x {args.seq_len} tokens (target <= 1.3x)\n")
        print(table(rows))
        out["overhead"] = rows
    if args.skip != "speedup":
        r = speedup(model, tok, args)
        print(f"\n(b) 50% FFN neurons removed (magnitude), batch 1 x {args.seq_len} tokens, median of "
              f"{args.latency_repeats}, best of 2 interleaved rounds, wall and process CPU time (target speed-up / MACs ratio >= 0.8)\n")
        print(table([r]))
        out["speedup"] = r
    save_json(args.json, out)


if __name__ == "__main__":
    main()
