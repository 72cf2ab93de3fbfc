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

import typing
from dataclasses import dataclass
from typing import Literal

from ...config.groups import OptionGroup, option
from ...errors import ConfigError
from ...utils.rules import Rule, integer, is_int, number, optional

PROJECTIONS_FILE = "hfprune_recovery.safetensors"
TeacherDtype = Literal["auto", "float32", "bfloat16", "float16"]
TEACHER_DTYPES = typing.get_args(TeacherDtype)
_INDICES = Rule(lambda v: isinstance(v, list) and all(is_int(i) and i >= 0 for i in v),
                "a list of teacher block indices, one per student block")
_SUFFIXES = Rule(lambda v: isinstance(v, list) and bool(v) and all(isinstance(s, str) for s in v),
                 "a non-empty list of module-name suffixes such as ['q_proj', 'v_proj']")


@dataclass
class RecoveryConfig(OptionGroup):
    """How a pruned model is trained back. Invalid values raise `ConfigError` at construction (the rule machinery
    of `PruningConfig`'s groups: ``Literal`` choices and type hints, ranges in `RULES`)."""

    where = "RecoveryConfig"
    RULES = {
        "max_tokens": optional(integer(1, allowed="a positive number of training tokens (e.g. 250000)")),
        "distillation_weight": number(0, 1), "temperature": number(0, open_low=True),
        "hidden_weight": number(0), "attention_weight": number(0), "lora_dropout": number(0),
        "layer_map": optional(_INDICES),
        "lora_r": optional(integer(1, allowed="a positive rank (e.g. 16)")),
        "lora_alpha": integer(1), "lora_targets": optional(_SUFFIXES), "seed": integer(0),
        "teacher_top_k": optional(integer(1, allowed="a positive number of tokens per position (e.g. 64)")),
    }

    max_tokens: int | None = option(None, "Training-token budget; converted to TrainingArguments.max_steps from the "
                                "tokens per batch (non-padding tokens of the training rows). None: the "
                                "TrainingArguments' own max_steps / epochs.")
    distillation_weight: float = option(0.0, "Weight of the logit KL to the teacher; the task loss gets 1 - weight. "
                                    "0: plain fine-tuning (no teacher forward).")
    temperature: float = option(1.0, "Temperature of the logit KL.")
    hidden_weight: float = option(0.0, "Weight of the hidden-state loss (block outputs); needs a teacher.")
    attention_weight: float = option(0.0, "Weight of the attention-output loss; needs a teacher.")
    layer_map: list[int] | None = option(None, "Teacher block matched to each student block; default: the same index "
                                     "when the depths are equal, else evenly spread (last to last).")
    projection: Literal["learned", "fixed"] = option("learned", "When the student's hidden size differs from the teacher's: 'learned' (a "
                         "linear map per block, trained with the student, saved in checkpoints) or 'fixed' (a "
                         "seeded random orthonormal map of the teacher's states to the student's size).")
    teacher_dtype: TeacherDtype = option("auto", "Teacher precision: 'auto' (bfloat16 on CUDA devices that support it, "
                            "float32 elsewhere), 'float32', 'bfloat16' or 'float16'.")
    teacher_top_k: int | None = option(None, "Cache the teacher's outputs once before training: its k most likely "
                                       "tokens per position (and the rest as one bucket), reused at every step "
                                       "and by later runs on the same rows (hfprune extension; exact when k "
                                       "covers the vocabulary). Logit distillation only. None: the teacher runs "
                                       "at every step.")
    lora_r: int | None = option(None, "LoRA rank (RecoveryTrainer only): train low-rank adapters instead of all "
                            "weights; merged into the weights before saving. None: full fine-tuning.")
    lora_alpha: int = option(16, "LoRA scaling numerator (peft's lora_alpha).")
    lora_dropout: float = option(0.0, "Dropout on the LoRA branch.")
    lora_targets: list[str] | None = option(None, "Module-name suffixes that get adapters (e.g. ['q_proj', "
                                        "'down_proj']); default every Linear layer except the output head.")
    seed: int = option(0, "Seed of the fixed projections and the learned projections' initialisation.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.teacher_top_k is not None and (self.distillation_weight == 0 or self.hidden_weight > 0
                                               or self.attention_weight > 0):
            raise ConfigError(f"RecoveryConfig.teacher_top_k={self.teacher_top_k} caches the teacher's logits, so it "
                              "needs logit distillation only: distillation_weight above 0, hidden_weight and "
                              "attention_weight 0 (intermediate states are too large to cache). Set "
                              "teacher_top_k=None, or drop the intermediate terms.")

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
