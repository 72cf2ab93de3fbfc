"""Recovery after pruning: the settings (`RecoveryConfig`) and the teacher side (`Distiller`) shared by
`PruningTrainer` (prune while fine-tuning) and `RecoveryTrainer` (fine-tune an already pruned model).

Why a trainer-side dataclass and not more `PruningConfig` fields: these settings say how a model is *trained*
after (or while) it is pruned, not what is removed; `prune()` never reads them, and a pruned folder's
``pruning_config.json`` must stay the same whether or not it was recovered. The recovery that ran is recorded in
``pruning_report.json`` (``recovery``) and the card instead. This is the one place distillation is configured, for
both trainers.

Losses (weights add up with the task loss ``(1 - distillation_weight) * task``):

* logits: KL(teacher || student) at ``temperature``, scaled by T² (Hinton et al.), padding left out;
* hidden states (``hidden_weight``): per mapped block, the mean squared error between the student's block output
  (projected when its hidden size differs) and the teacher's, divided by the teacher's mean square so the weight
  does not depend on the model's activation scale (hfprune extension: the normalisation);
* attention outputs (``attention_weight``): the same normalised error on each block's attention-module output
  (before the residual add), as in TinyBERT's attention-based layer distillation (hfprune extension: the output,
  not the attention maps, is matched, so pruned heads do not break the correspondence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigError

PROJECTIONS_FILE = "hfprune_recovery.safetensors"
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class RecoveryConfig:
    """How a pruned model is trained back. Invalid values raise `ConfigError` at construction."""

    max_tokens: int | None = _f(None, "Training-token budget; converted to TrainingArguments.max_steps from the "
                                "tokens per batch (non-padding tokens of the training rows). None: the "
                                "TrainingArguments' own max_steps / epochs.")
    distillation_weight: float = _f(0.0, "Weight of the logit KL to the teacher; the task loss gets 1 - weight. "
                                    "0: plain fine-tuning (no teacher forward).")
    temperature: float = _f(1.0, "Temperature of the logit KL.")
    hidden_weight: float = _f(0.0, "Weight of the hidden-state loss (block outputs); needs a teacher.")
    attention_weight: float = _f(0.0, "Weight of the attention-output loss; needs a teacher.")
    layer_map: list[int] | None = _f(None, "Teacher block matched to each student block; default: the same index "
                                     "when the depths are equal, else evenly spread (last to last).")
    projection: str = _f("learned", "When the student's hidden size differs from the teacher's: 'learned' (a "
                         "linear map per block, trained with the student, saved in checkpoints) or 'fixed' (a "
                         "seeded random orthonormal map of the teacher's states to the student's size).")
    teacher_dtype: str = _f("auto", "Teacher precision: 'auto' (bfloat16 on CUDA devices that support it, "
                            "float32 elsewhere), 'float32', 'bfloat16' or 'float16'.")
    lora_r: int | None = _f(None, "LoRA rank (RecoveryTrainer only): train low-rank adapters instead of all "
                            "weights; merged into the weights before saving. None: full fine-tuning.")
    lora_alpha: int = _f(16, "LoRA scaling numerator (peft's lora_alpha).")
    lora_dropout: float = _f(0.0, "Dropout on the LoRA branch.")
    lora_targets: list[str] | None = _f(None, "Module-name suffixes that get adapters (e.g. ['q_proj', "
                                        "'down_proj']); default every Linear layer except the output head.")
    seed: int = _f(0, "Seed of the fixed projections and the learned projections' initialisation.")

    def __post_init__(self) -> None:
        self.validate()

    @property
    def distills(self) -> bool:
        """Whether a teacher forward is needed."""
        return self.distillation_weight > 0 or self.hidden_weight > 0 or self.attention_weight > 0

    @property
    def method(self) -> str:
        """A short name of the recovery: 'distillation', 'finetune', 'lora' or 'lora+distillation'."""
        base = "distillation" if self.distills else "finetune"
        if self.lora_r is None:
            return base
        return "lora" if base == "finetune" else "lora+distillation"

    def validate(self) -> None:
        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"RecoveryConfig.{name}={getattr(self, name)!r} is not allowed: {allowed}.")

        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool)
                                            or self.max_tokens <= 0):
            raise bad("max_tokens", "a positive number of training tokens (e.g. 250000), or None to train for "
                      "TrainingArguments.max_steps / num_train_epochs")
        if not isinstance(self.distillation_weight, (int, float)) or not 0 <= self.distillation_weight <= 1:
            raise bad("distillation_weight", "a number in [0, 1]")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise bad("temperature", "a positive number")
        for name in ("hidden_weight", "attention_weight", "lora_dropout"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise bad(name, "a number >= 0")
        if self.layer_map is not None and (isinstance(self.layer_map, str)
                                           or not all(isinstance(i, int) and i >= 0 for i in self.layer_map)):
            raise bad("layer_map", "a list of teacher block indices, one per student block")
        if self.projection not in ("learned", "fixed"):
            raise bad("projection", "'learned' or 'fixed'")
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise bad("teacher_dtype", "one of " + ", ".join(map(repr, TEACHER_DTYPES)))
        if self.lora_r is not None and (not isinstance(self.lora_r, int) or self.lora_r < 1):
            raise bad("lora_r", "a positive rank (e.g. 16), or None for full fine-tuning")
        if not isinstance(self.lora_alpha, int) or self.lora_alpha < 1:
            raise bad("lora_alpha", "a positive integer")
        if self.lora_targets is not None and (isinstance(self.lora_targets, str) or not self.lora_targets
                                              or not all(isinstance(s, str) for s in self.lora_targets)):
            raise bad("lora_targets", "a non-empty list of module-name suffixes such as ['q_proj', 'v_proj']")
