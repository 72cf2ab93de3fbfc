"""`RecoveryTrainer`: a `transformers.Trainer` that trains an already pruned (compacted) model back — full
fine-tuning or LoRA, with or without distillation from the unpruned teacher — within a token budget.

Use it after `prune()`; `PruningTrainer` covers pruning *while* training (it takes the same `RecoveryConfig` for its
teacher terms and token budget, but no LoRA: adapters need the compacted shapes). The final `save_model` writes a
plain checkpoint (LoRA merged) with the pruned model's ``pruning_config.json``, its ``pruning_report.json`` with a
``recovery`` entry (method, tokens, data, before/after evaluation, time) and hfprune's model card.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from torch import nn
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from ...config.pruning_config import PruningConfig, read_pruning_file
from ...errors import ConfigError
from ...checkpoint.record import PruningInfo, write_pruning_files
from ...report.pruning_report import PruningReport
from ...report.records import EvaluationRecords
from .mixin import RecoveryMixin, refuse_sharding
from .lora import add_lora, merge_lora
from .config import RecoveryConfig

_NOT_QUALITY = ("_runtime", "_samples_per_second", "_steps_per_second", "_preparation_time", "epoch")


def _pruned_files(pruned: Any) -> tuple[PruningConfig, PruningReport, PruningInfo] | None:
    """(config, report, record) of a `PruningResult` or a folder saved by hfprune."""
    if pruned is None:
        return None
    if isinstance(pruned, (str, os.PathLike)):
        saved = read_pruning_file(pruned)
        return PruningConfig.from_dict(saved["pruning_config"]), PruningReport.load(pruned), \
            PruningInfo.from_dict(saved)
    if all(hasattr(pruned, a) for a in ("config", "report", "info")):
        return pruned.config, dataclasses.replace(pruned.report), pruned.info
    raise ConfigError(f"pruned= must be a PruningResult or a folder saved by hfprune, got {type(pruned).__name__}.")


class RecoveryTrainer(EvaluationRecords, RecoveryMixin, Trainer):
    """`Trainer` plus ``recovery`` (how to train back), ``teacher`` (the unpruned model, for distillation) and
    ``pruned`` (the `PruningResult`, or its saved folder, whose config and report the saved folder carries).
    ``data_name`` names the training data on the card. Bad settings raise before training starts."""

    def __init__(self, model: nn.Module | None = None, args: Any = None, *, recovery: RecoveryConfig,
                 teacher: nn.Module | None = None, pruned: Any = None, teacher_tokenizer: Any = None,
                 data_name: str | None = None, **kwargs: Any) -> None:
        if not isinstance(recovery, RecoveryConfig):
            raise ConfigError(f"recovery must be a RecoveryConfig, got {type(recovery).__name__}.")
        refuse_sharding(args)
        self._pruned = _pruned_files(pruned)
        if model is None:
            model = getattr(pruned, "model", None)
        if model is None:
            raise ConfigError("RecoveryTrainer needs model= (the pruned model) or pruned= a PruningResult.")
        base = model
        if recovery.lora_r is not None:
            model = add_lora(model, recovery)
        super().__init__(model=model, args=args, **kwargs)
        self._setup_recovery(recovery, teacher, teacher_tokenizer, student=base)
        self.data_name = data_name
        self._evaluation: dict[str, dict[str, float]] = {}
        self._seconds = 0.0
        self._merged = False
        self._command: str | None = None

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        loss, outputs = self._task_and_teacher_loss(model, inputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """`Trainer.train` (resuming the learned projections too), then the LoRA adapters merged into the weights."""
        if self._merged:
            raise ConfigError("This RecoveryTrainer has merged its LoRA adapters; build a new one to train again.")
        folder = get_last_checkpoint(self.args.output_dir) if resume_from_checkpoint is True else resume_from_checkpoint
        if isinstance(folder, str):
            self._load_projections(folder)
        t = time.perf_counter()
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        self._seconds += time.perf_counter() - t
        if self.recovery.lora_r is not None:
            self.model = self.model_wrapped = merge_lora(self.model)
            self._merged = True
        return output

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Trainer's `evaluate` (with perplexity); metrics before the first step are "before", later ones "after"."""
        metrics = super().evaluate(*args, **kwargs)
        when = "before" if self.state.global_step == 0 else "after"
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not name.endswith(_NOT_QUALITY) and name != "num_input_tokens_seen":
                self._evaluation.setdefault(name, {})[when] = float(value)
        return metrics

    @property
    def recovery_info(self) -> dict[str, Any]:
        """What the report's ``recovery`` entry holds: method, settings, tokens, data, time, evaluation."""
        tokens = self.tokens_trained
        teacher = self.distiller.teacher if self.distiller is not None else None
        return {
            "method": self.recovery.method, "trainer": type(self).__name__,
            "tokens": tokens, "max_tokens": self.recovery.max_tokens, "steps": self.state.global_step,
            "data": self.data_name, "learning_rate": self.args.learning_rate,
            "teacher": getattr(getattr(teacher, "config", None), "_name_or_path", None) if teacher is not None else None,
            "seconds": round(self._seconds, 2),
            "seconds_per_1k_tokens": round(1000 * self._seconds / tokens, 4) if tokens else None,
            "teacher_cache": self.distiller.cache.describe() if self.distiller and self.distiller.cache else None,
            "settings": {k: v for k, v in dataclasses.asdict(self.recovery).items() if v is not None},
            "evaluation": {k: dict(v) for k, v in self._evaluation.items()},
        }

    @property
    def pruning_report(self) -> PruningReport | None:
        """The pruned model's report with this recovery: ``recovery`` filled in, and every metric recorded for the
        recovered model as the report's "after" (its "before" stays the unpruned model's)."""
        if self._pruned is None:
            return None
        _, base, _ = self._pruned
        evaluation = {k: dict(v) for k, v in base.evaluation.items()}
        for metric, entry in self._evaluation.items():
            if metric in evaluation and "after" in entry:
                evaluation[metric]["after"] = entry["after"]
        report = dataclasses.replace(base, recovery=self.recovery_info, evaluation=evaluation)
        if self._command:
            report.command = self._command
        return report

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's save (checkpoints hold the adapters while training); the final save also writes the pruned
        model's config, its report with the recovery, and the card."""
        super().save_model(output_dir, _internal_call)
        if not self.args.should_save or _internal_call or self._pruned is None:
            return
        folder = output_dir or self.args.output_dir
        config, _, info = self._pruned
        recovered = dataclasses.replace(info, recovery={"method": self.recovery.method, "tokens": self.tokens_trained})
        write_pruning_files(folder, config, recovered, self.pruning_report)  # the one writer
