"""Scaling of pruning with model size: peak memory and time of `prune()` on random-weight Llama-shaped models built
from the configs of real families (weights do not matter for memory and time), in bf16 and fp32, with sequential
(layer-by-layer) calibration.

    PYTHONPATH=.:scripts nice -n 5 python scripts/bench/scaling.py --shapes 0.1B 0.5B \
        --dtypes bf16 fp32 --cases a b --num-samples 8 --seq-len 512 --batch-size 4 --threads 1
    ... --shapes 1.1B --dtypes bf16 --cases a          # the 1.1B row
    ... --shapes 0.1B --dtypes bf16 --cases c          # the parameter target (expensive)
    ... --depth-check                                  # 0.1B, case a: 15 vs 30 layers x N/2 vs N samples
    ... --plot-only                                    # the plot of what --json holds

Cases: (a) wanda, neurons+heads at 25%, one KV group removed, reconstruction (default with data); (b) wanda, 50%
unstructured, reconstruction; (c) hidden+neurons+layers to 75% of the parameters (`width_depth.target_params`).
Every run is a fresh process (`run_child`); its rows are merged into --json as they come. Memory: the resident set
(VmRSS) after the imports and before the model is built is subtracted from the peak (VmHWM, reset through
/proc/self/clear_refs after the model is built, so the build's own transient is not counted); a sampler thread notes
when the peak happened, placed among the report's phases. Time: wall and CPU seconds of `prune()`; on a shared machine
compare CPU seconds with one torch thread (two threads made small factorisations 10-70x slower on a loaded 2-core
machine).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from typing import Any

import torch

import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # scripts/: the shared helpers
from _common import (MB, bench_parser, device_line, proc_status, reset_peak, run_child, save_json, set_threads,
                     table, trim_heap)

#: shape name -> (the family whose config it copies, LlamaConfig fields)
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "0.1B": ("SmolLM2-135M", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                  num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                  tie_word_embeddings=True)),
    "0.5B": ("Qwen2.5-0.5B", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                  num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                  tie_word_embeddings=True)),
    "1.1B": ("TinyLlama-1.1B", dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                    num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                                    tie_word_embeddings=False)),
    "3B": ("Llama-3.2-3B", dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                                num_attention_heads=24, num_key_value_heads=8, vocab_size=128256,
                                tie_word_embeddings=True)),
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
CASES = {"a": "wanda neurons+heads 25%, 1 KV group, refit", "b": "wanda weights 50%, refit",
         "c": "hidden+neurons+layers to 75% params"}
#: the report's phases in the order they run (calibration, scoring and selection interleave block by block)
PHASES = [("setup", ["setup"]), ("protection", ["protection"]), ("masks", ["calibration", "scoring", "selection"]),
          ("search", ["search"]), ("reconstruction", ["reconstruction"]), ("compensation", ["compensation"]),
          ("compaction", ["compaction"])]
KEY = ("shape", "layers", "dtype", "case", "samples", "seq_len", "batch", "mode")


# --- the model ------------------------------------------------------------------------------------------------------
def llama_config(shape: str, layers: int | None) -> Any:
    """The family's shape as a `LlamaConfig` (``layers`` overrides the depth)."""
    from transformers import LlamaConfig

    family, fields = SHAPES[shape]
    cfg = LlamaConfig(**{**fields, "num_hidden_layers": layers or fields["num_hidden_layers"]},
                      max_position_embeddings=2048)
    cfg._name_or_path = f"random-{family}"
    return cfg


@torch.no_grad()
def build_model(cfg: Any, dtype: torch.dtype, seed: int) -> Any:
    """`LlamaForCausalLM` built on the meta device and materialised on CPU: norms 1, every other parameter N(0, 0.02)
    (seeded) in ``dtype``; tied embeddings tied again and the rotary tables (garbage after `to_empty`) rebuilt."""
    from transformers import LlamaForCausalLM

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.to_empty(device="cpu")  # new Parameters per module: unties lm_head from embed_tokens
    if cfg.tie_word_embeddings:
        model.tie_weights()
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=cfg)  # inv_freq (float32, not persistent) computed again
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02, generator=g)
    return model.eval()


def param_count_bytes(model: Any) -> tuple[int, int]:
    """(parameters, their bytes); tied parameters once."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


# --- one run --------------------------------------------------------------------------------------------------------
def case_config(case: str, cfg: Any, params: int, calibration: dict[str, Any]) -> Any:
    """The `PruningConfig` of a case (see the module docstring)."""
    from hfprune import PruningConfig

    if case == "a":
        return PruningConfig(criterion="wanda", granularity="neurons+heads", sparsity=0.25,
                             head_sparsity=1 / cfg.num_key_value_heads, calibration=calibration)
    if case == "b":
        return PruningConfig(criterion="wanda", granularity="weights", sparsity=0.5, calibration=calibration)
    return PruningConfig(criterion="wanda", granularity="hidden+neurons+layers",
                         width_depth={"target_params": int(0.75 * params)}, calibration=calibration)


class PeakClock:
    """A thread sampling VmRSS every ``every`` seconds: when (seconds after start) the highest sample was seen."""

    def __init__(self, every: float = 0.05) -> None:
        self.every, self.best, self.at = every, 0.0, 0.0
        self._stop = threading.Event()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            rss = proc_status("VmRSS")
            if rss > self.best:
                self.best, self.at = rss, time.perf_counter() - self._start

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def phase_at(seconds: float, timings: dict[str, float]) -> str:
    """The report phase running ``seconds`` after `prune()` started (the time after the last phase: the report,
    whose probe runs the pruned model)."""
    end = 0.0
    for phase, keys in PHASES:
        end += sum(timings.get(k, 0.0) for k in keys)
        if seconds <= end:
            return phase
    return "report"


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Build the model, prune it once, and measure."""
    from hfprune import prune  # imported before the baseline: the runtime is not the model's

    set_threads(args.threads)
    cfg = llama_config(args.shape, args.layers)
    dtype = DTYPES[args.dtype]
    trim_heap()
    rss0 = proc_status("VmRSS")
    t = time.perf_counter()
    model = build_model(cfg, dtype, args.seed)
    t_build = time.perf_counter() - t
    trim_heap()
    rss_model = proc_status("VmRSS")
    params, nbytes = param_count_bytes(model)
    ids = torch.randint(0, cfg.vocab_size, (args.num_samples, args.seq_len),
                        generator=torch.Generator().manual_seed(args.seed + 1))
    calibration = {"num_samples": args.num_samples, "seq_len": args.seq_len, "batch_size": args.batch_size,
                   "mode": args.mode}
    config = case_config(args.case, cfg, params, calibration)
    trim_heap()
    exact = reset_peak()
    clock = PeakClock()
    t, cpu = time.perf_counter(), time.process_time()
    res = prune(model, config, calibration_data=ids, progress=False)
    total, cpu = time.perf_counter() - t, time.process_time() - cpu
    peak = proc_status("VmHWM")
    clock.stop()
    timings = dict(res.report.timings)
    widest = max(cfg.hidden_size, cfg.intermediate_size)  # the largest Linear in_features (down_proj's)
    tokens = args.num_samples * args.seq_len
    return {
        "shape": args.shape, "family": SHAPES[args.shape][0], "layers": cfg.num_hidden_layers, "dtype": args.dtype,
        "case": args.case, "mode": args.mode, "samples": args.num_samples, "seq_len": args.seq_len,
        "batch": args.batch_size,
        "threads": torch.get_num_threads(),
        "params": params, "params MB": nbytes / MB, "params after": res.report.params_after,
        "RSS before build MB": rss0, "model resident MB": rss_model - rss0, "build s": t_build,
        "peak MB": peak, "peak - before MB": peak - rss0, "peak / params": (peak - rss0) * MB / nbytes,
        "peak at s": clock.at, "peak phase": phase_at(clock.at, timings), "peak reset exact": exact,
        "gram fp32 MB": widest ** 2 * 4 / MB, "gram fp64 MB": widest ** 2 * 8 / MB,
        "hidden cache MB": tokens * cfg.hidden_size * torch.finfo(dtype).bits / 8 / MB,
        "logits fp32 per batch MB": args.batch_size * args.seq_len * cfg.vocab_size * 4 / MB,
        "total s": total, "cpu s": cpu, "cpu s per block": cpu / cfg.num_hidden_layers,
        "cpu ms per token": 1000 * cpu / tokens, "timings": timings,
    }


# --- the parent -----------------------------------------------------------------------------------------------------
def planned_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The runs asked for: the grid of shapes x dtypes x cases, or the depth check (0.1B, bf16, case a, half and
    full depth x half and all the samples)."""
    if args.depth_check:
        full = SHAPES["0.1B"][1]["num_hidden_layers"]
        return [{"shape": "0.1B", "dtype": "bf16", "case": "a", "layers": d, "samples": n, "mode": args.mode}
                for d in (full // 2, full) for n in (args.num_samples // 2, args.num_samples)]
    return [{"shape": s, "dtype": d, "case": c, "layers": args.depth or SHAPES[s][1]["num_hidden_layers"],
             "samples": args.num_samples, "mode": args.mode}
            for s in args.shapes for d in args.dtypes for c in args.cases]


def run_one(run: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One run in a fresh process; a run past --timeout is recorded as such."""
    cmd = [__file__, "--child", "--shape", run["shape"], "--dtype", run["dtype"], "--case", run["case"],
           "--layers", str(run["layers"]), "--num-samples", str(run["samples"]), "--seq-len", str(args.seq_len),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--seed", str(args.seed),
           "--mode", run["mode"]]
    try:
        row = run_child(cmd, timeout=args.timeout)
    except Exception as e:  # subprocess.TimeoutExpired: the child was killed
        row = {"error": f"{type(e).__name__}: over {args.timeout:.0f} s"}
    if "error" in row:
        row.update(run, seq_len=args.seq_len, batch=args.batch_size)
    return row


def run_key(row: dict[str, Any], args: argparse.Namespace | None = None) -> tuple:
    """The `KEY` of a result row, or of a planned run (its calibration sizes from ``args``)."""
    if args is not None:
        row = {**row, "seq_len": args.seq_len, "batch": args.batch_size}
    return tuple(row.get(k) for k in KEY)


def saved_rows(path: str) -> list[dict[str, Any]]:
    """The rows ``path`` holds now (read again before every write: several invocations may share it)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["rows"]


def merge(rows: list[dict[str, Any]], row: dict[str, Any]) -> list[dict[str, Any]]:
    """``rows`` with ``row`` replacing the row of the same run (same `KEY`), else appended."""
    return [r for r in rows if run_key(r) != run_key(row)] + [row]


def plot(rows: list[dict[str, Any]], path: str, samples: int) -> None:
    """Log-log: peak memory above the baseline (and the parameter bytes) and total time against parameters, one line
    per (dtype, case), full-depth runs with ``samples`` calibration sequences only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = [r for r in rows if "error" not in r and r["samples"] == samples
            and r["layers"] == SHAPES[r["shape"]][1]["num_hidden_layers"]]
    if not full:
        return
    fig, (mem, tim) = plt.subplots(1, 2, figsize=(11, 4.5))
    for dtype, case in sorted({(r["dtype"], r["case"]) for r in full}):
        sel = sorted((r for r in full if (r["dtype"], r["case"]) == (dtype, case)), key=lambda r: r["params"])
        x = [r["params"] for r in sel]
        label = f"{dtype}, ({case}) {CASES[case]}"
        line, = mem.plot(x, [r["peak - before MB"] for r in sel], "o-", label=label)
        mem.plot(x, [r["params MB"] for r in sel], ":", color=line.get_color())
        tim.plot(x, [r["total s"] for r in sel], "o-", label=label)
    for ax, ylabel in ((mem, "peak RSS - RSS before build (MB); dotted: parameter bytes"), (tim, "prune() seconds")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    tim.legend(fontsize=7)
    fig.suptitle(f"hfprune scaling, sequential calibration ({os.cpu_count()} CPU cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


COLUMNS = ["shape", "layers", "dtype", "case", "mode", "samples", "params MB", "peak - before MB", "peak / params",
           "peak phase", "gram fp64 MB", "total s", "cpu s", "cpu s per block", "cpu ms per token", "error"]


def main() -> None:
    ap = bench_parser(__doc__, num_samples=8, seq_len=512, batch_size=4)
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=["0.1B", "0.5B"])
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["bf16", "fp32"])
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=["a", "b"])
    ap.add_argument("--depth", type=int, default=None, help="blocks of every shape (default: the family's)")
    ap.add_argument("--depth-check", action="store_true", help="0.1B, bf16, case a: 15/30 layers x N/2, N samples")
    ap.add_argument("--mode", choices=["sequential", "one_pass"], default="sequential",
                    help="calibration.mode (one_pass: statistics, scores and refit in one pass; not with case c)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1500, help="seconds one run may take")
    ap.add_argument("--json", default="/tmp/bench_scaling.json", help="results, merged with what it holds")
    ap.add_argument("--png", default="/tmp/bench_scaling.png")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--again", action="store_true", help="run again what --json already holds (default: skip it)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    print(device_line())
    done = {run_key(r) for r in saved_rows(args.json) if "error" not in r} if not args.again else set()
    for run in [] if args.plot_only else planned_runs(args):
        if run_key(run, args) in done:
            continue
        row = run_one(run, args)
        print({k: row.get(k) for k in COLUMNS if k in row}, flush=True)
        save_json(args.json, {"device": device_line(), "rows": merge(saved_rows(args.json), row)})
    rows = saved_rows(args.json)
    if rows:
        print(table(rows, COLUMNS))
        plot(rows, args.png, args.num_samples)


if __name__ == "__main__":
    main()
