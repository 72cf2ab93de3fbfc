"""`RecoveryMixin`: what `PruningTrainer` and `RecoveryTrainer` share on top of `transformers.Trainer` — the
frozen teacher and its loss terms, the token budget, learned projections in the optimizer and in checkpoints, and
perplexity in the evaluation metrics.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ...calibration.checks import check_weights
from ...errors import ConfigError, TrainingError
from .budget import steps_for_tokens, tokens_per_row
from .config import PROJECTIONS_FILE, RecoveryConfig
from .teacher import Distiller, check_teacher
from .teacher_cache import TeacherCache


class _Projections(TrainerCallback):
    """Keeps the learned projections in step with the model: their gradients cleared after each optimizer step
    (Trainer zeroes only the model's) and their weights written into every checkpoint folder."""

    def __init__(self, trainer: "RecoveryMixin") -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for p in self.trainer.distiller.parameters():
            p.grad = None

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        d = self.trainer.distiller
        if state.is_world_process_zero and d is not None and d.projections is not None:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            os.makedirs(folder, exist_ok=True)
            save_file(d.state_dict(), os.path.join(folder, PROJECTIONS_FILE))


def refuse_sharding(args: Any) -> None:
    """hfprune's trainers run one full model per process (DDP); FSDP / DeepSpeed are refused before any work."""
    sharded = [name for name in ("fsdp", "deepspeed") if getattr(args, name, None)]
    if sharded:
        raise ConfigError(f"TrainingArguments.{sharded[0]} is set, and hfprune's trainers run under DDP only "
                          "(torchrun / accelerate launch, one full model per process): sharded training with a "
                          "teacher and hfprune's hooks and masks is untested. Remove it; a model that does not fit "
                          "one device is not supported yet (docs/trainer.md).")


class RecoveryMixin:
    """Mixed into a `Trainer` subclass before `Trainer`; call `_setup_recovery` after ``Trainer.__init__``."""

    distiller: Distiller | None = None
    recovery: RecoveryConfig

    def _setup_recovery(self, recovery: RecoveryConfig, teacher: nn.Module | None,
                        teacher_tokenizer: Any = None, student: nn.Module | None = None) -> None:
        """Check the teacher and the token budget (before any training) and freeze the teacher. ``student``: the
        plain model when ``self.model`` wraps it (LoRA), so hooks sit on its own modules."""
        if not isinstance(recovery, RecoveryConfig):
            raise ConfigError(f"recovery must be a RecoveryConfig, got {type(recovery).__name__}.")
        self.recovery = recovery
        self._recovery_sums: dict[str, float] = {}
        self._recovery_count = 0
        if recovery.max_tokens is not None:
            per_row = tokens_per_row(self.train_dataset)
            self.args.max_steps = steps_for_tokens(recovery.max_tokens, per_row, self.args)
            if self.args.include_num_input_tokens_seen in ("no", False):
                self.args.include_num_input_tokens_seen = "non_padding"
        if teacher is not None and not recovery.distills:
            raise ConfigError("A teacher was given but RecoveryConfig has no teacher term: set distillation_weight "
                              "(and/or hidden_weight, attention_weight) above 0, or drop teacher=.")
        if recovery.distills:
            if teacher is None:
                raise ConfigError("Distillation needs teacher= (the unpruned model).")
            student = self.model if student is None else student
            check_weights(teacher, "the teacher")  # a NaN teacher would train a NaN student, silently
            check_teacher(student, teacher, self.processing_class, teacher_tokenizer)
            self.distiller = Distiller(student, teacher, recovery, self.args.device)
            if recovery.teacher_top_k is not None:
                self.distiller.cache = TeacherCache.for_dataset(
                    self.distiller.teacher, self.train_dataset, recovery.teacher_top_k, recovery.temperature,
                    batch_size=self.args.per_device_eval_batch_size)
            if self.distiller.projections is not None:
                self.add_callback(_Projections(self))

    # --- loss -----------------------------------------------------------------------------------------------------
    def _task_and_teacher_loss(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any) -> Any:
        """(loss, outputs): the task loss, or with a teacher ``(1 - w) * task + teacher terms``."""
        d = self.distiller
        if d is None or not model.training:
            return super().compute_loss(model, inputs, True, num_items_in_batch)
        student_inputs = {**inputs, "output_hidden_states": True} if d.wants_hidden else inputs
        with d.student_capture() as attn:
            loss, outputs = super().compute_loss(model, student_inputs, True, num_items_in_batch)
            attn = list(attn)
        terms = d.losses(inputs, outputs, attn)
        # Trainer does not divide by the accumulation steps when the task loss is already normalised by
        # num_items_in_batch (a share of the whole accumulated batch): give the teacher terms the same share
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (getattr(self, "model_accepts_loss_kwargs", False) and num_items_in_batch is not None) \
                or getattr(self, "compute_loss_func", None) is not None
        scale = 1.0 / self.current_gradient_accumulation_steps if scaled else 1.0
        extra = sum(terms.values()) * scale
        for k, v in terms.items():
            self._recovery_sums[k] = self._recovery_sums.get(k, 0.0) + float(v.detach())
        self._recovery_count += 1
        return (1 - self.recovery.distillation_weight) * loss + extra, outputs

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        """Trainer's step, refusing a non-finite loss before the optimizer applies its gradients (Trainer's own
        logging filters NaN losses out, so a run would otherwise end with NaN weights and exit 0)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise TrainingError(f"The training loss is {float(loss)} at step {self.state.global_step + 1}: the "
                                "weights would become NaN. Lower the learning rate, check the training data, and "
                                "check that the model (and teacher) hold finite weights.")
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._recovery_logs(logs)
        super().log(logs, start_time)

    def _recovery_logs(self, logs: dict[str, float]) -> None:
        """Mean teacher terms since the last log (``recovery/<term>``) and ``<prefix>_perplexity`` = exp(mean token
        loss) next to every evaluation loss (``logs`` is the dict `evaluate` returns, so it gets it too)."""
        for key in [k for k in logs if k.endswith("_loss") and k != "train_loss"]:
            logs[key[: -len("loss")] + "perplexity"] = math.exp(min(float(logs[key]), 50.0))
        if "loss" in logs and self._recovery_count:
            for k, v in self._recovery_sums.items():
                logs[f"recovery/{k}"] = v / self._recovery_count
            self._recovery_sums, self._recovery_count = {}, 0

    # --- optimizer, checkpoints, evaluation -----------------------------------------------------------------------
    def create_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        """Trainer's optimizer, plus the learned projections (no weight decay) when there are any."""
        optimizer = super().create_optimizer(*args, **kwargs)
        extra = self.distiller.parameters() if self.distiller is not None else []
        if extra and not any(p is extra[0] for g in optimizer.param_groups for p in g["params"]):
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    def _load_projections(self, folder: str) -> None:
        path = os.path.join(folder, PROJECTIONS_FILE)
        if self.distiller is not None and self.distiller.projections is not None and os.path.isfile(path):
            self.distiller.load_state_dict(load_file(path))

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher (None without distillation)."""
        return self.distiller.teacher if self.distiller is not None else None

    @property
    def tokens_trained(self) -> int:
        """Non-padding training tokens seen so far (Trainer's counter; kept in checkpoints)."""
        return int(getattr(self.state, "num_input_tokens_seen", 0) or 0)

