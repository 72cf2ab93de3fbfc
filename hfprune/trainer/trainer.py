"""`PruningTrainer`: a drop-in `transformers.Trainer` that prunes while it fine-tunes.

The schedule runs in `PruningCallback` (Trainer's loop is not copied); `compute_loss` only adds the regulariser
and the distillation term; at the end of `train()` the model is compacted unless ``keep_masks=True``.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from ..calibration.data import CalibrationSet, prepare_calibration
from ..config import PruningConfig
from ..errors import CalibrationError, ConfigError
from ..prune import auto_class_name, criterion_for
from ..report import REPORT_NAME
from .callback import PruningCallback
from .losses import distillation_loss, group_lasso
from .masks import TrainingMasks
from .schedule import check_schedule, sparsity_at


def _regularizer_fn(config: PruningConfig) -> Any:
    if config.regularizer == "group_lasso":
        return group_lasso
    try:
        from ..criteria.relative_importance import regularizer
    except ImportError:
        raise ConfigError("regularizer='relative_importance' needs hfprune.criteria.relative_importance."
                          "regularizer, which this installation does not have; use regularizer='group_lasso'.") from None
    return lambda model, masks: regularizer(model, masks.config)


class PruningTrainer(Trainer):
    """`Trainer` plus ``pruning_config`` (what, how and when to prune) and an optional ``calibration_dataset``
    (default: the first ``num_samples`` rows of ``train_dataset``). Bad settings raise before training starts."""

    def __init__(self, model: nn.Module | None = None, args: Any = None, *, pruning_config: PruningConfig,
                 calibration_dataset: Any = None, callbacks: list | None = None, **kwargs: Any) -> None:
        if not isinstance(pruning_config, PruningConfig):
            raise ConfigError(f"pruning_config must be a PruningConfig, got {type(pruning_config).__name__}.")
        if model is None:
            raise ConfigError("PruningTrainer needs model= (model_init is not supported: masks belong to one model).")
        if pruning_config.schedule != "one_shot" and pruning_config.nm is not None:
            raise ConfigError(f"granularity={pruning_config.granularity!r} (N:M) is a fixed pattern; use "
                              "schedule='one_shot'.")
        self._callback = PruningCallback(None)  # masks need the collator and columns that Trainer sets up
        super().__init__(model=model, args=args, callbacks=[self._callback] + list(callbacks or []), **kwargs)
        self.pruning_config = pruning_config
        check_schedule(pruning_config, self.args.max_steps)
        calib = self._calibration(calibration_dataset)
        self.pruning_masks = TrainingMasks(self.model, pruning_config, calib, calib.batches[0] if calib else None)
        self._callback.masks = self.pruning_masks
        self._regularizer = _regularizer_fn(pruning_config) if pruning_config.regularizer else None
        self._reg_sum, self._reg_count = 0.0, 0
        self.teacher: nn.Module | None = None
        if pruning_config.distillation:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._pruning_info: dict[str, Any] | None = None

    # --- calibration --------------------------------------------------------------------------------------------
    def _calibration(self, data: Any) -> CalibrationSet | None:
        """Batches for scoring, identical on every process (`collect_statistics` splits them by rank)."""
        config = self.pruning_config
        needed = criterion_for(config).needs_data or "channels" in config.parts
        if not needed and data is None:
            return None
        data = self.train_dataset if data is None else data
        if data is None:
            raise CalibrationError("The criterion needs calibration data: pass calibration_dataset= or "
                                   "train_dataset=.")
        rows = _is_rows(data)
        if rows and len(data) == 0:
            raise CalibrationError("The calibration set is empty: the dataset has no rows.")
        if rows:
            data = self._collated(data, config)
        return prepare_calibration(data, self.model, config, self.processing_class)

    def _collated(self, data: Any, config: PruningConfig) -> list[Any]:
        n = min(config.num_samples, len(data))
        try:
            import datasets
        except ImportError:  # pragma: no cover
            datasets = None
        if datasets is not None and isinstance(data, datasets.Dataset):
            subset, collate = self._remove_unused_columns(data.select(range(n)), "calibration"), self.data_collator
        else:
            subset = Subset(data, range(n)) if isinstance(data, Dataset) else list(data)[:n]
            collate = self._get_collator_with_removed_columns(self.data_collator, "calibration")
        return list(DataLoader(subset, batch_size=config.batch_size, collate_fn=collate, shuffle=False))

    # --- training -----------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """`Trainer.train`, restoring the masks of ``resume_from_checkpoint``, then compacting the model."""
        if self._pruning_info is not None and self._pruning_info["compacted"]:
            raise ConfigError("This PruningTrainer has already compacted its model; build a new one to train again.")
        folder = resume_from_checkpoint
        if folder is True:
            folder = get_last_checkpoint(self.args.output_dir)
        if isinstance(folder, str):
            self.pruning_masks.load(self.model, folder)
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        loader = "transformers" if hasattr(self.model, "save_pretrained") else "hfprune"
        if not self.pruning_config.keep_masks:
            loader, _ = self.pruning_masks.compact(self.model)
        self._pruning_info = {"loader": loader, "compacted": not self.pruning_config.keep_masks}
        return output

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """The task loss, plus the weighted regulariser and the distillation term while training."""
        extras = model.training and (self._regularizer is not None or self.teacher is not None)
        if not extras:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        config = self.pruning_config
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(**inputs).logits
            kd = distillation_loss(outputs.logits, teacher_logits, config.distillation_temperature)
            loss = (1 - config.distillation_weight) * loss + config.distillation_weight * kd
        if self._regularizer is not None:
            reg = self._regularizer(self.model, self.pruning_masks)
            self._reg_sum += float(reg.detach())
            self._reg_count += 1
            loss = loss + config.regularizer_weight * reg
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
    def pruning_info(self) -> dict[str, Any]:
        """The extra content of ``pruning_config.json`` (as `PruningResult.pruning_info`)."""
        info = self._pruning_info or {"loader": "transformers", "compacted": False}
        groups = {}
        if self.pruning_masks.groups is not None:
            groups = {g.name: {"kind": g.kind, "total": g.num_units, "kept": int(self.pruning_masks.masks[g.name].sum())}
                      for g in self.pruning_masks.groups}
        base = getattr(getattr(self.model, "config", None), "_name_or_path", None) or None
        return {"base_model": base, "loader": info["loader"], "compacted": info["compacted"],
                "auto_class": auto_class_name(self.model), "groups": groups}

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the (compacted, after `train`) model with ``pruning_config.json``, and hfprune's model card when
        `hfprune.publishing` is installed; only the main process writes."""
        super().save_model(output_dir, _internal_call)
        folder = output_dir or self.args.output_dir
        if self.args.should_save:
            self.pruning_config.save_pretrained(folder, extra=self.pruning_info)
            if not _internal_call:
                _write_card(folder)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """hfprune's card (used by `push_to_hub`) when `hfprune.publishing` is installed, else Trainer's."""
        if not self.is_world_process_zero():
            return
        if not os.path.isfile(os.path.join(self.args.output_dir, REPORT_NAME)):
            return super().create_model_card(*args, **kwargs)
        self.pruning_config.save_pretrained(self.args.output_dir, extra=self.pruning_info)
        _write_card(self.args.output_dir)


def _is_rows(data: Any) -> bool:
    """A dataset of examples (to collate), as opposed to texts, tensors or ready batches."""
    if isinstance(data, Dataset):
        return True
    try:
        import datasets
    except ImportError:  # pragma: no cover
        return False
    return isinstance(data, datasets.Dataset) or (isinstance(data, list) and (not data or isinstance(data[0], dict)))


def _write_card(folder: str) -> None:
    """hfprune's card needs a `PruningReport`; the trainer does not write one yet, so without it Trainer's card
    stays."""
    from ..publishing import write_model_card

    if os.path.isfile(os.path.join(folder, REPORT_NAME)):
        write_model_card(folder)
