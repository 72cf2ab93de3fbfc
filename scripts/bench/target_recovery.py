"""Distil pruned SmolLM2 models (saved by scripts/bench/target_size.py --save-dir) back with the same token budget,
from user data (lee_background), text the unpruned model writes itself, or a half/half mix; perplexity in and out
of domain (held-out lee.cor, the movie reviews, Python's documentation) along the way (the recovery curve).

    PYTHONPATH=.:scripts nice -n 5 python scripts/bench/target_recovery.py --models bench_out/ts_models/hfprune \\
        --data mixed --tokens 32768 --out bench_out/target_recovery.json

``--teacher-top-k 0 64`` distils each model twice, with the live teacher and from its cached top-64 outputs
(`RecoveryConfig.teacher_top_k`); ``s_per_1k_tokens`` leaves out the curve's evaluations and ``setup_s`` holds the
cache's computation.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/: _common

import torch  # noqa: E402
import transformers as T  # noqa: E402
from _common import device_line, lee_texts, load_smollm2, perplexity, save_json, set_threads  # noqa: E402
from bench.target_size import EVAL_SETS  # noqa: E402

from hfprune import load_pruned  # noqa: E402
from hfprune.trainer import RecoveryConfig, RecoveryTrainer  # noqa: E402
from hfprune.trainer.recovery.budget import pack_texts  # noqa: E402
from hfprune.trainer.recovery.self_data import mixed_rows  # noqa: E402

SHARES = {"user": 0.0, "generated": 1.0, "mixed": 0.5}


def evaluate(model, tok, tokens: int, seq_len: int) -> dict[str, float]:
    was = model.training
    model.eval()
    out = {name: round(perplexity(model, tok, texts(), seq_len, tokens), 3) for name, texts in EVAL_SETS.items()}
    model.train(was)
    return out


class Curve(T.TrainerCallback):
    """Perplexity on every evaluation set every ``every`` optimizer steps (small subsets: the curve's shape)."""

    def __init__(self, tok, args, out: dict, partial: dict) -> None:
        self.tok, self.args, self.points = tok, args, []
        self.out, self.partial = out, partial
        self.seconds = 0.0  # time spent evaluating (left out of the training time)

    def on_step_end(self, args, state, control, model=None, **kw):
        if self.args.curve_every_steps and state.global_step % self.args.curve_every_steps == 0:
            t = time.perf_counter()
            self.points.append({"tokens": int(state.num_input_tokens_seen),
                                **evaluate(model, self.tok, self.args.curve_tokens, self.args.eval_seq_len)})
            save_json(self.args.out, {**self.out, "running": {**self.partial, "curve": self.points}})  # long runs
            self.seconds += time.perf_counter() - t


def plot(results: str, png: str) -> None:
    """The recovery curve of every row of a results file: perplexity on each set against training tokens."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(results) as f:
        rows = json.load(f)["rows"]
    fig, axes = plt.subplots(1, len(EVAL_SETS), figsize=(4 * len(EVAL_SETS), 3.2))
    for ax, name in zip(axes, EVAL_SETS):
        for r in rows:
            label = r["data"] + (f", top-{r['teacher_top_k']}" if r.get("teacher_top_k") else "")
            ax.plot([p["tokens"] for p in r["curve"]], [p[name] for p in r["curve"]], marker="o", label=label)
        ax.set_title(f"{name} (first 1,024 tokens)")
        ax.set_xlabel("training tokens")
    axes[0].set_ylabel("perplexity")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=[], help="pruned folders (one row each)")
    ap.add_argument("--data", nargs="+", choices=list(SHARES), default=["mixed"])
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--data-tokens", type=int, default=None,
                    help="size of the training set in tokens (default --tokens: one pass); smaller: several epochs")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--kd-weight", type=float, default=1.0)
    ap.add_argument("--teacher-top-k", type=int, nargs="+", default=[0],
                    help="cache the teacher's top-k outputs before training (0: live teacher); one row per value")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--eval-seq-len", type=int, default=512)
    ap.add_argument("--curve-tokens", type=int, default=1024)
    ap.add_argument("--curve-every-steps", type=int, default=8, help="0: no curve")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench_out/target_recovery.json")
    ap.add_argument("--plot", nargs=2, metavar=("RESULTS", "PNG"), help="only draw the curves of a results file")
    args = ap.parse_args()
    if args.plot:
        plot(*args.plot)
        return
    if not args.models:
        ap.error("--models is required (pruned folders), unless --plot is given")
    set_threads(args.threads)
    teacher, tok = load_smollm2()
    teacher.eval()
    out = {"device": device_line(), "args": vars(args), "dense": evaluate(teacher, tok, args.eval_tokens,
                                                                          args.eval_seq_len), "rows": []}
    user = pack_texts(tok, lee_texts("background"), args.seq_len)
    for folder, data, top_k in itertools.product(args.models, args.data, args.teacher_top_k):
        t = time.perf_counter()
        rows = mixed_rows(teacher, user, SHARES[data], args.seq_len, args.data_tokens or args.tokens, seed=0) \
            if SHARES[data] else user
        gen_s = time.perf_counter() - t
        model = load_pruned(folder, dtype=torch.float32)
        before = evaluate(model, tok, args.eval_tokens, args.eval_seq_len)
        curve = Curve(tok, args, out, {"model": folder, "data": data, "teacher_top_k": top_k, "before": before})
        targs = T.TrainingArguments(
            output_dir=tempfile.mkdtemp(prefix="target-recovery-"), per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=2, weight_decay=0.0, logging_steps=4,
            save_strategy="no", report_to="none", disable_tqdm=True, seed=0, data_seed=0, use_cpu=True)
        torch.manual_seed(0)
        t = time.perf_counter()
        trainer = RecoveryTrainer(model=model, args=targs, teacher=teacher, pruned=folder, train_dataset=rows,
                                  processing_class=tok, callbacks=[curve],
                                  recovery=RecoveryConfig(max_tokens=args.tokens, distillation_weight=args.kd_weight,
                                                          teacher_top_k=top_k or None))
        setup_s = time.perf_counter() - t
        t = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t - curve.seconds
        after = evaluate(trainer.model, tok, args.eval_tokens, args.eval_seq_len)
        row = {"model": folder, "data": data, "generated_share": SHARES[data], "teacher_top_k": top_k or None,
               "teacher_cache": trainer.recovery_info["teacher_cache"], "setup_s": round(setup_s, 1),
               "tokens": trainer.tokens_trained,
               "params": sum(p.numel() for p in trainer.model.parameters()), "before": before, "after": after,
               "x_dense_after": {k: round(v / out["dense"][k], 3) for k, v in after.items()},
               "train_s": round(train_s, 1), "s_per_1k_tokens": round(1000 * train_s / trainer.tokens_trained, 2),
               "generation_s": round(gen_s, 1), "curve": curve.points}
        out["rows"].append(row)
        print({k: row[k] for k in ("model", "data", "teacher_top_k", "before", "after", "x_dense_after",
                                   "s_per_1k_tokens", "setup_s")},
              flush=True)
        save_json(args.out, out)
        del trainer, model


if __name__ == "__main__":
    main()
