"""Neural expressiveness (Maroudis & Xydis, arXiv 2512.06440): channel pruning of a small CNN on sklearn's digits.

The three-convolution CNN of the `cnn-digits-hybrid` recipe is trained on sklearn's 8x8 digits (fixed 80/20
split). Three measurements:

1. Accuracy against compression: the same fraction of channels is removed from every convolution (local scope,
   so every method gives exactly the same architecture and parameter count at a given fraction) by
   expressiveness (calibrated on training images, and data-agnostic on Gaussian inputs), hybrid (expressiveness
   mixed with magnitude by normalised ranks, alpha = 0.5), magnitude (L1), Taylor and random; test accuracy right
   after pruning and after a short fine-tune of the compacted model. Paper's claim: the hybrid reaches a higher
   compression than magnitude at about 1% accuracy loss.
2. Data-agnostic against data-driven expressiveness: Spearman rank correlation, per convolution, of the channel
   scores from 256 training images with those from 256 Gaussian inputs and from a single training image.
3. At initialisation against after training: the same rank correlation between the untrained and the trained
   network's scores (data-driven), for expressiveness and, as the reference, magnitude.

    PYTHONPATH=$PWD python scripts/repro/nexp.py            # the reported settings
    PYTHONPATH=$PWD python scripts/repro/nexp.py --quick    # smoke test, < 1 minute
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from scipy.stats import spearmanr
from torch import nn

from hfprune import PruningConfig
from hfprune.calibration.data import prepare_calibration
from hfprune.examples.vision import digits_cnn
from hfprune.criteria import get_criterion
from hfprune.steps.scoring import compute_masks
from hfprune.structure import find_groups, find_layers

import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

_sys.path.insert(0, str(_Path(__file__).resolve().parents[1]))  # scripts/: the shared helpers
import _repro as R

#: label -> PruningConfig fields
METHODS: dict[str, dict[str, Any]] = {
    "expressiveness": {"criterion": "expressiveness"},
    "expressiveness, Gaussian inputs": {"criterion": "expressiveness", "calibration": {"source": "random"}},
    "hybrid": {"criterion": "hybrid", "options": {"alpha": 0.5, "importance": "magnitude"}},
    "magnitude": {"criterion": "magnitude", "options": {"norm": 1}},
    "Taylor": {"criterion": "taylor"},
    "random": {"criterion": "random"},
}
FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)  # whole channels of the 16- and 32-channel convolutions
MAX_DROP = 0.01  # "about 1% accuracy loss"


def channel_scores(model: nn.Module, config: PruningConfig, data: Any, example: torch.Tensor) -> dict[str, list]:
    """Per-channel scores of every convolution, as `prune` computes them before selecting (no pruning)."""
    calib = prepare_calibration(data, model, config, example_inputs=example)
    groups = find_groups(model, config, example)
    _, scores, _ = compute_masks(model, get_criterion(config), find_layers(model), groups, calib.batches, progress=False)
    return {name: s.tolist() for name, s in scores.items()}


def rank_correlations(a: dict[str, list], b: dict[str, list]) -> dict[str, float]:
    return {name: float(spearmanr(a[name], b[name]).statistic) for name in a}


def correlations(untrained: nn.Module, trained: nn.Module, split: R.Split, n: int) -> list[dict[str, Any]]:
    """Spearman correlations of per-channel scores (measurements 2 and 3), one record per comparison and layer."""
    images, example = split[0][:n], split[0][:1]

    def scores(model: nn.Module, criterion: str, source: str = "data", data: torch.Tensor = images) -> dict:
        config = PruningConfig(criterion=criterion, granularity="channels",
                               calibration={"source": source, "num_samples": len(data), "batch_size": 64})
        return channel_scores(model, config, data, example)

    reference = scores(trained, "expressiveness")
    pairs = {
        "data vs Gaussian inputs (trained)": (reference, scores(trained, "expressiveness", "random")),
        "data vs one image (trained)": (reference, scores(trained, "expressiveness", data=split[0][:1])),
        "init vs trained: expressiveness": (scores(untrained, "expressiveness"), reference),
        "init vs trained: magnitude": (scores(untrained, "magnitude"), scores(trained, "magnitude")),
    }
    return [{"comparison": label, "layer": layer, "spearman": rho}
            for label, (a, b) in pairs.items() for layer, rho in rank_correlations(a, b).items()]


def run_seed(seed: int, split: R.Split, settings: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    train_x, train_y, test_x, test_y = split
    torch.manual_seed(seed)
    untrained = R.Classifier(digits_cnn())
    dense = R.train(copy.deepcopy(untrained), train_x, train_y, settings["epochs"], seed)
    calib = R.labelled_batches(train_x[:settings["calib"]], train_y[:settings["calib"]], 64)
    acc = R.evaluate(dense, test_x, test_y)["acc"]
    records = [{"seed": seed, "method": "dense", "fraction": 0.0, "compression": 1.0, "acc": acc, "ft_acc": acc}]
    for label, fields in METHODS.items():
        for fraction in settings["fractions"]:
            model = copy.deepcopy(dense)
            calibration = {"num_samples": settings["calib"], "batch_size": 64, **fields.get("calibration", {})}
            config = PruningConfig(granularity="channels", sparsity=fraction, seed=seed,
                                   **{**fields, "calibration": calibration})
            result = R.prune_quietly(model, config, calib, example_inputs=train_x[:1])
            pruned = R.evaluate(model, test_x, test_y)["acc"]
            R.train(model, train_x, train_y, settings["finetune_epochs"], seed + 1, lr=settings["finetune_lr"])
            records.append({"seed": seed, "method": label, "fraction": fraction,
                            "compression": result.report.params_before / result.report.params_after,
                            "acc": pruned, "ft_acc": R.evaluate(model, test_x, test_y)["acc"]})
    return records, [{"seed": seed, **c} for c in correlations(untrained, dense, split, settings["calib"])]


def compression_at_max_drop(rows: list[dict[str, Any]], metric: str) -> dict[str, float]:
    """Per method, the highest compression whose mean accuracy is within `MAX_DROP` of the dense mean."""
    dense = next(r for r in rows if r["method"] == "dense")[metric]
    return {m: max([1.0] + [r["compression"] for r in rows if r["method"] == m and r[metric] >= dense - MAX_DROP])
            for m in METHODS}


def report(payload: dict[str, Any]) -> str:
    rows, info = payload["rows"], payload["info"]
    dense = next(r for r in rows if r["method"] == "dense")
    fractions = sorted({r["fraction"] for r in rows if r["method"] != "dense"})
    by = {(r["method"], r["fraction"]): r for r in rows}
    parts = [f"Command: `{info['command']}`; {info['date']}; {info['machine']}.",
             f"Dense test accuracy {R.pm(dense, 'acc')} (n = {dense['n']} seeds); "
             f"{payload['dense_params']} parameters."]
    header = ["method"] + [f"{f:g} ({by[('magnitude', f)]['compression']:.2f}x)" for f in fractions]
    for metric, title in (("acc", "no fine-tune"), ("ft_acc", "after fine-tune")):
        table = [[m] + [R.pm(by[(m, f)], metric) for f in fractions] for m in METHODS]
        parts += [f"**test accuracy, {title}** (columns: fraction of channels removed per conv, parameter "
                  "compression)", R.markdown_table(header, table)]
    best = payload["compression_at_1pct"]
    parts += [f"**highest parameter compression with mean accuracy within {MAX_DROP:.0%} of dense**",
              R.markdown_table(["method", "no fine-tune", "after fine-tune"],
                               [[m, f"{best['acc'][m]:.2f}x", f"{best['ft_acc'][m]:.2f}x"] for m in METHODS])]
    corr = payload["correlations"]
    layers = sorted({c["layer"] for c in corr})
    table = [[comp] + [R.pm(next(c for c in corr if c["comparison"] == comp and c["layer"] == l), "spearman", 2)
                       for l in layers] for comp in dict.fromkeys(c["comparison"] for c in corr)]
    parts += ["**Spearman rank correlation of per-channel scores**", R.markdown_table(["comparison"] + layers, table)]
    return "\n\n".join(parts)


def plot(payload: dict[str, Any], path: str) -> None:
    R.plot_before_after(path, payload["rows"], ("acc", "ft_acc"), "digits CNN channels", "compression",
                        "parameter compression (x)", "test accuracy",
                        {m: lambda r, m=m: r["method"] in (m, "dense") for m in METHODS})


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = R.parse_args(__doc__.splitlines()[0], argv, seeds=5)  # cheap, and single runs vary much
    settings = ({"epochs": 3, "calib": 64, "fractions": (0.5,), "finetune_epochs": 1, "finetune_lr": 1e-3}
                if args.quick else
                {"epochs": 30, "calib": 256, "fractions": FRACTIONS, "finetune_epochs": 3, "finetune_lr": 1e-3})
    split = R.digits_split()
    records, corr = [], []
    for seed in range(args.seeds):
        recs, cs = run_seed(seed, split, settings)
        records += recs
        corr += cs
    rows = R.aggregate(records, ["method", "fraction"], ["compression", "acc", "ft_acc"])
    payload = {"paper": "neural expressiveness (arXiv 2512.06440)", "settings": settings, "rows": rows,
               "records": records, "dense_params": sum(p.numel() for p in digits_cnn().parameters()),
               "compression_at_1pct": {m: compression_at_max_drop(rows, m) for m in ("acc", "ft_acc")},
               "correlations": R.aggregate(corr, ["comparison", "layer"], ["spearman"])}
    return R.publish("nexp", argv, args, payload, report, plot)


if __name__ == "__main__":
    main()
