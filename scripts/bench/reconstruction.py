"""SmolLM2-135M perplexity with and without weight reconstruction (and outlier protection) after each
criterion's selection. Calibration on lee_background, perplexity on held-out lee.cor in 512-token windows.
Each row is ``criterion:granularity:sparsity:variant[,variant...]``; variants: ``base`` (the criterion alone),
``recon`` (+ reconstruction, the default: OBS then conjugate-gradient steps), ``recon-obs`` (+ reconstruction,
OBS alone), ``exact`` (+ reconstruction, exact per-row solve), ``dense-in`` (+ reconstruction
on dense-model inputs), ``protect`` (+ outlier protection), ``protect+recon``; ``dense`` (no pruning) as a row.
Results are appended one JSON line per row to ``--out`` as they finish.

    PYTHONPATH=.:scripts nice -n 10 python scripts/bench/reconstruction.py --num-samples 32 --ppl-tokens 8192 \
        --rows dense wanda:weights:0.5:base,recon wanda:2:4:0.5:base,recon
"""

from __future__ import annotations

import copy
import json
import time

import torch

import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # scripts/: the shared helpers
from _common import bench_parser, device_line, lee_texts, load_smollm2, perplexity, set_threads, table
from _pipeline import run
from hfprune import PruningConfig



def parse(row: str) -> list[tuple[str, str, float, str]]:
    if row == "dense":
        return [("dense", "-", 0.0, "-")]
    crit, rest = row.split(":", 1)
    head, variants = rest.rsplit(":", 1)
    gran, sp = head.rsplit(":", 1)
    return [(crit, gran, float(sp), v) for v in variants.split(",")]


def compare_solvers(model, tok, args) -> None:
    """OBS against the exact per-row solve on one block's layers (Wanda 50% / 2:4 masks, dense inputs): relative
    output error on the calibration statistics and seconds per layer."""
    from hfprune.calibration.data import prepare_calibration
    from hfprune.calibration.sequential import capture_block_inputs
    from hfprune.criteria import get_criterion
    from hfprune.steps.scoring import compute_masks
    from hfprune.reconstruction.least_squares import (InputStatistics, make_factor, output_error, refine_rows_cg, refit_rows_exact,
                                       refit_rows_obs)
    from hfprune.structure import target_layers

    for gran in ("weights", "2:4"):
        cfg = PruningConfig(criterion="wanda", granularity=gran, sparsity=0.5,
                            targets=[f"model.layers.{args.solvers}.*"],
                            calibration={"num_samples": args.num_samples, "seq_len": args.seq_len, "batch_size": args.batch_size})
        calib = prepare_calibration(lee_texts("background"), model, cfg, tok)
        layers = target_layers(model, cfg)
        sel, _, _ = compute_masks(model, get_criterion(cfg), layers, None, calib.batches, False)
        hooks = InputStatistics(layers)
        with torch.no_grad():
            for hidden, a, kw in capture_block_inputs(model, model.model.layers[0], calib.batches):
                for b in model.model.layers[: args.solvers + 1]:
                    hooks.next_call()
                    hidden = b(hidden, *a, **kw)
                    hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        hooks.remove()
        for n, l in layers.items():
            st = hooks.stats[n]
            f = make_factor(st, args.damp, False)
            m, mu = st.moments(False)
            W = l.weight_matrix().detach().double()
            ref = float(((W @ m) * W).sum())
            row = {"layer": n, "granularity": gran, "tokens": st.n,
                   "masked": output_error(W * ~sel.masks[n], None, W, st) / ref}
            t = time.perf_counter()
            Wobs = refit_rows_obs(W.float(), sel.masks[n], f)
            row["obs_s"] = time.perf_counter() - t
            row["obs"] = output_error(W - Wobs, None, W, st) / ref
            for steps in args.cg_steps:
                t = time.perf_counter()
                Wn = refine_rows_cg(W, Wobs, sel.masks[n], f, steps)
                row[f"obs+cg{steps}_s"] = row["obs_s"] + time.perf_counter() - t
                row[f"obs+cg{steps}"] = output_error(W - Wn, None, W, st) / ref
            if not args.skip_exact:
                t = time.perf_counter()
                Wn = refit_rows_exact(W, sel.masks[n], f)
                row["exact_s"] = time.perf_counter() - t
                row["exact"] = output_error(W - Wn, None, W, st) / ref
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def main() -> None:
    ap = bench_parser(__doc__, num_samples=32, batch_size=4)
    ap.add_argument("--ppl-tokens", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--protect", type=float, default=20.0, help="outlier threshold (peak / median)")
    ap.add_argument("--damp", type=float, default=0.01)
    ap.add_argument("--compensate", choices=["0", "1"], default="1", help="EC's compensate")
    ap.add_argument("--rows", nargs="+", default=[])
    ap.add_argument("--solvers", type=int, default=None, metavar="BLOCK",
                    help="compare the OBS and exact solvers on this block's layers instead of running rows")
    ap.add_argument("--cg-steps", type=int, nargs="*", default=[10, 30, 100],
                    help="--solvers: also OBS followed by this many conjugate-gradient steps")
    ap.add_argument("--skip-exact", action="store_true", help="--solvers: leave out the (slow) exact solve")
    ap.add_argument("--out", default="bench_out/reconstruction.jsonl")
    args = ap.parse_args()
    set_threads(args.threads)
    print(device_line(), flush=True)
    base, tok = load_smollm2()
    if args.solvers is not None:
        return compare_solvers(base, tok, args)
    test = lee_texts("test")
    rows = []
    for spec in args.rows:
        for crit, gran, sp, variant in parse(spec):
            torch.manual_seed(0)
            r = {"criterion": crit, "granularity": gran, "sparsity": sp, "variant": variant,
                 "calibration": f"{args.num_samples} x {args.seq_len}", "ppl_tokens": args.ppl_tokens}
            model = copy.deepcopy(base)
            if crit != "dense":
                options = {"compensate": args.compensate == "1"} if crit == "elimination_compensation" else None
                cfg = PruningConfig(round_to=1, criterion=crit, granularity=gran, sparsity=sp, options=options,
                                    calibration={"num_samples": args.num_samples, "seq_len": args.seq_len,
                                                 "batch_size": args.batch_size})
                t = time.perf_counter()
                try:
                    info = run(model, tok, cfg, lee_texts("background"),
                               reconstruction="recon" in variant or variant in ("exact", "dense-in"),
                               method="exact" if variant == "exact" else "obs", sequential=variant != "dense-in",
                               cg_steps=0 if variant == "recon-obs" else None,
                               damp=args.damp, protect=args.protect if "protect" in variant else None)
                except Exception as e:  # a failed row is a result too
                    r["error"] = f"{type(e).__name__}: {e}"[:300]
                    print(json.dumps(r), flush=True)
                    continue
                r["prune_s"] = time.perf_counter() - t
                r["timings"] = info["timings"]
                if info["protected"]:
                    r["protected"] = sum(len(v) for v in info["protected"].values())
                rep = info["reconstruction"]
                if rep:
                    fits = rep["layers"]
                    r["recon_s"] = rep["seconds"]
                    r["rank_deficient"] = sum(f["rank_deficient"] for f in fits)
                    r["reverted"] = sum(f["reverted"] for f in fits)
                    r["mean_rel_err_before"] = sum(f["error_before"] for f in fits) / max(len(fits), 1)
                    r["mean_rel_err_after"] = sum(f["error_after"] for f in fits) / max(len(fits), 1)
            r["ppl"] = perplexity(model, tok, test, 512, args.ppl_tokens)
            rows.append(r)
            with open(args.out, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(json.dumps(r), flush=True)
            del model
    print(table(rows, ["criterion", "granularity", "sparsity", "variant", "calibration", "ppl", "prune_s", "recon_s",
                       "protected"]))


if __name__ == "__main__":
    main()
