"""The `TrainerCallback` that runs the pruning schedule inside Trainer's own loop.

Order inside one optimizer step of `transformers.Trainer`: ``optimizer.step()`` -> `on_optimizer_step` (masks
re-applied) -> scheduler, ``zero_grad``, ``global_step += 1`` -> `on_step_end` (a scheduled mask update, scored on
the current weights) -> logging and checkpointing (`on_save` writes the masks next to the weights). So a checkpoint
taken at step t holds the masks in force after step t, and a resumed run continues the schedule exactly.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .masks import TrainingMasks
from .schedule import check_schedule, sparsity_at


class PruningCallback(TrainerCallback):
    """Applies the schedule of ``masks.config`` to the model and keeps the masks applied."""

    def __init__(self, masks: TrainingMasks) -> None:
        self.masks = masks
        self.optimizer: Any = None

    def _step(self, state: TrainerState, model: Any) -> None:
        self.masks.update(model, sparsity_at(state.global_step, self.masks.config), self.optimizer)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, optimizer: Any = None, **kwargs: Any) -> None:
        check_schedule(self.masks.config, state.max_steps)
        self.optimizer = optimizer
        self.masks.apply()  # masks restored from a checkpoint, or none yet
        self._step(state, model)

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                          **kwargs: Any) -> None:
        self.masks.apply()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: Any = None, **kwargs: Any) -> None:
        self._step(state, model)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            self.masks.save(folder, state.global_step)
