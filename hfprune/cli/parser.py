"""The argument parser: sub-commands, with `prune`'s pruning options generated from `PruningConfig`."""

from __future__ import annotations

import argparse

from .. import __version__
from ..config.pruning_config import PruningConfig
from ..export import FORMATS
from . import commands
from .options import add_dataclass_options
from .sources import TASKS


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line plus the hint, exit code 2 (argparse's default prints the full usage)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"hfprune: error: {message}. See `{self.prog} --help`.\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="No progress bars or progress lines; results only.")
    p.add_argument("--debug", action="store_true", help="Show the full traceback of errors.")


def _output(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--output", required=required, metavar="DIR", help="Folder the pruned model is saved to.")
    p.add_argument("--overwrite", action="store_true", help="Replace a non-empty output folder.")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer (at least 1)")
    return value


def _allow_pickle(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-pickle", action="store_true", help="Accept a model folder whose weights are pickles "
                   "(pytorch_model.bin), read with torch.load(weights_only=True); only for folders you trust.")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hfprune", description="Prune Hugging Face models. `hfprune demo` shows a first run.")
    parser.add_argument("--version", action="version", version=f"hfprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("prune", help="Prune a model and save it.", description="Prune MODEL (Hub id, local folder "
                       "or example:NAME) as the pruning options say and save it to --output.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--task", choices=list(TASKS), help="Model head to load; read from config.json by default.")
    p.add_argument("--calibration-data", metavar="PATH", help="random, a .txt (one text a line) / .csv / .json / "
                   ".jsonl file, a Hub dataset name[:config[:split]] or example:lee_background. Criteria that "
                   "read no activations (magnitude, random) need none; the others need it (or 'random').")
    p.add_argument("--text-column", default="text", help="Text column of CSV/JSON calibration data.")
    p.add_argument("--evaluate", action="store_true", help="Measure perplexity / accuracy / embedding similarity "
                   "before and after pruning.")
    p.add_argument("--eval-data", metavar="PATH", help="Evaluation data (default: packaged news text or reviews).")
    _output(p, required=True)
    _allow_pickle(p)
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="Also push the saved folder to this Hub repo.")
    p.set_defaults(config_fields=add_dataclass_options(p, PruningConfig, "pruning options (PruningConfig)"),
                   handler=commands.cmd_prune)
    _common(p)

    p = sub.add_parser("run", help="Run a YAML recipe.", description="Run RECIPE (see docs/recipes.md).")
    p.add_argument("recipe", metavar="RECIPE.yaml")
    p.add_argument("--output", metavar="DIR", help="Override the recipe's output.dir.")
    p.add_argument("--overwrite", action="store_true", help="Replace a non-empty output folder.")
    p.set_defaults(handler=commands.cmd_run)
    _common(p)

    p = sub.add_parser("report", help="Print the report of a pruned folder.")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(handler=commands.cmd_report)
    _common(p)

    p = sub.add_parser("push", help="Push a pruned folder to the Hub.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("repo_id", metavar="REPO_ID")
    p.add_argument("--private", action="store_true", default=None, help="Create the repo as private.")
    p.add_argument("--token", help="Hub token (default: the logged-in one).")
    p.add_argument("--revision", help="Branch to push to (created if missing).")
    p.add_argument("--create-pr", action="store_true", help="Open a pull request instead of committing.")
    p.set_defaults(handler=commands.cmd_push)
    _common(p)

    p = sub.add_parser("evaluate", help="Perplexity (causal LM) or accuracy (classifier) of a pruned folder.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--data", metavar="FILE", help="Texts (.txt) or a labelled CSV/JSONL; packaged data by default.")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--max-samples", type=_positive, default=200, help="Most texts used (at least 1).")
    p.add_argument("--seq-len", type=_positive, default=512, help="Perplexity window: non-overlapping windows of "
                   "this many tokens (2048: the WikiText-2 protocol of the pruning papers).")
    p.add_argument("--max-tokens", type=int, default=4096, help="Perplexity token budget (0: every token).")
    p.add_argument("--tasks", metavar="T1,T2", help="lm-evaluation-harness tasks instead of perplexity (e.g. "
                   "hfprune_polarity, packaged and offline; arc_easy,piqa); results go into the folder's report "
                   "and card. Needs pip install \"hfprune[eval]\".")
    p.add_argument("--include-path", metavar="DIR", help="Folder of lm-eval task YAML files.")
    p.add_argument("--limit", type=_positive, help="First N documents of each task.")
    p.add_argument("--num-fewshot", type=int, help="Few-shot examples (the task's default when absent).")
    p.add_argument("--base", metavar="MODEL", help="Also run the tasks on this unpruned model (Hub id, folder or "
                   "example:NAME), recorded beside the pruned numbers.")
    _allow_pickle(p)
    p.set_defaults(handler=commands.cmd_evaluate)
    _common(p)

    p = sub.add_parser("export", help="Write a non-uniform pruned folder in a layout other tools load.",
                       description="Write SRC (a folder with per-layer widths, loaded by hfprune.load_pruned) to "
                       "OUT: 'padded' (zero-padded to the widest layer: plain from_pretrained loads it) or "
                       "'nemotron-nas' (DeciLM block_configs, read by vLLM, llama.cpp, TensorRT-LLM). See "
                       "docs/deployment.md.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--format", choices=list(FORMATS), default="padded", help="Layout written (default: padded).")
    p.add_argument("--overwrite", action="store_true", help="Replace a non-empty OUT folder.")
    p.set_defaults(handler=commands.cmd_export)
    _common(p)

    p = sub.add_parser("demo", help="Prune the packaged MiniLM on packaged news text and print the report.")
    _output(p, required=False)
    p.set_defaults(handler=commands.cmd_demo)
    _common(p)
    return parser
