"""Recovery of a pruned SmolLM2 by training: distillation vs plain fine-tuning vs LoRA at equal tokens.

SmolLM2-135M-Instruct loses 30% of its FFN neurons (elimination_compensation, per layer, defaults), then each
method trains the pruned model on packed lee_background.cor text within one token budget with `RecoveryTrainer`:

* distillation: full fine-tuning, loss 0.5 * task + 0.5 * KL(dense teacher || student) at T = 1;
* finetune: full fine-tuning on the task loss only;
* lora: LoRA (rank 16, every Linear layer but the head) on the task loss, merged before evaluation;
* dense-finetune: the unpruned model after the same fine-tuning (the domain-adaptation reference).

Perplexity is measured on held-out lee.cor (same domain) and on the movie-review sentences of
pang_lee_polarity.cor (another domain), before and after, plus a recovery curve (perplexity on the first
``--curve-tokens`` tokens of lee.cor every ``--curve-every`` training tokens) saved as docs/img/recovery_curve.png.
Results are written after every stage, so a cut run keeps what it measured; ``--plot-only`` redraws from the JSON.

    PYTHONPATH=. nice -n 10 python scripts/bench/recovery.py --tokens 32768 --out bench_out/recovery.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/: _common

import torch  # noqa: E402
from _common import device_line, lee_texts, load_smollm2, perplexity, save_json, set_threads  # noqa: E402

from hfprune import load_pruned  # noqa: E402
from hfprune.trainer.recovery.budget import pack_texts  # noqa: E402

METHODS = ("distillation", "finetune", "lora", "dense-finetune")


def evaluate(model, tok, args) -> dict[str, float]:
    from hfprune.examples import polarity_sentences

    return {"lee_ppl": perplexity(model, tok, lee_texts("test"), seq_len=args.eval_seq_len, max_tokens=args.eval_tokens),
            "polarity_ppl": perplexity(model, tok, polarity_sentences()[0], seq_len=args.eval_seq_len,
                                       max_tokens=args.eval_tokens)}


def prune_model(tok, args, folder: str) -> dict:
    from hfprune import PruningConfig, prune

    model, _ = load_smollm2()
    texts = lee_texts("background")
    cfg = PruningConfig(round_to=1, criterion=args.criterion, granularity="neurons", sparsity=args.sparsity, scope=args.scope,
                        calibration={"num_samples": args.calib_samples, "seq_len": args.calib_seq_len, "batch_size": 4},
                        reconstruction={"method": args.reconstruction})
    t = time.perf_counter()
    result = prune(model, cfg, calibration_data=texts, tokenizer=tok, progress=False)
    seconds = time.perf_counter() - t
    result.save_pretrained(folder, overwrite=True, tokenizer=tok)
    return {"criterion": args.criterion, "sparsity": args.sparsity, "scope": args.scope,
            "reconstruction": args.reconstruction, "prune_s": round(seconds, 1),
            "params_before": result.report.params_before, "params_after": result.report.params_after,
            "loader": result.report.loader}


def train_one(method: str, tok, rows, curve_rows, args, pruned_dir: str) -> tuple[dict, object]:
    import transformers as T

    from hfprune.trainer import RecoveryConfig, RecoveryTrainer

    dense = method == "dense-finetune"
    if dense:
        model, _ = load_smollm2()
    else:
        model = load_pruned(pruned_dir, dtype=torch.float32)
    teacher = None
    if method == "distillation":
        teacher, _ = load_smollm2()
        recovery = RecoveryConfig(max_tokens=args.tokens, distillation_weight=args.kd_weight, temperature=1.0)
    elif method == "lora":
        recovery = RecoveryConfig(max_tokens=args.tokens, lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    else:
        recovery = RecoveryConfig(max_tokens=args.tokens)
    steps_per_curve = max(1, args.curve_every // (args.batch_size * args.seq_len))
    out = tempfile.mkdtemp(prefix=f"recovery-{method}-")
    targs = T.TrainingArguments(
        output_dir=out, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        learning_rate=args.lora_lr if method == "lora" else args.lr, lr_scheduler_type="linear", warmup_steps=2,
        weight_decay=0.0, logging_steps=1, eval_strategy="steps", eval_steps=steps_per_curve, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=0, data_seed=0, use_cpu=True,
        gradient_checkpointing=args.gradient_checkpointing)
    torch.manual_seed(0)
    trainer = RecoveryTrainer(model=model, args=targs, recovery=recovery, teacher=teacher,
                              pruned=None if dense else pruned_dir, data_name="lee_background.cor",
                              train_dataset=rows, eval_dataset=curve_rows, processing_class=tok)
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    tokens = trainer.tokens_trained
    curve = [(int(h["num_input_tokens_seen"]), h["eval_perplexity"]) for h in trainer.state.log_history
             if "eval_perplexity" in h]
    if not curve or curve[-1][0] != tokens:  # the budget is not a multiple of the curve step
        curve.append((tokens, trainer.evaluate()["eval_perplexity"]))
    res = {"method": recovery.method if not dense else "finetune (dense)", "tokens": tokens,
           "steps": trainer.state.global_step, "train_s": round(seconds, 1),
           "s_per_1k_tokens": round(1000 * seconds / max(tokens, 1), 2), "curve": curve}
    model = trainer.model
    del trainer, teacher
    return res, model


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    start = results.get("pruned_curve")
    for method, r in results.get("methods", {}).items():
        pts = ([(0, start)] if start and method != "dense-finetune" else []) + [tuple(p) for p in r["curve"]]
        if method == "dense-finetune" and results.get("dense_curve"):
            pts = [(0, results["dense_curve"])] + pts
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method,
                linestyle="--" if method == "dense-finetune" else "-")
    if results.get("dense_curve"):
        ax.axhline(results["dense_curve"], color="gray", linewidth=0.8, label="dense, untrained")
        ax.axhline(1.25 * results["dense_curve"], color="gray", linewidth=0.8, linestyle=":", label="1.25x dense")
    ax.set_xlabel("training tokens (lee_background.cor)")
    ax.set_ylabel("perplexity, held-out lee.cor (curve subset)")
    ax.set_yscale("log")
    ax.set_title("SmolLM2-135M, 30% FFN neurons pruned: recovery")
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32768, help="training-token budget per method")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lora-lr", type=float, default=5e-4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--kd-weight", type=float, default=0.5)
    ap.add_argument("--criterion", default="elimination_compensation")
    ap.add_argument("--sparsity", type=float, default=0.3)
    ap.add_argument("--scope", choices=["local", "global"], default="local",
                    help="ranking of the pruning step (global: non-uniform widths)")
    ap.add_argument("--reconstruction", choices=["none", "weights"], default="none",
                    help="refit the kept weights after selection (hfprune extension)")
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seq-len", type=int, default=512)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--curve-tokens", type=int, default=1024)
    ap.add_argument("--curve-every", type=int, default=8192)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on an oversubscribed CPU)")
    ap.add_argument("--out", default="bench_out/recovery.json")
    ap.add_argument("--plot", default="docs/img/recovery_curve.png")
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    if args.plot_only:
        with open(args.out) as f:
            plot(json.load(f), args.plot)
        return
    set_threads(args.threads)
    torch.manual_seed(0)
    results: dict = {"device": device_line(), "args": vars(args), "methods": {}}
    if os.path.isfile(args.out):  # resume a cut run: keep the stages already measured
        with open(args.out) as f:
            results = {**json.load(f), "args": vars(args)}
    dense, tok = load_smollm2()
    rows = pack_texts(tok, lee_texts("background"), args.seq_len)
    curve_rows = pack_texts(tok, lee_texts("test"), args.seq_len, args.curve_tokens)
    results["train_rows"] = len(rows)
    pruned_dir = os.path.join(os.path.dirname(args.out) or ".", "recovery_pruned")
    if "dense" not in results:
        results["dense"] = evaluate(dense, tok, args)
        results["dense_curve"] = math.exp(_curve_loss(dense, curve_rows))
        save_json(args.out, results)
    print("dense", results["dense"], flush=True)
    del dense
    if "pruned" not in results or not os.path.isdir(pruned_dir):
        results["pruning"] = prune_model(tok, args, pruned_dir)
        pruned = load_pruned(pruned_dir, dtype=torch.float32)
        results["pruned"] = evaluate(pruned, tok, args)
        results["pruned_curve"] = math.exp(_curve_loss(pruned, curve_rows))
        del pruned
        save_json(args.out, results)
    print("pruned", results["pruned"], results.get("pruning"), flush=True)
    for method in args.methods:
        if method in results["methods"] and results["methods"][method].get("tokens", 0) >= args.tokens:
            continue
        res, model = train_one(method, tok, rows, curve_rows, args, pruned_dir)
        res.update(evaluate(model, tok, args))
        results["methods"][method] = res
        save_json(args.out, results)
        print(method, {k: v for k, v in res.items() if k != "curve"}, flush=True)
        plot(results, args.plot)
    plot(results, args.plot)


@torch.no_grad()
def _curve_loss(model, rows) -> float:
    """Mean token loss on the curve rows, computed as Trainer's evaluation computes it (one row per forward)."""
    model.eval()
    losses = [float(model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]])).loss)
              for r in rows]
    return sum(losses) / len(losses)


if __name__ == "__main__":
    main()
