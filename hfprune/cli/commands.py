"""One function per sub-command: read the parsed options, do the work, print the result, return an exit code."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from ..config.pruning_config import read_pruning_file
from ..criteria import available_criteria
from ..errors import CheckpointError, reason
from ..publishing.push import push_to_hub
from ..report.card import write_model_card
from ..report.pruning_report import REPORT_NAME, PruningReport
from ..structure.loaders import Loader
from .common import EXIT_OK, Console, UsageError
from .options import picked
from .recipe import load_recipe, parse_recipe
from .runner import Evaluator, run_recipe
from .sources import LoadedModel, load_model
from ..evaluation.harness import main_metric, record_tasks

DEMO_CRITERION = "elimination_compensation"  # best MiniLM embedding fidelity at 30% FFN (0.931, docs/benchmarks.md)


def format_report(report: PruningReport) -> str:
    """The report summary plus the before/after evaluation numbers."""
    lines = [report.summary()]
    for metric, v in report.evaluation.items():
        parts = [f"{v[k]:.4f} {k}" for k in ("before", "after") if v.get(k) is not None]
        lines.append(f"{metric}: " + " -> ".join(parts) + " pruning")
    return "\n".join(lines)


def _command_line(argv: list[str] | None) -> str:
    return "hfprune " + shlex.join(sys.argv[1:] if argv is None else argv)


def cmd_prune(args: argparse.Namespace, console: Console) -> int:
    recipe = parse_recipe({
        "model": {"name": args.model, "task": args.task, "allow_pickle": args.allow_pickle},
        "pruning": picked(args, args.config_fields),
        "calibration": {"data": args.calibration_data, "text_column": args.text_column},
        **({"evaluation": {"data": args.eval_data}} if args.evaluate else {}),
        "output": {"dir": args.output, "overwrite": args.overwrite, "push_to_hub": args.push_to_hub},
    })
    console.result(format_report(run_recipe(recipe, console, _command_line(args.argv))))
    return EXIT_OK


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    recipe = load_recipe(args.recipe)
    if args.output is not None:
        recipe.output.dir = args.output
    recipe.output.overwrite = recipe.output.overwrite or args.overwrite
    console.result(format_report(run_recipe(recipe, console, f"hfprune run {args.recipe}")))
    return EXIT_OK


def _checkpoint(folder: str) -> dict:
    if not os.path.isdir(folder):
        raise UsageError(f"Folder {folder!r} does not exist; pass the --output folder of `hfprune prune`.")
    info = read_pruning_file(folder)
    if not os.path.isfile(os.path.join(folder, REPORT_NAME)):
        raise CheckpointError(f"{folder} has no {REPORT_NAME}; save the pruned model again.")
    return info


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    info = _checkpoint(args.dir)
    console.result(format_report(PruningReport.load(args.dir)))
    if info.get("loader") != Loader.STATE_DICT:
        write_model_card(args.dir)
        console.info(f"model card re-rendered: {os.path.join(args.dir, 'README.md')}")
    return EXIT_OK


def cmd_push(args: argparse.Namespace, console: Console) -> int:
    _checkpoint(args.dir)
    url = push_to_hub(args.dir, args.repo_id, private=args.private, token=args.token, revision=args.revision,
                      create_pr=args.create_pr)
    console.result(url)
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace, console: Console) -> int:
    import transformers

    from ..checkpoint.loading import load_pruned
    from .recipe import EvaluationSection

    info = _checkpoint(args.dir)
    if info.get("loader") == Loader.STATE_DICT:
        raise UsageError(f"{args.dir} holds a plain torch module ({info.get('example')}); its recipe evaluates it "
                         "while pruning (see the report's evaluation).")
    auto = info.get("auto_class") or "AutoModel"
    task = {"AutoModelForCausalLM": "causal-lm", "AutoModelForSequenceClassification": "sequence-classification"}
    model = load_pruned(args.dir, allow_pickle=args.allow_pickle)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.dir)
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{args.dir} has no readable tokenizer ({reason(e)}); "
                              "save the pruned model together with its tokenizer.") from None
    loaded = LoadedModel(model, tokenizer, task=task.get(auto, "base"))
    if loaded.task == "base":
        raise UsageError(f"{args.dir} is a bare encoder ({auto}) with no task head; evaluate causal LMs "
                         "(perplexity) or classifiers (accuracy).")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    section = EvaluationSection(data=args.data, text_column=args.text_column, label_column=args.label_column,
                                max_samples=args.max_samples, seq_len=args.seq_len, max_tokens=args.max_tokens,
                                tasks=tasks, include_path=args.include_path, limit=args.limit,
                                num_fewshot=args.num_fewshot)
    evaluator = Evaluator(section, loaded, console)
    if not tasks:
        console.result(f"{evaluator.metric}: {evaluator.measure(loaded.model):.4f}")
        if evaluator.details:
            console.info(f"protocol: {evaluator.details['protocol']}")
        return EXIT_OK
    before = None
    if args.base:
        base = load_model(args.base, allow_pickle=args.allow_pickle)
        before = evaluator.measure_tasks(base.model, "unpruned")
    after = evaluator.measure_tasks(loaded.model, "pruned")
    report = PruningReport.load(args.dir)
    record_tasks(report, before, after)
    report.save(args.dir)
    write_model_card(args.dir)
    for task, entry in after.items():
        metric = main_metric(entry)
        console.result(f"{task} {metric}: {entry[metric]:.4f}"
                       + (f" (unpruned {before[task][metric]:.4f})" if before else ""))
    return EXIT_OK


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from ..export import export

    console.result(export(args.src, args.out, format=args.format, overwrite=args.overwrite))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    criterion = DEMO_CRITERION
    if criterion not in available_criteria():
        criterion = "wanda"
        console.info(f"note: the {DEMO_CRITERION!r} criterion is not registered in this installation; "
                     "the demo uses 'wanda' instead.")
    recipe = parse_recipe({
        "model": {"name": "example:minilm"},
        "pruning": {"criterion": criterion, "granularity": "neurons", "sparsity": 0.3,
                    "calibration": {"num_samples": 16, "seq_len": 128}},
        "calibration": {"data": "example:lee_background"},
        "evaluation": {"data": "example:lee_test", "max_samples": 50},
        "output": {"dir": args.output, "overwrite": args.overwrite},
    })
    console.result(format_report(run_recipe(recipe, console, "hfprune demo")))
    return EXIT_OK
