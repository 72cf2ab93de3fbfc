"""Plots for docs/benchmarks.md from the JSON files the benchmark scripts write.

    PYTHONPATH=. python scripts/bench/plots.py --quality /tmp/bench_quality.json --speed /tmp/bench_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _sparsity(setting: str) -> float | None:
    m = re.search(r"(\d+)%", setting)
    return int(m.group(1)) / 100 if m else None


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, path: str) -> None:
    """Labels, legend and the PNG shared by every plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def perplexity_plot(rows: list[dict], path: str) -> None:
    dense = next(r["ppl"] for r in rows if r["method"] == "dense")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = sorted({r["method"] for r in rows if r["method"] != "dense"})
    for m in methods:
        pts = sorted((s, r["ppl"]) for r in rows if r["method"] == m and r.get("ppl")
                     and "neurons" in r["setting"] and (s := _sparsity(r["setting"])) is not None)
        if pts:
            ax.plot([0] + [p[0] for p in pts], [dense] + [p[1] for p in pts], marker="o", label=m)
    ax.set_yscale("log")
    _finish(fig, ax, "fraction of FFN neurons removed", "perplexity on held-out lee.cor (log scale)",
            "SmolLM2-135M, structured FFN pruning (2-core CPU)", path)


def speed_plot(rows: list[dict], path: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for model in sorted({r["model"] for r in rows}):
        pts = [(r["MACs ratio"], r["speed-up (cpu)"]) for r in rows if r["model"] == model]
        ax.plot(*zip(*pts), marker="o", label=model)
    top = max(max(r["MACs ratio"], r["speed-up (cpu)"]) for r in rows)
    ax.plot([1, top], [1, top], "k--", lw=0.8, label="speed-up = MACs ratio")
    _finish(fig, ax, "MACs ratio (dense / pruned)", "measured speed-up (process CPU time, 1 thread)",
            "Structured FFN pruning, 2-core CPU", path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", default="/tmp/bench_quality.json")
    ap.add_argument("--speed", default="/tmp/bench_speed.json")
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if os.path.exists(args.quality):
        q = json.load(open(args.quality))
        if q.get("smollm2"):
            perplexity_plot(q["smollm2"], os.path.join(args.out, "perplexity_vs_sparsity.png"))
    if os.path.exists(args.speed):
        s = json.load(open(args.speed))
        if s.get("speed"):
            speed_plot(s["speed"], os.path.join(args.out, "speedup_vs_macs.png"))


if __name__ == "__main__":
    main()
