"""Zero-shot (or few-shot) accuracy with lm-evaluation-harness, the way papers and users compare models.

lm-eval is an optional dependency (``pip install "hfprune[eval]"``), imported only when tasks are asked for. It runs
on the already-loaded model (``HFLM(pretrained=model)``), so pruned folders that only `hfprune.load_pruned` reads
are measured too; tasks come from lm-eval's own registry or from YAML files under ``include_path`` (offline with
``dataset_path: json`` and local ``data_files``). Seeds are fixed, so a rerun gives the same numbers.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from ..errors import EvaluationError

#: metrics recorded per task (those the task reports); ``,none`` is lm-eval's filter suffix
METRICS = ("acc", "acc_norm", "exact_match", "f1", "mcc")
INSTALL = 'pip install "hfprune[eval]" (or pip install "lm-eval>=0.4.13")'


def _lm_eval() -> Any:
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (fails early when its deps are missing)
    except ImportError as e:
        raise EvaluationError(f"Evaluation tasks need lm-evaluation-harness, which is not installed ({e.name or e}); "
                              f"{INSTALL}.") from None
    return lm_eval


def _manager(tasks: list[str], include_path: str | None) -> Any:
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local  # indexing lm-eval's thousands of built-in task files takes ~10 s
    return TaskManager(include_path=include_path)


def check_tasks(tasks: list[str], include_path: str | None = None) -> Any:
    """Every task name resolves (lm-eval's registry, or YAML under ``include_path``), before any model runs;
    returns the task manager that found them."""
    _lm_eval()
    manager = _manager(tasks, include_path)
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:
        raise EvaluationError(f"lm-eval knows no task {', '.join(map(repr, missing))}"
                              + (f" (built-in or under include_path {include_path!r})" if include_path else "")
                              + "; check the name (lm-eval --tasks list) or pass the folder of its YAML file as "
                              "include_path (--include-path).")
    return manager


def run_tasks(model: nn.Module, tokenizer: Any, tasks: list[str], include_path: str | None = None,
              limit: int | None = None, num_fewshot: int | None = None, batch_size: int = 8,
              seed: int = 0) -> dict[str, dict[str, Any]]:
    """``{task: {metric: value, metric + "_stderr": value, "samples": n, "num_fewshot": k, "lm_eval": version}}``
    for every task; ``limit``: the first N documents of each task."""
    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    manager = check_tasks(tasks, include_path)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    was_training = model.training
    lm = HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                  num_fewshot=num_fewshot, log_samples=False, random_seed=seed,
                                  numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    model.train(was_training)
    results: dict[str, dict[str, Any]] = {}
    for task in tasks:
        raw = out["results"][task]
        entry: dict[str, Any] = {}
        for m in METRICS:
            if f"{m},none" in raw:
                entry[m] = float(raw[f"{m},none"])
                stderr = raw.get(f"{m}_stderr,none")
                if isinstance(stderr, (int, float)):
                    entry[f"{m}_stderr"] = float(stderr)
        entry.update(samples=int(out["n-samples"][task]["effective"]), num_fewshot=out["n-shot"].get(task, 0),
                     lm_eval=lm_eval.__version__)
        results[task] = entry
    return results


def main_metric(entry: dict[str, Any]) -> str:
    """The metric a task's number is reported as (the first of `METRICS` it has)."""
    return next(m for m in METRICS if m in entry)


def record_tasks(target: Any, before: dict[str, dict[str, Any]] | None, after: dict[str, dict[str, Any]]) -> None:
    """Record task results on anything with ``record_evaluation`` (`PruningResult`, the trainers): one entry per
    task, ``before`` (the dense model) beside ``after``, with the protocol and the model-index fields."""
    for task, entry in after.items():
        metric = main_metric(entry)
        target.record_evaluation(
            f"{task}/{metric}", before=(before or {}).get(task, {}).get(metric), after=entry[metric],
            protocol=f"lm-eval {entry['lm_eval']}, {entry['num_fewshot']}-shot, {entry['samples']} documents",
            dataset=task, dataset_name=task, metric_type=metric)
