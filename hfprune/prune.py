"""`prune()`: one-shot pruning (the engine's steps in order), and the `PruningResult` it returns."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .checkpoint.record import PruningInfo, save_checkpoint
from .config.pruning_config import PruningConfig
from .utils.distributed import main_process_writes
from .engine.pruner import Pruner
from .report.pruning_report import PruningReport
from .report.records import EvaluationRecords


@dataclass
class PruningResult(EvaluationRecords):
    """The pruned (compacted) model, its report, and the record `load_pruned` needs to rebuild it."""

    model: nn.Module
    report: PruningReport
    config: PruningConfig
    masks: dict[str, torch.Tensor]
    info: PruningInfo
    tokenizer: Any = None

    @property
    def pruning_info(self) -> dict[str, Any]:
        """The extra content of ``pruning_config.json`` besides the config itself."""
        return self.info.to_dict()

    @property
    def _evaluation(self) -> dict[str, dict[str, Any]]:  # type: ignore[override]  (the report holds them)
        return self.report.evaluation

    @property
    def _command(self) -> str | None:  # type: ignore[override]
        return self.report.command

    @_command.setter
    def _command(self, command: str | None) -> None:
        self.report.command = command

    def save_pretrained(self, save_directory: str | os.PathLike, overwrite: bool = False,
                        tokenizer: Any = None) -> str:
        """Write weights (safetensors), config, tokenizer, ``pruning_config.json``, the report and the model card
        into a temporary folder and move it into place; an existing non-empty folder needs ``overwrite=True``.
        Under several processes only the main one writes; the others wait until the folder is complete."""
        with main_process_writes() as main:
            if main:
                save_checkpoint(save_directory, self.model, self.config, self.info, self.report,
                                tokenizer or self.tokenizer, overwrite)
        return os.fspath(save_directory)


def prune(model: nn.Module, config: PruningConfig, calibration_data: Any = None, tokenizer: Any = None,
          example_inputs: Any = None, progress: bool = True) -> PruningResult:
    """Prune ``model`` in place as ``config`` says and return the compacted model with its report.

    ``calibration_data``: texts (with ``tokenizer``), a ``datasets.Dataset``, a ``DataLoader``, a tensor, or
    ``"random"`` (data-agnostic). ``example_inputs``: an input batch for plain (non-Hugging Face) modules.
    Under ``torchrun`` / ``accelerate launch`` every process calibrates its share of the batches and all end with
    the same model.
    """
    pruner = Pruner(model, config, calibration_data, tokenizer, example_inputs, progress=progress)
    pruner.step()
    compaction = pruner.compact()
    report = pruner.report(compaction.loader, timings={"total": time.perf_counter() - pruner.started})
    return PruningResult(model, report, pruner.config, pruner.masks, pruner.pruning_info(compaction.loader), tokenizer)
