"""SmolLM2-135M to a parameter target before recovery: hfprune's searched model (reconstruction on every axis) vs
width only (hidden + neurons, no reconstruction: Minitron's recipe) vs depth only (ShortGPT's Block Influence, no
reconstruction), at equal parameters, evaluated in and out of the calibration domain.

Perplexity (hfprune's one protocol: ``--eval-tokens`` tokens in ``--eval-seq-len`` windows) on held-out lee.cor
(the calibration domain when calibrating on lee_background), the 200 movie-review sentences of
pang_lee_polarity.cor, and Python's own documentation text (``pydoc_data.topics``). Calibration (``--calibration``):
lee_background, text the model generates itself, or a half/half mix. Each pruned model can be saved
(``--save-dir``) for a recovery run. Results go to ``--out`` after every method.

    PYTHONPATH=.:scripts nice -n 5 python scripts/bench/target_size.py --num-samples 64 --seq-len 512 \\
        --methods hfprune width depth --out bench_out/target_size.json
"""

from __future__ import annotations

import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/: _common

import torch  # noqa: E402
from _common import bench_parser, device_line, lee_texts, load_smollm2, perplexity, save_json, set_threads  # noqa: E402

from hfprune.config.pruning_config import PruningConfig  # noqa: E402
from hfprune.examples import polarity_sentences  # noqa: E402
from hfprune.prune import prune  # noqa: E402
from hfprune.report.measure import count_params  # noqa: E402


def pydoc_texts() -> list[str]:
    """Python's own documentation topics (natural technical English shipped with Python), in a fixed order."""
    import pydoc_data.topics as topics

    return [topics.topics[k] for k in sorted(topics.topics)]


EVAL_SETS = {"lee": lambda: lee_texts("test"), "movies": lambda: polarity_sentences()[0], "pydoc": pydoc_texts}


def evaluate(model, tok, args) -> dict[str, float]:
    return {name: round(perplexity(model, tok, texts(), args.eval_seq_len, args.eval_tokens), 3)
            for name, texts in EVAL_SETS.items()}


def config_for(method: str, args) -> PruningConfig:
    calibration = {"num_samples": args.num_samples, "seq_len": args.seq_len, "batch_size": args.batch_size,
                   "source": {"lee": "data", "generated": "generated", "mixed": "mixed"}[args.calibration]}
    round_to = args.round_to if args.round_to == "auto" else int(args.round_to)
    common = dict(criterion="wanda", calibration=calibration, seed=0, round_to=round_to)
    if method == "hfprune":
        return PruningConfig(granularity=args.granularity, **common,
                             width_depth={"target_params": args.target, "search_refits": args.search_refits})
    if method == "hfprune-norefit":
        return PruningConfig(granularity=args.granularity, reconstruction={"method": "none"}, **common,
                             width_depth={"target_params": args.target, "search_refits": 0})
    if method == "width":  # Minitron: residual width (activation score) + FFN neurons, no refit, no RMS rescale
        return PruningConfig(granularity="hidden+neurons", reconstruction={"method": "none"}, **common,
                             width_depth={"target_params": args.target, "search_refits": 0, "rescale_norms": False})
    if method == "depth":  # ShortGPT: whole blocks by Block Influence, no refit
        return PruningConfig(granularity="layers", reconstruction={"method": "none"}, **common,
                             width_depth={"target_params": args.target})
    raise ValueError(method)


def main() -> None:
    ap = bench_parser(__doc__, num_samples=64, seq_len=512, batch_size=4)
    ap.add_argument("--methods", nargs="+", default=["hfprune", "width", "depth"],
                    choices=["hfprune", "hfprune-norefit", "width", "depth"])
    ap.add_argument("--target", default="100M")
    ap.add_argument("--granularity", default="hidden+neurons+layers")
    ap.add_argument("--search-refits", type=int, default=4)
    ap.add_argument("--round-to", default="auto", help="'auto' (the default grid) or an integer multiple")
    ap.add_argument("--calibration", choices=["lee", "generated", "mixed"], default="lee")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-dir", default=None, help="save each pruned model to SAVE_DIR/METHOD")
    ap.add_argument("--out", default="bench_out/target_size.json")
    args = ap.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    base, tok = load_smollm2()
    data = None if args.calibration == "generated" else lee_texts("background")
    out = {"device": device_line(), "args": vars(args), "rows": []}
    dense = evaluate(base, tok, args)
    out["dense"] = {"params": count_params(base)[0], "ppl": dense}
    print("dense", out["dense"], flush=True)
    save_json(args.out, out)
    for method in args.methods:
        model = copy.deepcopy(base)
        t = time.perf_counter()
        res = prune(model, config_for(method, args), data, tokenizer=tok, progress=False)
        seconds = time.perf_counter() - t
        ppl = evaluate(model, tok, args)
        search = res.info.groups.get("target_params", {})
        row = {"method": method, "params": count_params(model)[0], "ppl": ppl,
               "x_dense": {k: round(v / dense[k], 3) for k, v in ppl.items()}, "seconds": round(seconds, 1),
               "timings": {k: round(v, 1) for k, v in res.report.timings.items()},
               "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size,
               "intermediate": model.config.intermediate_size, "heads": model.config.num_attention_heads,
               "chosen": search.get("chosen"), "candidates": search.get("candidates"),
               "reconstruction": {k: res.report.reconstruction.get(k) for k in ("seconds",)}
               if res.report.reconstruction else None,
               "calibration": res.report.calibration}
        out["rows"].append(row)
        print(method, {k: row[k] for k in ("params", "ppl", "x_dense", "seconds", "layers", "hidden",
                                           "intermediate", "heads")}, flush=True)
        if args.save_dir:
            res.save_pretrained(os.path.join(args.save_dir, method), overwrite=True, tokenizer=tok)
        save_json(args.out, out)
        del model


if __name__ == "__main__":
    main()
