"""Every criterion with its *default* PruningConfig on SmolLM2-135M: held-out perplexity, prune time and
peak resident memory, one fresh process per row (so that each row's peak memory is its own).

A row is ``criterion:granularity:sparsity[:field=value,...]``; only the fields given after the third colon are
changed from the defaults (e.g. ``num_samples=8`` to measure memory on one batch: the peak is reached within a
batch, so it does not depend on the number of batches). Perplexity on held-out lee.cor in 512-token windows.

    PYTHONPATH=.:scripts python scripts/bench/defaults.py --rows magnitude:neurons:0.2 \
        elimination_compensation:weights:0.5:num_samples=8 --out bench_out/defaults.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/: _common


def parse(row: str) -> tuple[str, str, float, dict]:
    parts = row.split(":")
    if parts[1].isdigit():  # an N:M granularity such as 2:4
        parts = [parts[0], parts[1] + ":" + parts[2], *parts[3:]]
    crit, gran, sp = parts[0], parts[1], float(parts[2])
    overrides: dict = {}
    for kv in (parts[3].split(",") if len(parts) > 3 and parts[3] else []):
        k, v = kv.split("=", 1)
        overrides[k] = json.loads(v) if v[:1].isdigit() or v in ("true", "false") else v
    return crit, gran, sp, overrides


def one(row: str, threads: int, ppl_tokens: int) -> dict:
    """Run one row in this process; returns its measurements."""
    import torch

    from _common import lee_texts, load_smollm2, perplexity, set_threads
    from hfprune import PruningConfig, prune

    set_threads(threads)
    torch.manual_seed(0)
    crit, gran, sp, overrides = parse(row)
    model, tok = load_smollm2()
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r: dict = {"row": row, "criterion": crit, "granularity": gran, "sparsity": sp, "overrides": overrides}
    if crit == "dense":
        r["ppl"] = perplexity(model, tok, lee_texts("test"), 512, ppl_tokens)
        return r
    # overrides use the fields' short names (num_samples=8): from_dict reads them as the older flat keys
    cfg = PruningConfig.from_dict({"criterion": crit, "granularity": gran, "sparsity": sp, **overrides})
    t = time.perf_counter()
    result = prune(model, cfg, lee_texts("background"), tok, progress=False)
    r["prune_s"] = time.perf_counter() - t
    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r["rss_after_load_mb"] = rss_loaded
    rep = result.report
    r["calibration"] = f"{cfg.calibration.num_samples} x {cfg.calibration.seq_len}, batch {cfg.calibration.batch_size}"
    r["timings"] = rep.timings
    r["params_after"] = rep.params_after
    r["warnings"] = rep.warnings
    r["protected"] = sum(len(v) for v in rep.protected.values())
    if rep.reconstruction:
        fits = rep.reconstruction["layers"]
        r["recon_error"] = [sum(f[k] for f in fits) / max(len(fits), 1) for k in ("error_before", "error_after")]
    r["ppl"] = perplexity(result.model, tok, lee_texts("test"), 512, ppl_tokens)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=[])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ppl-tokens", type=int, default=0, help="0: all of lee.cor")
    ap.add_argument("--out", default="bench_out/defaults.jsonl")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.threads, args.ppl_tokens)), flush=True)
        return
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for row in args.rows:
        proc = subprocess.run([sys.executable, __file__, "--one", row, "--threads", str(args.threads),
                               "--ppl-tokens", str(args.ppl_tokens)], capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        r = json.loads(lines[-1][7:]) if lines else {"row": row, "error": proc.stderr.strip()[-600:],
                                                       "returncode": proc.returncode}
        print(json.dumps(r), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
