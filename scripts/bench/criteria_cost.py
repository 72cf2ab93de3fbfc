"""The cost of each research criterion's calibration statistics on SmolLM2-135M,
against plain passes of the same model over the same tokens, and the statistics' memory against the weights
of the layers being scored.

Targets: expressiveness and relative-importance statistics <= 1.5x plain forward passes; elimination-
compensation with ec_output='layer' <= 1.5x forward; with ec_output='network' <= 3x forward+backward passes;
statistics memory <= 3x the scored layers' weights.

    PYTHONPATH=. python scripts/bench/criteria_cost.py                       # packaged SmolLM2, CPU, Lee text
    python scripts/bench/criteria_cost.py --model config:scripts/configs/smollm2-135m --device cuda \
        --dtype bfloat16 --data random                                     # same shapes, random weights, GPU

Cost does not depend on the weights' values, so the GPU run builds the model from its config (random weights,
random token ids) where the packaged checkpoint cannot travel; the table says which.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

import torch

from hfprune import PruningConfig
from hfprune.calibration.collector import collect_statistics
from hfprune.calibration.forward import run_model
from hfprune.criteria import get_criterion
from hfprune.structure import find_groups, target_layers

CASES: dict[str, dict[str, Any]] = {
    "expressiveness": {"criterion": "expressiveness", "granularity": "neurons"},
    "relative_importance": {"criterion": "relative_importance", "granularity": "weights"},
    "ec layer": {"criterion": "elimination_compensation", "granularity": "weights", "options": {"output": "layer"}},
    "ec network": {"criterion": "elimination_compensation", "granularity": "weights", "options": {"output": "network"}},
    "ec network, 4 projections": {"criterion": "elimination_compensation", "granularity": "weights", "options": {"output": "network", "projections": 4}},
    "ec loss": {"criterion": "elimination_compensation", "granularity": "weights", "options": {"output": "loss"}},
    "taylor": {"criterion": "taylor", "granularity": "weights"},
    "wanda (reference)": {"criterion": "wanda", "granularity": "weights"},
}


def load(spec: str, device: str, dtype: torch.dtype) -> tuple[Any, str]:
    """(model, description). ``smollm2``: the packaged checkpoint; ``config:PATH``: random weights from a config."""
    import transformers

    if spec == "smollm2":
        from hfprune.examples import load_smollm2

        model, _ = load_smollm2()
        what = "SmolLM2-135M-Instruct (packaged weights)"
    else:
        config = transformers.AutoConfig.from_pretrained(spec.split(":", 1)[1])
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config)
        what = f"{config.model_type} from {spec.split(':', 1)[1]} (random weights)"
    return model.to(device=device, dtype=dtype).eval(), what


def batches_for(model: Any, data: str, num_samples: int, seq_len: int, batch_size: int, device: str) -> list[dict]:
    if data == "random":
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.config.vocab_size, (num_samples, seq_len), generator=g)
    else:
        import transformers

        from hfprune.calibration.data import prepare_calibration
        from hfprune.examples import SMOLLM2_GGUF, lee_texts, smollm2_dir

        tok = transformers.AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
        cfg = PruningConfig(calibration={"num_samples": num_samples, "seq_len": seq_len, "batch_size": batch_size})
        ids = torch.cat([b["input_ids"] for b in prepare_calibration(lee_texts("background"), model, cfg, tok).batches])
    return [{"input_ids": ids[i:i + batch_size].to(device)} for i in range(0, len(ids), batch_size)]


def timed(fn: Callable[[], Any], device: str) -> float:
    """Seconds of ``fn``: wall time on a GPU; this process's CPU time on a CPU (with ``--threads 1`` the CPU time is
    what other processes on a shared machine disturb least)."""
    if device == "cuda":
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t
    t = time.process_time()
    fn()
    return time.process_time() - t


def forward(model: Any, batches: list[dict]) -> None:
    with torch.no_grad():
        for b in batches:
            run_model(model, b)


def forward_backward(model: Any, batches: list[dict]) -> None:
    """One forward and one backward (language-modelling loss, weight gradients) per batch."""
    for b in batches:
        model(**b, labels=b["input_ids"]).loss.backward()
        model.zero_grad(set_to_none=True)


def stats_bytes(stats: dict) -> int:
    return sum(t.numel() * t.element_size() for s in stats.values() for t in s.values())


def measure(model: Any, batches: list[dict], name: str, case: dict, device: str, repeats: int) -> dict:
    config = PruningConfig(sparsity=0.5, **case)
    criterion = get_criterion(config)
    layers = target_layers(model, config)
    groups = find_groups(model, config) if config.parts != ["weights"] else None
    observed = criterion.observed_layers(layers, groups)
    weight_bytes = sum(layers[n].weight.numel() * layers[n].weight.element_size() for n in observed)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if device == "cuda" else 0
    times, stats = [], {}
    for _ in range(repeats):
        stats = {}

        def run() -> None:
            nonlocal stats
            stats = collect_statistics(model, criterion, layers, observed, batches, progress=False)

        times.append(timed(run, device))
    row = {"criterion": name, "statistics s": min(times), "stats MB": stats_bytes(stats) / 2**20,
           "scored weights MB": weight_bytes / 2**20, "stats / weights": stats_bytes(stats) / weight_bytes}
    if device == "cuda":
        row["peak extra GPU MB"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="'smollm2' (packaged) or 'config:PATH' (random weights)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--data", default="lee", choices=["lee", "random"], help="Lee news text or random token ids")
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each measurement (minimum reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch default)")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model, what = load(args.model, args.device, dtype)
    batches = batches_for(model, args.data, args.num_samples, args.seq_len, args.batch_size, args.device)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{what}, {args.dtype}, {where}, {args.num_samples} x {args.seq_len} tokens ({args.data}), "
          f"batch {args.batch_size}, torch {torch.__version__}", flush=True)
    forward(model, batches[:1])  # warm-up
    fwd = min(timed(lambda: forward(model, batches), args.device) for _ in range(args.repeats))
    fwd_bwd = min(timed(lambda: forward_backward(model, batches), args.device) for _ in range(args.repeats))
    print(f"plain forward {fwd:.3f} s, forward+backward {fwd_bwd:.3f} s", flush=True)
    rows = []
    for name in args.cases:
        row = measure(model, batches, name, CASES[name], args.device, args.repeats)
        grads = get_criterion(PruningConfig(sparsity=0.5, **CASES[name])).grad_mode is not None
        target = "<= 3x fwd+bwd" if name.startswith("ec network") else "-" if grads else "<= 1.5x fwd"
        row.update({"vs": "fwd+bwd" if grads else "fwd", "ratio": row["statistics s"] / (fwd_bwd if grads else fwd),
                    "target": target})
        rows.append(row)
        print(json.dumps(row), flush=True)
    taylor = next((r["statistics s"] for r in rows if r["criterion"] == "taylor"), None)
    for r in rows:  # issue 11: EC's default at most 2x Taylor's time per calibration token
        r["vs taylor"] = r["statistics s"] / taylor if taylor else float("nan")
    cols = ["criterion", "statistics s", "vs", "ratio", "target", "vs taylor", "stats MB", "scored weights MB",
            "stats / weights"]
    cols += ["peak extra GPU MB"] if args.device == "cuda" else []
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setting": what, "args": vars(args), "forward s": fwd, "forward+backward s": fwd_bwd,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
