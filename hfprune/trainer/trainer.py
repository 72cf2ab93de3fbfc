"""`PruningTrainer`: a drop-in `transformers.Trainer` that prunes while it fine-tunes.

The schedule runs in `PruningCallback` (Trainer's loop is not copied); `compute_loss` only adds the regulariser
and the distillation term; at the end of `train()` the model is compacted unless ``keep_masks=True``. The final
save (`save_model`, `push_to_hub`) writes what `PruningResult.save_pretrained` writes: ``pruning_config.json``,
``pruning_report.json`` and hfprune's model card.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from ..calibration.data import CalibrationSet, prepare_calibration
from ..structure.loaders import Loader
from ..checkpoint.record import PruningInfo, write_pruning_files
from ..config.pruning_config import PruningConfig
from ..engine.pruner import Pruner
from ..errors import CalibrationError, ConfigError
from ..report.card import CARD_NAME, PLACEHOLDER_ID
from ..report.pruning_report import PruningReport
from ..report.records import EvaluationRecords
from .callback import PruningCallback
from .recovery.mixin import RecoveryMixin, refuse_sharding
from .losses import LayerInputs, group_lasso, relative_importance, ri_layers
from .masks import TrainingMasks
from .recovery.config import RecoveryConfig
from .schedule import check_schedule, sparsity_at


#: Trainer metrics that describe the evaluation run, not the model's quality
_NOT_QUALITY = ("_runtime", "_samples_per_second", "_steps_per_second", "epoch")


class PruningTrainer(EvaluationRecords, RecoveryMixin, Trainer):
    """`Trainer` plus ``pruning_config`` (what, how and when to prune) and an optional ``calibration_dataset``
    (default: the first ``num_samples`` rows of ``train_dataset``). ``recovery`` adds the teacher terms
    (intermediate states too) and a token budget; ``teacher`` defaults to a frozen copy of the model before any
    pruning. Bad settings raise before training starts."""

    def __init__(self, model: nn.Module | None = None, args: Any = None, *, pruning_config: PruningConfig,
                 calibration_dataset: Any = None, callbacks: list | None = None,
                 recovery: RecoveryConfig | None = None, teacher: nn.Module | None = None,
                 teacher_tokenizer: Any = None, **kwargs: Any) -> None:
        if not isinstance(pruning_config, PruningConfig):
            raise ConfigError(f"pruning_config must be a PruningConfig, got {type(pruning_config).__name__}.")
        if model is None:
            raise ConfigError("PruningTrainer needs model= (model_init is not supported: masks belong to one model).")
        refuse_sharding(args)
        if pruning_config.prunes_width_depth:
            raise ConfigError(f"granularity {pruning_config.granularity!r} / target_params are one-shot: prune with "
                              "hfprune.prune(), then train the smaller model (RecoveryTrainer, docs/trainer.md).")
        if pruning_config.training.schedule != "one_shot" and pruning_config.nm is not None:
            raise ConfigError(f"granularity={pruning_config.granularity!r} (N:M) is a fixed pattern; use "
                              "schedule='one_shot'.")
        self._callback = PruningCallback(None)  # masks need the collator and columns that Trainer sets up
        recovery = _recovery_of(recovery)
        super().__init__(model=model, args=args, callbacks=[self._callback] + list(callbacks or []), **kwargs)
        self.pruning_config = pruning_config
        if recovery.distills and teacher is None:  # a copy before any pruning and before the RI hooks
            teacher = copy.deepcopy(self.model)
        self._setup_recovery(recovery, teacher, teacher_tokenizer)  # sets max_steps from a token budget
        check_schedule(pruning_config, self.args.max_steps)
        calib = self._calibration(calibration_dataset)
        self.pruning_masks = TrainingMasks(Pruner(self.model, pruning_config, calibration=calib, progress=False))
        self._callback.masks = self.pruning_masks
        self.pruning_config = pruning_config = self.pruning_masks.config  # "auto" settled by the engine
        self._layer_inputs: LayerInputs | None = None
        if pruning_config.training.regularizer == "relative_importance":
            self._layer_inputs = LayerInputs(ri_layers(self.pruning_masks))
        self._reg_sum, self._reg_count = 0.0, 0
        self._loader = Loader.TRANSFORMERS if hasattr(self.model, "save_pretrained") else Loader.STATE_DICT
        self._compacted = False
        self._timings: dict[str, float] = {}
        self._evaluation: dict[str, dict[str, float]] = {}
        self._command: str | None = None

    # --- calibration --------------------------------------------------------------------------------------------
    def _calibration(self, data: Any) -> CalibrationSet | None:
        """Batches for scoring, identical on every process (`collect_statistics` splits them by rank)."""
        config = self.pruning_config
        needed = Pruner.needs_data(config)
        if not needed and data is None:
            return None
        data = self.train_dataset if data is None else data
        if data is None:
            raise CalibrationError(f"{needed} needs calibration data: pass calibration_dataset= or "
                                   "train_dataset=.")
        rows = _is_rows(data)
        if rows and len(data) == 0:
            raise CalibrationError("The calibration set is empty: the dataset has no rows.")
        if rows:
            data = self._collated(data, config)
        return prepare_calibration(data, self.model, config, self.processing_class)

    def _collated(self, data: Any, config: PruningConfig) -> list[Any]:
        n = min(config.calibration.num_samples, len(data))
        try:
            import datasets
        except ImportError:  # pragma: no cover
            datasets = None
        if datasets is not None and isinstance(data, datasets.Dataset):
            subset, collate = self._remove_unused_columns(data.select(range(n)), "calibration"), self.data_collator
        else:
            subset = Subset(data, range(n)) if isinstance(data, Dataset) else list(data)[:n]
            collate = self._get_collator_with_removed_columns(self.data_collator, "calibration")
        return list(DataLoader(subset, batch_size=config.calibration.batch_size, collate_fn=collate, shuffle=False))

    # --- training -----------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """`Trainer.train`, restoring the masks of ``resume_from_checkpoint``, then compacting the model."""
        if self._compacted:
            raise ConfigError("This PruningTrainer has already compacted its model; build a new one to train again.")
        folder = resume_from_checkpoint
        if folder is True:
            folder = get_last_checkpoint(self.args.output_dir)
        if isinstance(folder, str):
            self.pruning_masks.load(self.model, folder)
            self._load_projections(folder)
        t = time.perf_counter()
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        self._timings["training"] = self._timings.get("training", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        if not self.pruning_config.training.keep_masks:
            self._loader = self.pruning_masks.compact().loader
            self._compacted = True
            if self._layer_inputs is not None:  # a compacted trainer does not train again
                self._layer_inputs.remove()
        self._timings["compaction"] = time.perf_counter() - t
        return output

    def _regularizer(self, layer_inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The configured regulariser on the current weights (RI: on ``layer_inputs``, this batch's forward)."""
        if self.pruning_config.training.regularizer == "group_lasso":
            return group_lasso(self.model, self.pruning_masks)
        if self._layer_inputs is not None:
            return relative_importance(self._layer_inputs.layers, layer_inputs)
        return None

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """The task loss, plus the weighted regulariser and the distillation term while training."""
        extras = model.training and (self.pruning_config.training.regularizer is not None or self.distiller is not None)
        if not extras:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        capture = self._layer_inputs.capture() if self._layer_inputs is not None else contextlib.nullcontext({})
        with capture as seen:
            loss, outputs = self._task_and_teacher_loss(model, inputs, num_items_in_batch)
        config = self.pruning_config
        reg = self._regularizer(seen)
        if reg is not None:
            self._reg_sum += float(reg.detach())
            self._reg_count += 1
            loss = loss + config.training.regularizer_weight * reg
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's logs plus the scheduled sparsity, units kept and the mean regulariser since the last log."""
        if "loss" in logs:
            kept, total = self.pruning_masks.units()
            logs["pruning/sparsity"] = sparsity_at(self.state.global_step, self.pruning_config)
            logs["pruning/units_kept"] = kept
            logs["pruning/units_total"] = total
            if self._reg_count:
                logs["pruning/regularizer"] = self._reg_sum / self._reg_count
                self._reg_sum, self._reg_count = 0.0, 0
        super().log(logs, start_time)

    # --- saving -------------------------------------------------------------------------------------------------
    @property
    def pruning_info(self) -> PruningInfo:
        """The record written as ``pruning_config.json`` (as `PruningResult.info`, plus the training run)."""
        training = {"trainer": type(self).__name__, "global_step": self.state.global_step,
                    "max_steps": self.args.max_steps, "num_train_epochs": self.args.num_train_epochs,
                    "learning_rate": self.args.learning_rate,
                    "per_device_train_batch_size": self.args.per_device_train_batch_size}
        if self.recovery.distills:  # distillation is configured in RecoveryConfig: recorded with the run
            training["recovery"] = {k: v for k, v in dataclasses.asdict(self.recovery).items()
                                    if v != RecoveryConfig.__dataclass_fields__[k].default}
        return self.pruning_masks.pruner.pruning_info(self._loader, self._compacted, training)

    @property
    def pruning_report(self) -> PruningReport:
        """The `PruningReport` of the model as it is now (what ``save_model`` writes as ``pruning_report.json``)."""
        return self.pruning_masks.pruner.report(self._loader, self._evaluation, self._command, self._timings,
                                                compacted=self._compacted)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Trainer's `evaluate`; its metrics also go into the pruning report and card: those measured while nothing
        was removed yet as "before", the latest ones as "after"."""
        metrics = super().evaluate(*args, **kwargs)
        when = "before" if self.pruning_masks.sparsity == 0 else "after"
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not name.endswith(_NOT_QUALITY):
                self._evaluation.setdefault(name, {})[when] = float(value)
        return metrics

    def _save_pruning_files(self, folder: str, card: bool = True) -> None:
        """``pruning_config.json``, and with ``card`` also ``pruning_report.json`` and hfprune's model card."""
        write_pruning_files(folder, self.pruning_config, self.pruning_info, self.pruning_report if card else None)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the (compacted, after `train`) model with ``pruning_config.json``, ``pruning_report.json`` and
        hfprune's model card; only the main process writes. Checkpoints (Trainer's internal saves) get the config
        only; their masks are written by `PruningCallback.on_save`."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self._save_pruning_files(output_dir or self.args.output_dir, card=not _internal_call)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """hfprune's card instead of Trainer's: `Trainer.push_to_hub` calls this after saving the model into
        ``output_dir`` and before uploading it, so the upload holds the report and the card, whose load snippet
        names the repo being pushed to."""
        if not self.is_world_process_zero():
            return
        folder = self.args.output_dir
        self._save_pruning_files(folder)
        repo_id = getattr(self, "hub_model_id", None)
        if repo_id:
            path = os.path.join(folder, CARD_NAME)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            with open(path, "w", encoding="utf-8") as f:
                f.write(text.replace(f'"{PLACEHOLDER_ID}"', f'"{repo_id}"'))


def _recovery_of(recovery: RecoveryConfig | None) -> RecoveryConfig:
    """``recovery`` (distillation is configured there only), or plain fine-tuning."""
    if recovery is None:
        return RecoveryConfig()
    if isinstance(recovery, RecoveryConfig) and recovery.lora_r is not None:
        raise ConfigError("PruningTrainer does not train LoRA adapters (they would bring removed units back when "
                          "merged): prune first, then use RecoveryTrainer on the compacted model.")
    return recovery


def _is_rows(data: Any) -> bool:
    """A dataset of examples (to collate), as opposed to texts, tensors or ready batches."""
    if isinstance(data, Dataset):
        return True
    try:
        import datasets
    except ImportError:  # pragma: no cover
        return False
    return isinstance(data, datasets.Dataset) or (isinstance(data, list) and (not data or isinstance(data[0], dict)))
