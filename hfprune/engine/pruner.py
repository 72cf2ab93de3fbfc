"""The pruning engine: one `Pruner` per run, driven by `prune()` (one shot) and `PruningTrainer` (on a schedule).

A `Pruner` is built once from (model, config, calibration data). It checks what the model's shapes can tell
before any forward pass, prepares the calibration data, settles ``"auto"`` once (`hfprune.config.settle`), builds
its step from the settled config, measures the dense baseline once, and offers the run as methods:

========================  ===============================================================================
`Pruner.step`             one pruning step at a sparsity (see the step classes below)
`Pruner.compact`          physically remove what the step chose; the `Compaction` is kept for the report
`Pruner.adopt`            take masks chosen earlier (a resumed PruningTrainer checkpoint)
`Pruner.report`           the one `PruningReport` builder (both entry points)
`Pruner.pruning_info`     the typed record written as ``pruning_config.json`` (`PruningInfo`)
========================  ===============================================================================

The step is one of `STEPS`, peers behind the same methods: `UnitStep` (weights, N:M, neurons, heads, channels:
masks chosen by the criterion) and `WidthDepthStep` (blocks, residual channels, a parameter target). The Pruner
owns the run's state (settled config, sparsity reached, compaction result); it never asks which step it drives.
Under Accelerate (`hfprune.utils.distributed`) every process calibrates its share of the batches, statistics are summed
before scoring and every process holds the same masks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..calibration.checks import check_batches, check_weights, resolved_seq_len
from ..calibration.data import CalibrationSet, prepare_calibration
from ..calibration.forward import lm_loss
from ..calibration.sequential import has_blocks
from ..checkpoint.record import PruningInfo, auto_class_name
from ..config.pruning_config import PruningConfig
from ..config.settle import settle
from ..errors import CalibrationError, ConfigError
from ..report.measure import count_macs, count_params, dummy_input
from ..report.pruning_report import LayerReport, PruningReport
from ..steps.compaction import Compaction
from ..structure.loaders import Loader
from ..steps.selection import Selection
from ..utils.distributed import process_state, rank_world
from ..utils.logging import get_logger
from ..width_depth.step import WidthDepthStep
from .unit_step import UnitStep, check_reconstruction

logger = get_logger(__name__)


#: the steps a run can take, the first whose ``applies(config)`` holds
STEPS: tuple[type, ...] = (WidthDepthStep, UnitStep)


def step_for(config: PruningConfig) -> type:
    """The step class that runs ``config``."""
    return next(s for s in STEPS if s.applies(config))


@dataclass
class Baseline:
    """The dense model's size, and the input its MACs were counted on (None when no input could be built)."""

    params: int
    macs: int
    inputs: Any
    shape: list[int]
    warning: str | None = None
    probe_loss: float | None = None  # causal LMs: loss on the first calibration batch (`probe_loss`)
    probe_skipped: str | None = None  # why a causal LM's probe did not run (stated in the report, never a NaN)


def measure_baseline(model: nn.Module, seq_len: int, example_inputs: Any = None) -> Baseline:
    params, _ = count_params(model)
    try:
        inputs, shape = dummy_input(model, seq_len, example_inputs)
    except ValueError as e:
        return Baseline(params, 0, None, [], f"MACs were not counted: {e}")
    return Baseline(params, count_macs(model, inputs), inputs, shape)


#: a pruned model whose perplexity on the probe's rows is this many times the dense one's is flagged
BROKEN_RATIO = 3.0


#: the probe reads the first calibration batch's rows up to this many tokens (two 512-token rows): enough to see a
#: broken model, a tenth of a run's time less than the whole batch through the LM head (docs/scaling.md)
PROBE_TOKENS = 1024


def probe_loss(model: nn.Module, batches: list) -> tuple[float | None, str | None]:
    """(next-token loss of a causal LM on the first calibration batch's first rows, up to `PROBE_TOKENS` tokens,
    why it was skipped): two forward passes per run that let every run say when it hands back a broken model.
    (None, None) for other models or without data; a skipped probe is stated in the report, never a NaN."""
    if not batches or auto_class_name(model) != "AutoModelForCausalLM" or not isinstance(batches[0], dict) \
            or "input_ids" not in batches[0]:
        return None, None
    batch = batches[0]
    mask = batch.get("attention_mask")
    tokens = mask.sum(dim=-1) if isinstance(mask, torch.Tensor) else \
        torch.full((batch["input_ids"].shape[0],), batch["input_ids"].shape[-1])
    if int((tokens - 1).clamp(min=0).sum()) == 0:
        return None, ("the perplexity probe was skipped: the first calibration batch has no token to predict "
                      "(rows of one token); longer calibration texts give it")
    rows = batch["input_ids"].shape[0]  # one row at a time: the logits (and the loss's float32 copy of them) of a
    # whole batch are rows x tokens x vocabulary, the run's memory peak on large vocabularies (docs/scaling.md)
    read = min(rows, max(1, PROBE_TOKENS // batch["input_ids"].shape[-1]))
    loss = lm_loss(model, [{k: v[i:i + 1] if isinstance(v, torch.Tensor) and v.shape[:1] == (rows,) else v
                            for k, v in batch.items()} for i in range(read)])
    return (loss, None) if math.isfinite(loss) else (None, "the loss on the first calibration batch is NaN or inf")


def add_probe(calibration: dict[str, Any], warnings: list[str], before: float | None, after: float | None,
              config: PruningConfig | None = None) -> None:
    """Record the probe's perplexities in the report's calibration section, and warn when the model broke, with
    the measured remedies that this run did not already use."""
    if before is None or after is None:
        return
    ppl_before, ppl_after = math.exp(min(before, 700)), math.exp(min(after, 700))
    calibration["probe_perplexity"] = {"before": ppl_before, "after": ppl_after}
    if ppl_after > BROKEN_RATIO * ppl_before:
        warnings.append(message := f"perplexity on the first calibration rows rose {ppl_after / ppl_before:.1f}x "
                        f"({ppl_before:.1f} -> {ppl_after:.1f}): the pruned model is probably broken. Measured "
                        f"remedies (docs/criteria.md): {_remedies(config)}.")
        logger.warning(message)


def _remedies(config: PruningConfig | None) -> str:
    out = []
    if config is None or config.reconstruction.method == "none":
        out.append("reconstruction.method='weights'")
    if config is not None and config.structured and config.protection.mode == "none":
        out.append("protection.mode='energy'")
    better = ["wanda", "obs"] if config is not None and config.structured else ["wanda"]
    better = [c for c in better if config is None or c != config.criterion]
    if better:
        out.append("criterion " + " or ".join(repr(c) for c in better))
    return ", ".join(out + ["or a lower sparsity"])


def check_model(model: nn.Module, config: PruningConfig) -> None:
    """The model and config a run starts from: types, the config re-validated (it may have been edited since it
    was built), every weight loaded and finite."""
    if not isinstance(config, PruningConfig):
        raise ConfigError(f"config must be a PruningConfig, got {type(config).__name__}.")
    config.validate()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module (e.g. from from_pretrained), got {type(model).__name__}.")
    check_weights(model)


class Pruner:
    """One pruning run's decisions, made once (see the module docstring for the steps).

    ``calibration_data`` is what `prune()` accepts (texts with ``tokenizer``, a Dataset, a DataLoader, tensors,
    ``"random"``); a ready `CalibrationSet` (PruningTrainer collates its own) can be passed as ``calibration``.
    """

    def __init__(self, model: nn.Module, config: PruningConfig, calibration_data: Any = None, tokenizer: Any = None,
                 example_inputs: Any = None, *, calibration: CalibrationSet | None = None,
                 progress: bool = True) -> None:
        t = self.started = time.perf_counter()
        check_model(model, config)
        self.model, self.progress = model, progress
        step_class = step_for(config)
        step_class.check(model, config)  # what the shapes can tell, before any forward pass
        needs = step_class.needs_data(config)  # what needs calibration data, if anything
        self.state = process_state()
        _, self.world_size = rank_world()
        if self.world_size > 1:
            _to_process_device(model, self.state.device)
        self.calibration = calibration
        if calibration is None and needs and calibration_data is None and not config.calibration.data_free:
            raise CalibrationError(f"{needs} needs calibration data: pass calibration_data= (texts with a "
                                   "tokenizer, a Dataset, a DataLoader, a tensor), 'random' for data-agnostic "
                                   "inputs, or set calibration.source='generated' (the model writes its own).")
        if calibration is None and (needs or calibration_data is not None):
            self.calibration = prepare_calibration(calibration_data, model, config, tokenizer, example_inputs)
        elif calibration is not None:  # collated elsewhere (PruningTrainer): the same check before any forward
            check_batches(calibration.batches, model, tokenizer, example_inputs)
        for w in self.calibration.warnings if self.calibration else []:
            logger.warning("calibration: %s", w)
        blocks = has_blocks(model)
        check_reconstruction(blocks, config, model)
        #: the settled config: every "auto" decided once, the criterion built from it, saved as it is
        self.config = config = settle(config, self.calibration is not None, blocks, resolved_seq_len(config, model))
        if example_inputs is None and self.calibration is not None and self.calibration.batches:
            example_inputs = self.calibration.batches[0]
        self.run_step = step_class(model, config, example_inputs, self.world_size, progress)
        self.sparsity = 0.0
        self.compaction: Compaction | None = None
        self.timings: dict[str, float] = {"calibration": 0.0, "scoring": 0.0, "selection": 0.0}
        self.baseline = measure_baseline(model, config.calibration.seq_len, example_inputs)
        batches = self.calibration.batches if self.calibration else []
        self.baseline.probe_loss, self.baseline.probe_skipped = probe_loss(model, batches)
        self.timings["setup"] = time.perf_counter() - t
        logger.info("pruning %s with %s (%s, sparsity %g) on %d process(es)", type(model).__name__,
                    self.run_step.label, config.granularity, config.sparsity, self.world_size)

    # --- the step's state, read through the Pruner ------------------------------------------------------------
    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return self.run_step.masks

    @property
    def groups(self) -> Any:
        return self.run_step.groups

    @property
    def layers(self) -> dict[str, Any]:
        return self.run_step.layers

    @property
    def criterion(self) -> Any:
        return self.run_step.criterion

    @staticmethod
    def needs_data(config: PruningConfig) -> str | None:
        """What in ``config`` needs calibration batches (e.g. "criterion 'wanda'"), or None."""
        return step_for(config).needs_data(config)

    # --- the run ------------------------------------------------------------------------------------------------
    def step(self, sparsity: float | None = None) -> Selection:
        """Prune to ``sparsity`` (default: the config's), scored on the current weights; units already removed stay
        removed, so repeated steps give monotone masks."""
        sparsity = self.config.sparsity if sparsity is None else sparsity
        batches = self.calibration.batches if self.calibration else []
        selection, self.sparsity = self.run_step.run(sparsity, batches, self.timings, self.sparsity > 0)
        return selection

    def adopt(self, masks: dict[str, torch.Tensor], sparsity: float) -> None:
        """Take masks chosen earlier (a resumed checkpoint) as this run's, with the sparsity they reach."""
        self.run_step.masks = {n: m.cpu().bool() for n, m in masks.items()}
        self.sparsity = sparsity

    def compact(self) -> Compaction:
        """Remove what the step chose (or zero masked weights) and rewrite the config; kept for the report."""
        t = time.perf_counter()
        self.compaction = self.run_step.compact()
        self.timings["compaction"] = self.timings.get("compaction", 0.0) + time.perf_counter() - t
        logger.info("compacted: loader %s", self.compaction.loader.value)
        return self.compaction

    # --- what was done ------------------------------------------------------------------------------------------
    def kept_units(self) -> dict[str, dict[str, Any]]:
        """Per group: kind, total and kept units (empty for unstructured runs; per axis for width/depth)."""
        return self.run_step.kept_units()

    def layer_reports(self) -> list[LayerReport]:
        return self.run_step.layer_reports()

    def _loader(self, loader: Loader | None) -> Loader:
        if loader is not None:
            return loader
        if self.compaction is not None:
            return self.compaction.loader
        return Loader.TRANSFORMERS if hasattr(self.model, "save_pretrained") else Loader.STATE_DICT

    def report(self, loader: Loader | None = None, evaluation: dict[str, dict[str, float]] | None = None,
               command: str | None = None, timings: dict[str, float] | None = None,
               compacted: bool = True) -> PruningReport:
        """The report of the model as it is now against the dense baseline; the loader is the compaction's unless
        given. ``compacted=False`` (masks still applied while training): MACs are those of the dense shapes."""
        model, config, base = self.model, self.config, self.baseline
        cfg = getattr(model, "config", None)
        params_after, nonzero_after = count_params(model)
        changed = compacted and self.run_step.changes_shapes
        macs_after = count_macs(model, base.inputs) if changed and base.inputs is not None else base.macs
        warnings = list(self.calibration.warnings) if self.calibration else []
        warnings += self.run_step.warnings()
        if base.warning:
            warnings.append(base.warning)
        calibration = self.calibration.describe(config.calibration.seq_len) if self.calibration \
            else {"source": "none"}
        calibration["processes"] = self.world_size
        per_process = getattr(self.run_step, "batches_per_process", None)
        if per_process:
            calibration["batches_per_process"] = list(per_process)
        if base.probe_loss is not None:
            after, why = probe_loss(model, self.calibration.batches)
            if after is None:
                warnings.append(f"the pruned model is broken: {why} (dense: finite)")
            add_probe(calibration, warnings, base.probe_loss, after, self.config)
        elif base.probe_skipped:
            warnings.append(base.probe_skipped)
        return PruningReport(
            base_model=getattr(cfg, "_name_or_path", None) or None,
            model_type=getattr(cfg, "model_type", type(model).__name__),
            criterion=self.run_step.label, granularity=config.granularity, sparsity=self.sparsity,
            scope=config.scope, params_before=base.params, params_after=params_after, nonzero_after=nonzero_after,
            macs_before=base.macs, macs_after=macs_after, macs_input_shape=base.shape,
            loader=self._loader(loader).value, layers=self.layer_reports(),
            timings={**self.timings, **(timings or {})}, calibration=calibration, warnings=warnings,
            evaluation={k: dict(v) for k, v in (evaluation or {}).items()}, command=command,
            **self.run_step.report_sections(),
        )

    def pruning_info(self, loader: Loader | None = None, compacted: bool = True,
                     training: dict[str, Any] | None = None) -> PruningInfo:
        """The record saved as ``pruning_config.json``; the loader is the compaction's unless given."""
        base = getattr(getattr(self.model, "config", None), "_name_or_path", None) or None
        return PruningInfo(base_model=base, loader=self._loader(loader), auto_class=auto_class_name(self.model),
                           groups=self.kept_units(), compacted=compacted, training=training)


def _to_process_device(model: nn.Module, device: torch.device) -> None:
    """Under a multi-process launch on accelerators, each process calibrates on its own device."""
    current = next(model.parameters()).device
    if device.type != "cpu" and current.type == "cpu":
        model.to(device)
