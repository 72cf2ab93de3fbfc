"""Run a validated `Recipe`: load, measure, prune (or prune while fine-tuning), measure again, save, push.

`hfprune prune` builds a one-off recipe from its options, so the command line and recipes share this one path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from torch import nn

from ..calibration.checks import check_config_for_model, check_weights
from ..calibration.generated import cache_dir, check_can_generate
from ..structure.loaders import Loader
from ..checkpoint.record import PruningInfo, save_checkpoint
from ..utils.distributed import main_process_writes
from ..engine.pruner import Pruner
from ..errors import ConfigError, shorten
from ..checkpoint.io import atomic_output_dir, check_output_dir
from ..prune import PruningResult, prune
from ..publishing.push import check_repo_id, push_to_hub
from ..report.pruning_report import PruningReport
from .common import Console, UsageError
from ..evaluation.perplexity import PerplexityProtocol, measure_perplexity
from ..evaluation.quality import embeddings, mean_cosine, text_accuracy
from .recipe import EvaluationSection, Recipe, RecoverySection, TrainingSection
from .sources import LoadedModel, calibration_input, load_model, load_rows
from ..trainer import PruningTrainer


def _check_before_work(recipe: Recipe) -> None:
    """Everything that can fail without loading a model fails here."""
    cfg, out = recipe.pruning, recipe.output
    cfg.validate()
    if out.dir is not None:
        check_output_dir(out.dir, out.overwrite)
    if out.push_to_hub:
        if not out.dir:
            raise UsageError("Pushing to the Hub needs an output folder: set output.dir (--output).")
        check_repo_id(out.push_to_hub)
    if recipe.recovery and recipe.recovery.settings.lora_r is not None:
        from ..trainer.recovery.lora import require_peft

        require_peft()
    needs = Pruner.needs_data(cfg)
    if needs and recipe.calibration.data is None and not cfg.calibration.data_free:
        raise UsageError(f"{needs} needs calibration data: pass --calibration-data FILE (or calibration.data in a "
                         "recipe), 'random' for data-agnostic inputs, or --calibration.source generated (the "
                         "model writes its own).")


def _check_loaded(recipe: Recipe, loaded: LoadedModel) -> None:
    """What needs the model but no forward pass: finite weights, seq_len within the positions (when calibration
    sequences are built), a start token for generated rows, room on disk."""
    check_weights(loaded.model)
    if recipe.recovery and recipe.recovery.generated_share > 0:
        check_can_generate(loaded.model)
    if Pruner.needs_data(recipe.pruning) and not recipe.training:
        check_config_for_model(recipe.pruning, loaded.model)
    if recipe.output.dir:
        size = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        check_output_dir(recipe.output.dir, recipe.output.overwrite, need_bytes=size)


class Evaluator:
    """Measures one quality number (and the section's lm-eval tasks), the same way before and after pruning."""

    def __init__(self, section: EvaluationSection, loaded: LoadedModel, console: Console,
                 rows: tuple[list[str], list | None] | None = None) -> None:
        self.loaded, self.progress, self.reference = loaded, console.progress, None
        self.section, self.console = section, console
        self.protocol = PerplexityProtocol(seq_len=section.seq_len, max_tokens=section.max_tokens or None)
        self.details: dict[str, Any] = {}  # how the metric was measured, recorded next to it
        if section.tasks:
            from ..evaluation.harness import check_tasks

            check_tasks(section.tasks, task_paths(section.tasks, section.include_path))
        if loaded.vision is not None:
            self.metric = "accuracy"
            return
        self.metric = {"causal-lm": "perplexity", "sequence-classification": "accuracy"}.get(loaded.task,
                                                                                            "embedding_cosine")
        labelled = self.metric == "accuracy"
        default = "example:polarity" if labelled else "example:lee_test"
        texts, labels = rows or load_rows(section.data or default, section.text_column,
                                          section.label_column if labelled else None)
        self.texts, self.labels = texts[: section.max_samples], (labels or [])[: section.max_samples]

    def measure(self, model: nn.Module) -> float:
        tok, v = self.loaded.tokenizer, self.loaded.vision
        if v is not None:
            from ..examples.vision import accuracy

            return accuracy(model, v.test_x, v.test_y)
        if self.metric == "perplexity":
            ppl = measure_perplexity(model, tok, self.texts, self.protocol, progress=self.progress)
            p = ppl.protocol
            self.details = {"protocol": f"{p.seq_len}-token non-overlapping windows, EOS between texts, "
                                        f"{ppl.tokens:,} predicted tokens"}
            return ppl.value
        if self.metric == "accuracy":
            return text_accuracy(model, tok, self.texts, self.labels, progress=self.progress)
        emb = embeddings(model, tok, self.texts, progress=self.progress)
        if self.reference is None:
            self.reference = emb
        return mean_cosine(emb, self.reference)

    def measure_tasks(self, model: nn.Module, when: str) -> dict[str, dict[str, Any]] | None:
        """The section's lm-eval tasks on ``model`` (None when it names none)."""
        s = self.section
        if not s.tasks:
            return None
        from ..evaluation.harness import main_metric, run_tasks

        out = run_tasks(model, self.loaded.tokenizer, s.tasks, task_paths(s.tasks, s.include_path), s.limit,
                        s.num_fewshot, seed=0)
        for task, entry in out.items():
            self.console.info(f"{task} {main_metric(entry)} {when}: {entry[main_metric(entry)]:.4f}")
        return out

    def record(self, target: Any, before: float, after: float, tasks_before: dict | None,
               tasks_after: dict | None) -> None:
        """Both numbers (and the tasks') on ``target``'s report and card."""
        from ..evaluation.harness import record_tasks

        target.record_evaluation(self.metric, before=before, after=after, **self.details)
        if tasks_after is not None:
            record_tasks(target, tasks_before, tasks_after)


def task_paths(tasks: list[str], include_path: str | None) -> list[str] | None:
    """``include_path`` plus the packaged task's folder when it is asked for (written under ``$HFPRUNE_CACHE``)."""
    from ..examples import POLARITY_TASK, polarity_task

    paths = [include_path] if include_path else []
    if POLARITY_TASK in tasks:
        paths.append(polarity_task(str(cache_dir("tasks"))))
    return paths or None


def _prune(recipe: Recipe, loaded: LoadedModel, console: Console) -> PruningResult:
    calib = calibration_input(recipe.calibration.data, loaded, recipe.calibration.text_column)
    example = loaded.vision.train_x[:8] if loaded.vision is not None else None
    console.info(f"pruning with {recipe.pruning.criterion} ({recipe.pruning.granularity}, "
                 f"sparsity {recipe.pruning.sparsity:g})")
    return prune(loaded.model, recipe.pruning, calibration_data=calib, tokenizer=loaded.tokenizer,
                 example_inputs=example, progress=console.progress)


def _training_data(section: TrainingSection, loaded: LoadedModel, seed: int) -> Any:
    import datasets

    texts, labels = load_rows(section.dataset, section.text_column, section.label_column)
    enc = loaded.tokenizer(texts, truncation=True, max_length=section.max_length)
    rows = datasets.Dataset.from_dict({**enc, "labels": [int(y) for y in labels]})
    return rows.train_test_split(test_size=section.eval_fraction, seed=seed)


def _checkpoint_dir(recipe: Recipe, kind: str, section_args: dict[str, Any]) -> tuple[str, bool]:
    """Where Trainer writes its checkpoints, and whether hfprune owns (and so removes) the folder: the user's
    ``output_dir``; else, with an output folder, a sibling ``.NAME.KIND-checkpoints`` that belongs to this run (a
    re-run after a crash resumes from it; removed once the run succeeds); else a temporary folder."""
    if "output_dir" in section_args:
        return section_args["output_dir"], False
    out = recipe.output.dir
    if out:
        out = os.path.abspath(out)
        return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.{kind}-checkpoints"), True
    return tempfile.mkdtemp(prefix=f"hfprune-{kind}-"), True


def _fit(trainer: Any, folder: str, owned: bool, console: Console) -> None:
    """Train, resuming from the newest checkpoint a crashed run of this recipe left in ``folder``."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(folder) if owned and os.path.isdir(folder) else None
    if last:
        console.info(f"resuming from {last} (a previous run of this recipe stopped there; delete the folder to "
                     "start over)")
    trainer.train(resume_from_checkpoint=last)
    if owned:  # the checkpoints of a finished run are not kept
        shutil.rmtree(folder, ignore_errors=True)


def _train(recipe: Recipe, loaded: LoadedModel, split: Any, console: Console) -> Any:
    """Prune while fine-tuning with `PruningTrainer`; returns the trainer (its model is the pruned one, its
    `pruning_report` says what was removed)."""
    from transformers import DataCollatorWithPadding, TrainingArguments

    folder, owned = _checkpoint_dir(recipe, "train", recipe.training.args)
    args = {"report_to": "none", "disable_tqdm": not console.progress, **recipe.training.args, "output_dir": folder}
    try:
        training_args = TrainingArguments(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"Recipe section 'training' has a TrainingArguments value that transformers refuses: "
                          f"{shorten(' '.join(str(e).split()))}") from None
    trainer = PruningTrainer(model=loaded.model, args=training_args, pruning_config=recipe.pruning,
                          train_dataset=split["train"], eval_dataset=split["test"], processing_class=loaded.tokenizer,
                          data_collator=DataCollatorWithPadding(loaded.tokenizer))
    console.info("fine-tuning with PruningTrainer")
    _fit(trainer, folder, owned, console)
    return trainer


def _recover(recipe: Recipe, loaded: LoadedModel, result: PruningResult, dense: nn.Module | None,
             console: Console) -> Any:
    """Train the one-shot pruned model back with `RecoveryTrainer` (the recipe's 'recovery' section); returns the
    trainer (its model is the recovered, merged one). ``dense``: the unpruned model, the teacher when the recovery
    distils and the writer of the generated rows when it has some."""
    from transformers import TrainingArguments

    from ..trainer import RecoveryTrainer
    from ..trainer.recovery.budget import pack_texts
    from ..trainer.recovery.self_data import mixed_rows

    section = recipe.recovery
    tok = loaded.tokenizer
    rows = pack_texts(tok, load_rows(section.data, section.text_column)[0], section.seq_len) if section.data else []
    if section.generated_share > 0:
        rows = mixed_rows(dense, rows, section.generated_share, section.seq_len, section.settings.max_tokens,
                          recipe.pruning.seed)
    evals = None
    if section.eval_data:
        evals = pack_texts(tok, load_rows(section.eval_data, section.text_column)[0], section.seq_len,
                           section.eval_tokens)
    folder, owned = _checkpoint_dir(recipe, "recover", section.args)
    args = {"report_to": "none", "save_strategy": "no", "disable_tqdm": not console.progress,
            "seed": recipe.pruning.seed, **section.args, "output_dir": folder}
    teacher = dense if section.settings.distills else None
    trainer = RecoveryTrainer(model=result.model, args=TrainingArguments(**args), recovery=section.settings,
                              teacher=teacher, pruned=result, data_name=_recovery_data_name(section), train_dataset=rows,
                              eval_dataset=evals, processing_class=tok)
    console.info(f"recovering with {section.settings.method} ({trainer.args.max_steps} steps)")
    _fit(trainer, folder, owned, console)
    return trainer


def _recovery_data_name(section: RecoverySection) -> str:
    if section.generated_share == 0:
        return section.data
    generated = f"{section.generated_share:.0%} generated by the unpruned model (from BOS, top-p 0.95)"
    return generated if section.data is None else f"{section.data} + {generated}"


def _save_trained(trainer: Any, path: str, overwrite: bool) -> None:
    with atomic_output_dir(path, overwrite) as tmp:
        trainer.save_model(tmp)  # weights, config, pruning_config.json, the trainer's report and card


def save_plain(result: PruningResult, path: str, overwrite: bool, example: str) -> None:
    """Plain torch modules have no save_pretrained: state dict as safetensors, plus config and report; the
    record names the packaged example that rebuilds the architecture."""
    info = PruningInfo(base_model=None, loader=Loader.STATE_DICT, auto_class=result.info.auto_class,
                       groups=result.info.groups, example=example)
    save_checkpoint(path, result.model, result.config, info, result.report, overwrite=overwrite)


def run_recipe(recipe: Recipe, console: Console, command: str | None = None) -> PruningReport:
    """Run ``recipe`` and return its report (also saved in the output folder when one is set)."""
    _check_before_work(recipe)
    out = recipe.output
    console.info(f"loading {recipe.model.name}")
    loaded = load_model(recipe.model.name, recipe.model.task, recipe.model.train_epochs, recipe.pruning.seed,
                        recipe.model.allow_pickle)
    _check_loaded(recipe, loaded)
    split = _training_data(recipe.training, loaded, recipe.pruning.seed) if recipe.training else None
    evaluator = None
    if recipe.evaluation is not None:
        evaluator = Evaluator(recipe.evaluation, loaded, console, _held_out(split, loaded))
        before = evaluator.measure(loaded.model)
        console.info(f"{evaluator.metric} before pruning: {before:.4f}")
        tasks_before = evaluator.measure_tasks(loaded.model, "before pruning")
    trainer = None
    if recipe.training:
        trainer = _train(recipe, loaded, split, console)
        result, model = None, trainer.model
    else:
        teacher = _teacher_for(recipe, loaded)
        result = _prune(recipe, loaded, console)
        model = result.model
    if evaluator is not None:
        after = evaluator.measure(model)
        console.info(f"{evaluator.metric} after pruning: {after:.4f}")
        tasks_after = evaluator.measure_tasks(model, "after pruning")
    if recipe.recovery:  # the pruned result's report records dense -> pruned; the trainer's, -> recovered
        if evaluator is not None:
            evaluator.record(result, before, after, tasks_before, tasks_after)
        result.record_command(command)
        trainer = _recover(recipe, loaded, result, teacher, console)
        model = trainer.model
        if evaluator is not None:
            pruned, after = after, evaluator.measure(model)
            console.info(f"{evaluator.metric} after recovery: {after:.4f}")
            evaluator.record(trainer, pruned, after, tasks_after, evaluator.measure_tasks(model, "after recovery"))
        trainer.record_command(command)
    else:
        target = trainer if trainer is not None else result  # both record evaluation and command the same way
        if evaluator is not None:
            evaluator.record(target, before, after, tasks_before, tasks_after)
        target.record_command(command)
    report = trainer.pruning_report if trainer is not None else result.report
    with main_process_writes() as main:  # one process writes and pushes; the others wait for the folder
        if main and out.dir:
            if trainer is not None:
                _save_trained(trainer, out.dir, out.overwrite)
            elif loaded.vision is not None:
                save_plain(result, out.dir, out.overwrite, recipe.model.name)
            else:
                save_checkpoint(out.dir, result.model, result.config, result.info, result.report, loaded.tokenizer,
                                out.overwrite)
            console.info(f"saved to {out.dir}")
        if main and out.push_to_hub:
            console.info(f"pushed: {push_to_hub(out.dir, out.push_to_hub, private=out.private)}")
    return report


def _teacher_for(recipe: Recipe, loaded: LoadedModel) -> nn.Module | None:
    """A copy of the unpruned model when the recovery distils or generates rows (taken before pruning changes the
    model)."""
    if not recipe.recovery:
        return None
    if loaded.task != "causal-lm" or loaded.tokenizer is None:
        raise UsageError(f"Recovery trains causal language models with a tokenizer; {recipe.model.name} is "
                         f"{loaded.task}. Remove the 'recovery' section.")
    if not recipe.recovery.settings.distills and recipe.recovery.generated_share == 0:
        return None
    import copy

    return copy.deepcopy(loaded.model)


def _held_out(split: Any, loaded: LoadedModel) -> tuple[list[str], list] | None:
    """The held-out training rows as texts and labels, so fine-tuned models are evaluated on unseen rows."""
    if split is None:
        return None
    test = split["test"]
    texts = [loaded.tokenizer.decode(ids, skip_special_tokens=True) for ids in test["input_ids"]]
    return texts, list(test["labels"])
