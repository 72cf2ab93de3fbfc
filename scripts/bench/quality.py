"""Quality after pruning. SmolLM2-135M calibrated on lee_background, perplexity on held-out lee.cor:
unstructured 50% and 2:4, structured FFN neurons 20/30% and one KV group of three, every registered criterion
that applies, against Torch-Pruning's magnitude and Taylor importance on the same MLP widths. MiniLM: cosine
similarity of pruned vs dense sentence embeddings on held-out Lee sentences at 30/50% FFN neurons.

    PYTHONPATH=. python scripts/bench/quality.py
    PYTHONPATH=. python scripts/bench/quality.py --num-samples 16 --ppl-tokens 8192 --only smollm2
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time

import torch
import torch.nn.functional as F

import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # scripts/: the shared helpers
from _common import (device_line, lee_sentences, lee_texts, load_minilm, load_smollm2, perplexity, save_json,
                     sentence_embeddings, set_threads, supports, table, token_batches)
from hfprune import PruningConfig, prune
from hfprune.criteria import available_criteria
from hfprune.report.measure import count_params

UNSTRUCTURED = ["magnitude", "wanda", "elimination_compensation", "relative_importance"]
STRUCTURED = ["magnitude", "taylor", "expressiveness", "hybrid", "elimination_compensation"]


def hf_run(model, tok, args, criterion, granularity, sparsity, head_sparsity=None, scope="local") -> dict:
    cfg = PruningConfig(round_to=1, criterion=criterion, granularity=granularity, sparsity=sparsity, head_sparsity=head_sparsity,
                        scope=scope,
                        calibration={"num_samples": args.num_samples, "seq_len": args.seq_len, "batch_size": args.batch_size})
    t = time.perf_counter()
    res = prune(copy.deepcopy(model), cfg, calibration_data=lee_texts("background"), tokenizer=tok, progress=False)
    secs = time.perf_counter() - t
    ppl = perplexity(res.model, tok, lee_texts("test"), args.ppl_seq_len, args.ppl_tokens)
    return {"ppl": ppl, "prune s": secs, "params": res.report.params_after}


# --- Torch-Pruning on the MLPs -----------------------------------------------------------------------------------
def _tp_group_scores(model, batches, importance: str, sparsity: float, scope: str = "local"):
    """TP's DependencyGraph groups of each MLP's up_proj output channels, scored by TP's importance; prune them with
    TP itself (group.prune()) and rewrite intermediate_size (``scope="local"``; ``"global"`` ranks every layer's
    scores together, as TP's own global pruning does with its default mean-normalised importances, and leaves
    per-layer widths that `hfprune.load_pruned` reloads). Returns a note on how it went."""
    import torch_pruning as tp

    example = {"input_ids": batches[0]["input_ids"][:1]}
    model.config.use_cache = False
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    imp = tp.importance.GroupMagnitudeImportance(p=2) if importance == "magnitude" \
        else tp.importance.GroupTaylorImportance()
    if importance == "taylor":
        model.zero_grad()
        for b in batches:
            model(**b, labels=b["input_ids"]).loss.backward()
    ups, scores, deps = [], [], 0
    for layer in model.model.layers:
        up = layer.mlp.up_proj
        group = dg.get_pruning_group(up, tp.prune_linear_out_channels, idxs=list(range(up.out_features)))
        ups.append(up)
        scores.append(imp(group))
        deps = len(group)
    if scope == "global":
        flat = torch.cat(scores)
        cut = flat.sort().values[int(round(flat.numel() * sparsity)) - 1]
        plans = [(up, (sc <= cut).nonzero().flatten().tolist()) for up, sc in zip(ups, scores)]
    else:
        plans = [(up, sc.argsort()[: int(round(sc.numel() * sparsity))].tolist()) for up, sc in zip(ups, scores)]
    for up, idxs in plans:
        if idxs:
            dg.get_pruning_group(up, tp.prune_linear_out_channels, idxs=idxs).prune()
    model.zero_grad(set_to_none=True)
    model.config.intermediate_size = max(layer.mlp.up_proj.out_features for layer in model.model.layers)
    return f"TP DependencyGraph, {deps} dependencies per group, {scope} ranking"


def _manual_mlp(model, batches, importance: str, sparsity: float) -> str:
    """Fallback: TP's group magnitude / Taylor formula (p=2, mean over the group's gate/up rows and down columns)
    computed directly, then the MLP sliced."""
    if importance == "taylor":
        model.zero_grad()
        for b in batches:
            model(**b, labels=b["input_ids"]).loss.backward()
    for layer in model.model.layers:
        mlp = layer.mlp
        parts = [(mlp.gate_proj.weight, 1), (mlp.up_proj.weight, 1), (mlp.down_proj.weight, 0)]
        if importance == "magnitude":
            s = sum(w.detach().pow(2).sum(d) for w, d in parts) / 3
        else:
            s = sum((w.detach() * w.grad).abs().sum(d) for w, d in parts) / 3
        n = s.numel()
        keep = s.argsort(descending=True)[: n - int(round(n * sparsity))].sort().values
        with torch.no_grad():
            for lin, dim in ((mlp.gate_proj, 0), (mlp.up_proj, 0), (mlp.down_proj, 1)):
                lin.weight = torch.nn.Parameter(lin.weight.index_select(dim, keep).clone())
                if dim == 0:
                    lin.out_features = len(keep)
                else:
                    lin.in_features = len(keep)
    model.zero_grad(set_to_none=True)
    model.config.intermediate_size = model.model.layers[0].mlp.up_proj.out_features
    return "fallback: TP formula computed directly"


def tp_run(model, tok, args, importance, sparsity, batches, scope="local") -> dict:
    m = copy.deepcopy(model)
    t = time.perf_counter()
    try:
        note = _tp_group_scores(m, batches, importance, sparsity, scope)
    except Exception as e:  # record exactly why TP failed, then use its formula on the same groups
        print(f"Torch-Pruning failed on {type(model).__name__}: {type(e).__name__}: {e}")
        m = copy.deepcopy(model)
        note = f"TP failed ({type(e).__name__}: {str(e)[:80]}); " + _manual_mlp(m, batches, importance, sparsity)
    secs = time.perf_counter() - t
    params = count_params(m)[0]
    return {"ppl": perplexity(m, tok, lee_texts("test"), args.ppl_seq_len, args.ppl_tokens), "prune s": secs,
            "params": params, "note": note}


def _scope_label(scope: str) -> str:
    return ", global ranking" if scope == "global" else ""


def smollm2(args) -> list[dict]:
    model, tok = load_smollm2()
    have = set(available_criteria())
    rows = [{"method": "dense", "setting": "-", "ppl": perplexity(model, tok, lee_texts("test"), args.ppl_seq_len,
                                                                  args.ppl_tokens)}]
    print(rows[-1], flush=True)

    def add(method, setting, fn):
        try:
            r = fn()
        except Exception as e:
            r = {"note": f"error {type(e).__name__}: {str(e)[:120]}"}
        rows.append({"method": method, "setting": setting, **r})
        print(rows[-1], flush=True)
        save_json(args.json + ".partial", {"smollm2": rows})

    for c in [c for c in args.unstructured if c in have]:
        for g in [g for g in ("weights", "2:4") if supports(c, g) and (g == "weights" or c in args.nm)]:
            add(f"hfprune {c}", "50% unstructured" if g == "weights" else "2:4",
                lambda: hf_run(model, tok, args, c, g, 0.5))
    for c in [c for c in args.structured if c in have and supports(c, "neurons")]:
        for s in args.neuron_sparsities:
            for scope in args.scopes:
                add(f"hfprune {c}", f"FFN neurons {s:.0%}{_scope_label(scope)}",
                    lambda: hf_run(model, tok, args, c, "neurons", s, scope=scope))
        if supports(c, "heads") and c in args.heads:
            add(f"hfprune {c}", "1 of 3 KV groups", lambda: hf_run(model, tok, args, c, "heads", 1 / 3, 1 / 3))
    batches = token_batches(tok, model, args.num_samples, args.seq_len, args.batch_size)
    for imp in args.tp:
        for s in args.neuron_sparsities:
            for scope in args.scopes:
                add(f"Torch-Pruning {imp}", f"FFN neurons {s:.0%}{_scope_label(scope)}",
                    lambda: tp_run(model, tok, args, imp, s, batches, scope))
    return rows


def minilm(args) -> list[dict]:
    model, tok = load_minilm()
    held_out = lee_sentences("test", args.sentences)
    dense = sentence_embeddings(model, tok, held_out)
    rows = []
    for c in args.minilm_criteria or available_criteria():
        if not supports(c, "neurons"):
            continue
        for s, recon in itertools.product((0.3, 0.5), args.minilm_reconstruction):
            if c == "obs" and recon == "none":  # obs needs the refit it assumes
                continue
            # "none": the criterion as published; "weights": the defaults (refit, energy protection)
            cfg = PruningConfig(round_to=1, criterion=c, granularity="neurons", sparsity=s,
                                calibration={"num_samples": args.minilm_samples, "seq_len": 128, "batch_size": 8},
                                reconstruction={"method": recon},
                                protection={"mode": "none" if recon == "none" else "auto"})
            try:
                res = prune(copy.deepcopy(model), cfg, calibration_data=lee_texts("background"), tokenizer=tok,
                            progress=False)
                emb = sentence_embeddings(res.model, tok, held_out)
                r = {"cosine": F.cosine_similarity(emb, dense, dim=-1).mean().item()}
            except Exception as e:
                r = {"note": f"error {type(e).__name__}: {str(e)[:120]}"}
            rows.append({"criterion": c, "FFN neurons removed": f"{s:.0%}", "reconstruction": recon, **r})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-samples", type=int, default=8, help="calibration sequences (SmolLM2)")
    ap.add_argument("--seq-len", type=int, default=512, help="calibration sequence length (SmolLM2)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--ppl-tokens", type=int, default=4096, help="held-out lee.cor tokens for perplexity")
    ap.add_argument("--ppl-seq-len", type=int, default=512)
    ap.add_argument("--neuron-sparsities", type=float, nargs="+", default=[0.2, 0.3])
    ap.add_argument("--minilm-samples", type=int, default=64, help="calibration sequences of 128 tokens (MiniLM)")
    ap.add_argument("--sentences", type=int, default=200, help="held-out Lee sentences for the cosine similarity")
    ap.add_argument("--unstructured", nargs="*", default=UNSTRUCTURED, help="criteria run at 50%% unstructured")
    ap.add_argument("--nm", nargs="*", default=UNSTRUCTURED, help="criteria also run at 2:4")
    ap.add_argument("--structured", nargs="*", default=STRUCTURED, help="criteria run on FFN neurons")
    ap.add_argument("--heads", nargs="*", default=STRUCTURED, help="criteria also run on one KV group of three")
    ap.add_argument("--tp", nargs="*", default=["magnitude", "taylor"], help="Torch-Pruning importances")
    ap.add_argument("--scopes", nargs="+", default=["local", "global"], choices=["local", "global"],
                    help="FFN-neuron rankings run for hfprune and Torch-Pruning: per layer, and across layers")
    ap.add_argument("--minilm-criteria", nargs="*", default=None, help="default: every registered criterion")
    ap.add_argument("--minilm-reconstruction", nargs="+", default=["none"], choices=["none", "weights"],
                    help="MiniLM rows: none (the criterion as published: no refit, no protection) and/or weights "
                         "(the defaults: refit and energy protection)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    ap.add_argument("--only", choices=["smollm2", "minilm"], default=None)
    ap.add_argument("--json", default="/tmp/bench_quality.json")
    args = ap.parse_args()
    set_threads(args.threads)
    print(device_line())
    print("criteria registered:", ", ".join(available_criteria()))
    out = {"args": vars(args)}
    if args.only != "minilm":
        rows = smollm2(args)
        print(f"\nSmolLM2-135M perplexity on {args.ppl_tokens} held-out lee.cor tokens (windows of {args.ppl_seq_len});"
              f" calibration {args.num_samples} x {args.seq_len} lee_background tokens\n")
        print(table(rows, ["method", "setting", "ppl", "params", "prune s", "note"]))
        out["smollm2"] = rows
    if args.only != "smollm2":
        rows = minilm(args)
        print(f"\nMiniLM-L6: mean cosine(pruned, dense) of mean-pooled embeddings, {args.sentences} held-out Lee "
              f"sentences; calibration {args.minilm_samples} x 128 lee_background tokens\n")
        print(table(rows, ["criterion", "FFN neurons removed", "reconstruction", "cosine", "note"]))
        out["minilm"] = rows
    save_json(args.json, out)


if __name__ == "__main__":
    main()
