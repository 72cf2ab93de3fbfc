"""Width and depth pruning of SmolLM2-135M before recovery: plain reference implementations of ShortGPT (Block
Influence) and Minitron width (embedding-channel activation importance) against hfprune at equal parameters, and
``target_params=100M``.

    nice -n 10 python scripts/bench/width_depth.py --parts depth width target --out bench_out/width_depth.json

Perplexity on held-out lee.cor (``--ppl-tokens`` tokens in ``--ppl-seq-len`` windows), calibration on
lee_background (``--num-samples`` x ``--seq-len``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/: _common
from _common import bench_parser, device_line, lee_texts, load_smollm2, median_time, perplexity, save_json, \
    token_batches  # noqa: E402

from hfprune.config.pruning_config import PruningConfig  # noqa: E402
from hfprune.report.measure import count_macs, count_params, dummy_input  # noqa: E402
from hfprune.prune import prune  # noqa: E402
from hfprune.width_depth.plan import Plan, apply_plan, compute_scores, hidden_keep_count, hidden_multiple  # noqa: E402


# --- plain reference implementations (no hfprune) ---------------------------------------------------------------
@torch.no_grad()
def reference_block_influence(model, batches) -> list[float]:
    """ShortGPT as its reference code does it: hidden_states from output_hidden_states (the last one is after the
    final norm), BI_k = 1 - mean over tokens of cos(h_k, h_{k+1})."""
    sums, n = None, 0
    for b in batches:
        hs = model(**b, output_hidden_states=True, use_cache=False).hidden_states
        bi = torch.stack([1 - torch.nn.functional.cosine_similarity(hs[k], hs[k + 1], dim=-1).sum()
                          for k in range(len(hs) - 1)])
        sums = bi if sums is None else sums + bi
        n += hs[0].shape[0] * hs[0].shape[1]
    return (sums / n).tolist()


def reference_remove_blocks(model, drop: list[int]) -> None:
    layers = model.model.layers
    kept = [l for i, l in enumerate(layers) if i not in set(drop)]
    model.model.layers = torch.nn.ModuleList(kept)
    for i, l in enumerate(kept):
        l.self_attn.layer_idx = i
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [t for i, t in enumerate(model.config.layer_types) if i not in set(drop)]


@torch.no_grad()
def reference_minitron_scores(model, batches) -> torch.Tensor:
    """Minitron: sum over every input/post-attention RMSNorm output of mean_t |x_c|."""
    acc = torch.zeros(model.config.hidden_size, dtype=torch.float64)
    hooks = []

    def add(module, args, out) -> None:
        acc.add_(out.abs().reshape(-1, out.shape[-1]).double().mean(0))

    for layer in model.model.layers:
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            hooks.append(norm.register_forward_hook(add))
    for b in batches:
        model(**b, use_cache=False)
    for h in hooks:
        h.remove()
    return acc


@torch.no_grad()
def reference_width_prune(model, keep_idx: torch.Tensor) -> None:
    """Slice every residual-stream tensor of a Llama model (embeddings tied with the LM head)."""
    def lin(m, dim):
        m.weight = torch.nn.Parameter(m.weight.index_select(dim, keep_idx).contiguous())
        if dim == 1:
            m.in_features = len(keep_idx)
        else:
            m.out_features = len(keep_idx)

    emb = model.model.embed_tokens
    emb.weight = torch.nn.Parameter(emb.weight[:, keep_idx].contiguous())
    for layer in model.model.layers:
        for m in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.gate_proj,
                  layer.mlp.up_proj):
            lin(m, 1)
        lin(layer.self_attn.o_proj, 0)
        lin(layer.mlp.down_proj, 0)
        for n in (layer.input_layernorm, layer.post_attention_layernorm):
            n.weight = torch.nn.Parameter(n.weight[keep_idx].contiguous())
    model.model.norm.weight = torch.nn.Parameter(model.model.norm.weight[keep_idx].contiguous())
    model.lm_head.weight = emb.weight
    model.config.hidden_size = len(keep_idx)


# --- measurement helpers ----------------------------------------------------------------------------------------
def ppl(model, tok, args) -> float:
    return round(perplexity(model, tok, lee_texts("test"), args.ppl_seq_len, args.ppl_tokens), 2)


def params(model) -> int:
    return count_params(model)[0]


def depth_part(base, tok, batches, args) -> list[dict]:
    rows = []
    t = time.perf_counter()
    bi = reference_block_influence(base, batches)
    ref_s = time.perf_counter() - t
    order = sorted(range(len(bi)), key=lambda k: bi[k])
    for n in args.blocks:
        m = copy.deepcopy(base)
        reference_remove_blocks(m, sorted(order[:n]))
        rows.append({"method": "reference ShortGPT BI", "removed": n, "blocks": sorted(order[:n]),
                     "params": params(m), "ppl": ppl(m, tok, args), "score_s": round(ref_s, 1),
                     "calibration": f"{len(batches) * args.batch_size} x {args.seq_len}"})
        del m
        print(rows[-1], flush=True)
    skip_batches = [{k: v[: args.skip_loss_samples] for k, v in batches[0].items()}]
    for crit, data in (("block_influence", batches), ("skip_loss", skip_batches)):
        cfg = PruningConfig(granularity="layers", width_depth={"block_score": crit})
        t = time.perf_counter()
        scores = compute_scores(base, cfg, data)  # the fractions do not change the scores: computed once
        score_s = time.perf_counter() - t
        for n in args.blocks:
            m = copy.deepcopy(base)
            done = apply_plan(m, cfg, Plan(layers=n), scores)
            rows.append({"method": f"hfprune {crit}", "removed": n, "blocks": done.kept["layers"]["removed"],
                         "params": params(m), "ppl": ppl(m, tok, args), "score_s": round(score_s, 1),
                         "calibration": f"{sum(len(b['input_ids']) for b in data)} x {args.seq_len}"})
            del m
            print(rows[-1], flush=True)
    return rows


def width_part(base, tok, batches, args) -> list[dict]:
    rows = []
    ref = reference_minitron_scores(base, batches)
    width = base.config.hidden_size
    cfg = PruningConfig(granularity="hidden")
    mini = compute_scores(base, cfg, batches)  # Minitron score + each norm's input second moments
    mag = compute_scores(base, dataclasses.replace(cfg,
                                                   width_depth=dataclasses.replace(cfg.width_depth, channel_score="magnitude")), [])
    no_rescale = dataclasses.replace(mini, norm_sq={})
    for frac in args.hidden:
        exact = width - int(round(frac * width))
        kept = hidden_keep_count(width, frac, cfg, hidden_multiple(base, cfg))
        for k in sorted({exact, kept}):
            m = copy.deepcopy(base)
            keep_idx = torch.sort(torch.argsort(ref, descending=True, stable=True)[:k]).values
            reference_width_prune(m, keep_idx)
            rows.append({"method": "reference Minitron width", "hidden_sparsity": frac, "kept": k,
                         "params": params(m), "ppl": ppl(m, tok, args)})
            print(rows[-1], flush=True)
            del m
        for name, scores in (("minitron", no_rescale), ("minitron + RMS rescale", mini), ("magnitude", mag)):
            m = copy.deepcopy(base)
            apply_plan(m, cfg, Plan(hidden=kept), scores)
            rows.append({"method": f"hfprune {name}", "hidden_sparsity": frac, "kept": kept, "params": params(m),
                         "ppl": ppl(m, tok, args)})
            print(rows[-1], flush=True)
            del m
    return rows


_CHILD = """
import json, sys, torch, transformers
path = sys.argv[1]
m = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
tok = transformers.AutoTokenizer.from_pretrained(path)
ids = tok("The prime minister said", return_tensors="pt")
out = m.generate(**ids, max_new_tokens=12, do_sample=False)
print(json.dumps({"hfprune_imported": "hfprune" in sys.modules, "layers": m.config.num_hidden_layers,
                  "hidden": m.config.hidden_size, "text": tok.decode(out[0]), "tokens": out[0].tolist()}))
"""


def target_part(base, tok, batches, args) -> list[dict]:
    batches = batches[: max(1, args.target_samples // args.batch_size)]
    m = copy.deepcopy(base)
    cfg = PruningConfig(granularity=args.target_granularity, criterion="wanda",
                        width_depth={"target_params": args.target},
                        calibration={"num_samples": len(batches) * args.batch_size, "seq_len": args.seq_len, "batch_size": args.batch_size})
    t = time.perf_counter()
    res = prune(m, cfg, batches, progress=False)
    secs = time.perf_counter() - t
    dummy, _ = dummy_input(m, 512)
    torch.set_num_threads(1)
    with torch.no_grad():
        t_dense = median_time(lambda: base(**dummy), repeats=5, clock=time.process_time)
        t_pruned = median_time(lambda: m(**dummy), repeats=5, clock=time.process_time)
    torch.set_num_threads(args.threads)
    row = {"method": f"hfprune target_params {args.target} ({args.target_granularity})",
           "params": params(m), "ppl": ppl(m, tok, args), "prune_and_search_s": round(secs, 1),
           "calibration": f"{len(batches) * args.batch_size} x {args.seq_len}",
           "macs_ratio": round(count_macs(base, dummy) / count_macs(m, dummy), 3),
           "cpu_speedup_1thread": round(t_dense / t_pruned, 3), "loader": res.report.loader,
           "chosen": res.info.groups["target_params"]["chosen"],
           "candidates": res.info.groups["target_params"]["candidates"],
           "layers": m.config.num_hidden_layers, "hidden": m.config.hidden_size,
           "intermediate": m.config.intermediate_size}
    with tempfile.TemporaryDirectory() as d:
        res.save_pretrained(d, overwrite=True, tokenizer=tok)
        p = subprocess.run([sys.executable, "-c", _CHILD, d], capture_output=True, text=True, timeout=600)
        line = [l for l in p.stdout.splitlines() if l.startswith("{")]
        row["reload"] = json.loads(line[-1]) if line else {"error": p.stderr[-500:]}
        with torch.no_grad():
            ids = tok("The prime minister said", return_tensors="pt")
            row["in_memory_tokens_match"] = m.generate(**ids, max_new_tokens=12, do_sample=False)[0].tolist() == \
                row["reload"].get("tokens")
    print(row, flush=True)
    return [row]


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--parts", nargs="+", default=["depth", "width", "target"])
    ap.add_argument("--blocks", type=int, nargs="+", default=[3, 6, 8])
    ap.add_argument("--hidden", type=float, nargs="+", default=[0.1, 0.2])
    ap.add_argument("--skip-loss-samples", type=int, default=2, help="Calibration sequences for skip_loss (one "
                    "pass per block).")
    ap.add_argument("--target-samples", type=int, default=8, help="Calibration sequences for the target_params "
                    "run (scores and candidate losses).")
    ap.add_argument("--target", default="100M")
    ap.add_argument("--target-granularity", default="hidden+neurons+layers")
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--ppl-seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench_out/width_depth.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    base, tok = load_smollm2()
    batches = token_batches(tok, base, args.num_samples, args.seq_len, args.batch_size)
    results = {"device": device_line(), "calibration": f"{args.num_samples} x {args.seq_len} lee_background",
               "ppl_eval": f"{args.ppl_tokens} lee.cor tokens in {args.ppl_seq_len}-token windows",
               "dense": {"params": params(base), "ppl": ppl(base, tok, args)}}
    print(results, flush=True)
    for part in args.parts:
        results[part] = {"depth": depth_part, "width": width_part, "target": target_part}[part](base, tok, batches,
                                                                                              args)
        save_json(args.out, results)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
