"""Memory and parallel time of pruning SmolLM2-135M: (a) peak memory of pruning, sequential (layer-by-layer) vs default (full)
calibration, target <= 1.3x the model's own parameter bytes in sequential mode; (b) calibration time with 1 vs 2
processes (torchrun, gloo, CPU).

    PYTHONPATH=. python scripts/bench/scale.py --num-samples 64 --seq-len 512 --batch-size 8
    PYTHONPATH=. python scripts/bench/scale.py --skip memory --ddp-samples 8 --ddp-seq-len 256

Every measurement runs in a fresh process. Memory: the resident set (VmRSS) just before the model is loaded (runtime, GGUF
reader and tokenizer already loaded) is subtracted from the peak; the peak counter (VmHWM, and getrusage's ru_maxrss with it) is reset through
/proc/self/clear_refs after loading, so the transient of the GGUF dequantisation is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # scripts/: the shared helpers
from _common import (MB, bench_parser, device_line, lee_texts, load_smollm2, proc_status, reset_peak, run_child,
                     save_json, set_threads, table, token_batches, trim_heap)



def child_memory(args) -> dict:
    from hfprune import PruningConfig, prune
    from hfprune.calibration.data import CalibrationSet, prepare_calibration
    from hfprune.criteria import get_criterion
    from hfprune.steps.scoring import compute_masks
    from hfprune.structure import target_layers

    import gguf  # noqa: F401  (imported by the GGUF loader: part of the runtime, not of the model)
    from transformers import AutoTokenizer

    from hfprune.examples import SMOLLM2_GGUF, smollm2_dir

    set_threads(args.threads)
    AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)  # the tokenizer's memory is not the model's
    trim_heap()
    rss0 = proc_status("VmRSS")
    model, tok = load_smollm2()
    trim_heap()
    rss_model = proc_status("VmRSS")
    param_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / MB
    config = PruningConfig(criterion="wanda", sparsity=0.5,
                           calibration={"num_samples": args.num_samples, "seq_len": args.seq_len, "batch_size": args.batch_size, "mode": args.mode})
    batches = prepare_calibration(lee_texts(), model, config, tok).batches
    crit, layers = get_criterion(config), target_layers(model, config)
    calib = CalibrationSet(batches, "data")
    trim_heap()
    exact = reset_peak()
    t = time.perf_counter()
    compute_masks(model, crit, layers, None, calib.batches, progress=False)
    t_masks = time.perf_counter() - t
    peak_masks = proc_status("VmHWM")
    trim_heap()
    reset_peak()
    t = time.perf_counter()
    prune(model, config, calibration_data=batches, progress=False)
    t_prune = time.perf_counter() - t
    peak_prune = proc_status("VmHWM")
    cfg = model.config
    return {
        "mode": args.mode, "batch": args.batch_size, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "params MB": param_mb, "RSS before load MB": rss0, "model resident MB": rss_model - rss0,
        "peak compute_masks - before load MB": peak_masks - rss0, "peak prune() - before load MB": peak_prune - rss0,
        "compute_masks ratio": (peak_masks - rss0) / param_mb, "prune() ratio": (peak_prune - rss0) / param_mb,
        "compute_masks s": t_masks, "prune() s": t_prune, "peak reset exact": exact,
        "hidden cache MB": args.num_samples * args.seq_len * cfg.hidden_size * 4 / MB,
        "logits per batch MB": args.batch_size * args.seq_len * cfg.vocab_size * 4 / MB,
    }


def child_ddp(args) -> dict:
    import torch.distributed as dist

    from hfprune import PruningConfig
    from hfprune.calibration.collector import collect_statistics
    from hfprune.calibration.forward import run_model
    from hfprune.criteria import get_criterion
    from hfprune.structure import target_layers

    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    set_threads(args.threads)
    model, tok = load_smollm2()
    batches = token_batches(tok, model, args.ddp_samples, args.ddp_seq_len, args.ddp_batch_size)
    config = PruningConfig(criterion="wanda",
                           calibration={"num_samples": args.ddp_samples, "seq_len": args.ddp_seq_len, "batch_size": args.ddp_batch_size})
    crit, layers = get_criterion(config), target_layers(model, config)
    with torch.no_grad():
        run_model(model, batches[0])  # warm-up
    if dist.is_initialized():
        dist.barrier()
    t, c = time.perf_counter(), time.process_time()
    collect_statistics(model, crit, layers, list(layers), batches, progress=False)
    wall, cpu = torch.tensor([time.perf_counter() - t]), torch.tensor([time.process_time() - c])
    world = 1
    if dist.is_initialized():
        world = dist.get_world_size()
        dist.all_reduce(wall, op=dist.ReduceOp.MAX)
        dist.all_reduce(cpu, op=dist.ReduceOp.SUM)
        if dist.get_rank() != 0:
            sys.exit(0)
    return {"processes": world, "threads each": args.threads, "batches": len(batches), "wall s": float(wall),
            "cpu s (all processes)": float(cpu)}


def main() -> None:
    ap = bench_parser(__doc__, num_samples=64, batch_size=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch default)")
    ap.add_argument("--modes", nargs="+", default=["sequential", "full"])
    ap.add_argument("--ddp-samples", type=int, default=8)
    ap.add_argument("--ddp-seq-len", type=int, default=256)
    ap.add_argument("--ddp-batch-size", type=int, default=2)
    ap.add_argument("--mmap-threshold", type=int, default=0,
                    help="set glibc's MALLOC_MMAP_THRESHOLD_ (bytes) for the memory runs; 0: glibc's dynamic default")
    ap.add_argument("--skip", choices=["memory", "ddp"], default=None)
    ap.add_argument("--json", default="/tmp/bench_scale.json")
    ap.add_argument("--child", choices=["memory", "ddp"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_memory(args) if args.child == "memory" else child_ddp(args)), flush=True)
        return
    print(device_line())
    out = {"args": vars(args)}
    common = ["--num-samples", str(args.num_samples), "--seq-len", str(args.seq_len), "--batch-size",
              str(args.batch_size), "--threads", str(args.threads)]
    if args.skip != "memory":
        if args.mmap_threshold:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
        rows = []
        for mode in args.modes:
            rows.append(run_child([__file__, "--child", "memory", "--mode", mode, *common], timeout=7200))
            print(rows[-1], flush=True)
        print(f"\n(a) Peak memory of Wanda 50% unstructured, {args.num_samples} x {args.seq_len} tokens, batch "
              f"{args.batch_size} (target: sequential <= 1.3x the parameter bytes)\n")
        print(table(rows))
        out["memory"] = rows
    if args.skip != "ddp":
        os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        ddp = ["--ddp-samples", str(args.ddp_samples), "--ddp-seq-len", str(args.ddp_seq_len), "--ddp-batch-size",
               str(args.ddp_batch_size)]
        runs = [([__file__], 1), ([__file__], 2),
                (["-m", "torch.distributed.run", "--nproc_per_node", "2", __file__], 1)]
        rows = []
        for prefix, threads in runs:
            rows.append(run_child([*prefix, "--child", "ddp", "--threads", str(threads), *ddp], timeout=7200))
            print(rows[-1], flush=True)
        print(f"\n(b) Wanda calibration of SmolLM2, {args.ddp_samples} x {args.ddp_seq_len} tokens, batch "
              f"{args.ddp_batch_size}, 1 vs 2 processes ({os.cpu_count()} CPU cores in all)\n")
        print(table(rows))
        out["ddp"] = rows
    save_json(args.json, out)


if __name__ == "__main__":
    main()
