"""The pruning engine: one `Pruner` per run, driven by `prune()` (one shot) and `PruningTrainer` (on a schedule).

A `Pruner` is built once from (model, config, calibration data). It resolves the criterion, the family adapter,
the target layers and the unit groups once, measures the dense baseline once, and offers the steps as methods:

========================  ===============================================================================
`Pruner.step`             calibrate, score and select at a sparsity (removed units stay removed), then
                          compensate (elimination-compensation's bias shift) for what this step removed
`Pruner.compact`          physically remove masked units (or zero masked weights) and rewrite the config;
                          returns a typed `Compaction` (which loader reads the result, kept units)
`Pruner.report`           the one `PruningReport` builder (both entry points)
`Pruner.pruning_info`     the typed record written as ``pruning_config.json`` (`PruningInfo`)
========================  ===============================================================================

A new step (weight reconstruction, new unit kinds) goes here, between `step`'s selection and `compact`.
Under Accelerate (`hfprune.utils.distributed`) every process calibrates its share of the batches, statistics are summed
before scoring and every process holds the same masks.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..calibration.checks import check_batches, check_units, check_weights
from ..calibration.forward import lm_loss
from ..calibration.data import CalibrationSet, prepare_calibration
from ..calibration.sequential import has_blocks
from ..steps.compaction import Loader
from ..checkpoint.record import PruningInfo, auto_class_name
from ..steps.compaction import add_bias, compact_units, rewrite_config
from ..config.pruning_config import PruningConfig
from ..config.settle import resolve_defaults
from ..criteria import Criterion, resolve_criterion
from ..utils.distributed import broadcast_masks, gather_counts, my_share, process_state, rank_world
from ..errors import ConfigError
from ..utils.logging import get_logger
from ..steps.masks import apply_weight_masks, removed_columns
from ..report.measure import count_macs, count_params, dummy_input
from ..report.pruning_report import LayerReport, PruningReport
from ..steps.protection import Protection, detect_outliers
from ..reconstruction.refit import ReconstructionReport, reconstruct
from ..steps.scoring import compute_masks
from ..steps.selection import Selection, check_head_ratio
from ..structure import UnitGroup, adapter_for, find_groups, find_layers, target_layers
from ..width_depth.plan import criterion_label, is_width_depth
from ..width_depth.step import WidthDepthStep

logger = get_logger(__name__)


@dataclass
class Compaction:
    """What `Pruner.compact` did: which loader reads the result, and the kept units per group."""

    loader: Loader
    kept: dict[str, dict[str, Any]]


@dataclass
class Baseline:
    """The dense model's size, and the input its MACs were counted on (None when no input could be built)."""

    params: int
    macs: int
    inputs: Any
    shape: list[int]
    warning: str | None = None
    probe_loss: float | None = None  # causal LMs: loss on the first calibration batch (`probe_loss`)


def measure_baseline(model: nn.Module, seq_len: int, example_inputs: Any = None) -> Baseline:
    params, _ = count_params(model)
    try:
        inputs, shape = dummy_input(model, seq_len, example_inputs)
    except ValueError as e:
        return Baseline(params, 0, None, [], f"MACs were not counted: {e}")
    return Baseline(params, count_macs(model, inputs), inputs, shape)


#: a pruned model whose perplexity on the first calibration batch is this many times the dense one's is flagged
BROKEN_RATIO = 3.0


def probe_loss(model: nn.Module, batches: list) -> float | None:
    """Next-token loss of a causal LM on the first calibration batch (None for other models or without data):
    two forward passes per run that let every run say when it hands back a broken model."""
    if not batches or auto_class_name(model) != "AutoModelForCausalLM" or not isinstance(batches[0], dict) \
            or "input_ids" not in batches[0]:
        return None
    return lm_loss(model, batches[:1])


def add_probe(calibration: dict[str, Any], warnings: list[str], before: float | None, after: float | None,
              config: PruningConfig | None = None) -> None:
    """Record the probe's perplexities in the report's calibration section, and warn when the model broke, with
    the measured remedies that this run did not already use."""
    if before is None or after is None:
        return
    ppl_before, ppl_after = math.exp(min(before, 700)), math.exp(min(after, 700))
    calibration["probe_perplexity"] = {"before": ppl_before, "after": ppl_after}
    if ppl_after > BROKEN_RATIO * ppl_before:
        warnings.append(message := f"perplexity on the first calibration batch rose {ppl_after / ppl_before:.1f}x "
                        f"({ppl_before:.1f} -> {ppl_after:.1f}): the pruned model is probably broken. Measured "
                        f"remedies (docs/criteria.md): {_remedies(config)}.")
        logger.warning(message)


def _remedies(config: PruningConfig | None) -> str:
    out = []
    if config is None or config.reconstruction == "none":
        out.append("reconstruction='weights'")
    if config is not None and config.structured and config.protect == "none":
        out.append("protect='energy'")
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
    ``criterion``: an already resolved criterion for ``config`` (else it is resolved here).
    """

    def __init__(self, model: nn.Module, config: PruningConfig, calibration_data: Any = None, tokenizer: Any = None,
                 example_inputs: Any = None, *, calibration: CalibrationSet | None = None,
                 criterion: Criterion | None = None, progress: bool = True) -> None:
        t = self.started = time.perf_counter()
        check_model(model, config)
        self.model, self.config, self.progress = model, config, progress
        #: whole blocks, residual channels or a parameter target (`hfprune.width_depth.plan`): scored once, one step
        self.wd_step: WidthDepthStep | None = None
        if is_width_depth(config):
            self.wd_step = WidthDepthStep.prepare(model, config)  # every axis checked before work
            needs = self.wd_step.needs_data
            self.criterion = criterion  # each axis resolves its own criterion
        else:
            self.criterion = criterion or resolve_criterion(config)
            needs = self.needs_data(self.criterion, config)
        self.state = process_state()
        _, self.world_size = rank_world()
        if self.world_size > 1:
            _to_process_device(model, self.state.device)
        self.adapter = adapter_for(model)
        self.calibration = calibration
        if calibration is None and (needs or calibration_data is not None):
            self.calibration = prepare_calibration(calibration_data, model, config, tokenizer, example_inputs)
        elif calibration is not None:  # collated elsewhere (PruningTrainer): the same check before any forward
            check_batches(calibration.batches, model, tokenizer, example_inputs)
        for w in self.calibration.warnings if self.calibration else []:
            logger.warning("calibration: %s", w)
        blocks = has_blocks(model)
        if config.reconstruction == "weights" and not blocks:
            raise ConfigError(f"reconstruction='weights' refits block by block and needs a model built from a list of "
                              f"blocks (an nn.ModuleList of transformer layers); {type(model).__name__} has none. "
                              "Use reconstruction='none'.")
        self.config = config = resolve_defaults(config, self.calibration is not None, blocks)  # "auto" settled
        if self.criterion is not None and config.compare_within == "auto" and config.parts == ["weights"] \
                and config.nm is None:  # the criterion's own comparison group, saved as such
            rows = self.criterion.compares_rows
            self.config = config = dataclasses.replace(config, compare_within="row" if rows else "layer")
        if example_inputs is None and self.calibration is not None and self.calibration.batches:
            example_inputs = self.calibration.batches[0]
        self.groups: list[UnitGroup] | None = None
        self.kept_axes: dict[str, dict[str, Any]] = {}  # width/depth: kept per axis (and the search)
        self._loader: Loader | None = None  # width/depth: decided by the step that removes
        if self.width_depth:
            self.layers, self.masks = {}, {}
        elif config.structured:
            self.groups = find_groups(model, config, example_inputs)
            check_units(config, self.groups)
            for g in self.groups:
                if g.kind == "heads":
                    check_head_ratio(g, config)
            self.layers = find_layers(model)
            self.masks: dict[str, torch.Tensor] = {g.name: torch.ones(g.num_units, dtype=torch.bool)
                                                   for g in self.groups}
        else:
            self.layers = target_layers(model, config)
            self.masks = {n: torch.ones(l.weight_matrix().shape, dtype=torch.bool) for n, l in self.layers.items()}
        self.sparsity = 0.0
        self.forced_min: set[str] = set()
        self.batches_per_process: list[int] = []
        self.timings: dict[str, float] = {"calibration": 0.0, "scoring": 0.0, "selection": 0.0}
        self.protection: Protection | None = None  # detected once, on the dense model (config.protect)
        self.reconstruction: ReconstructionReport | None = None  # of the latest step (config.reconstruction)
        self.baseline = measure_baseline(model, config.seq_len, example_inputs)
        self.baseline.probe_loss = probe_loss(model, self.calibration.batches if self.calibration else [])
        self.timings["setup"] = time.perf_counter() - t
        logger.info("pruning %s with %s (%s, sparsity %g) on %d process(es)", type(model).__name__, config.criterion,
                    config.granularity, config.sparsity, self.world_size)

    @property
    def width_depth(self) -> bool:
        """Whether this run prunes blocks or residual channels, or searches a parameter target (one step)."""
        return self.wd_step is not None

    @staticmethod
    def needs_data(criterion: Criterion, config: PruningConfig) -> bool:
        """Whether this run needs calibration batches (the criterion reads activations, conv channels must be
        traced, or protection / reconstruction read layer inputs)."""
        return criterion.needs_data or "channels" in config.parts or config.protect not in ("none", "auto") \
            or config.reconstruction not in ("none", "auto")

    # --- masks --------------------------------------------------------------------------------------------------
    def config_at(self, sparsity: float) -> PruningConfig:
        """The config with ``sparsity`` (heads scaled in proportion when they have their own fraction)."""
        config = self.config
        if sparsity == config.sparsity:
            return config
        head = config.head_sparsity
        if head is not None and config.sparsity > 0:
            head = head * sparsity / config.sparsity
        return dataclasses.replace(config, sparsity=sparsity, head_sparsity=head)

    def step(self, sparsity: float | None = None) -> Selection:
        """Prune to ``sparsity`` (default: the config's), scored on the current weights; units already removed stay
        removed, so repeated steps give monotone masks. Compensates for what this step removes."""
        sparsity = self.config.sparsity if sparsity is None else sparsity
        batches = self.calibration.batches if self.calibration else []
        if self.width_depth:
            return self._width_depth_step(batches)
        removed = {n: ~m for n, m in self.masks.items()} if self.sparsity > 0 else {}
        logger.info("step to sparsity %g: calibrating on %d batch(es), scoring, selecting", sparsity, len(batches))
        protected = self._protect(batches)
        selection, _, stats = compute_masks(self.model, self.criterion, self.layers, self.groups, batches,
                                         self.progress, removed, self.timings, self.config_at(sparsity),
                                         protected=protected)
        if self.criterion.needs_data and batches:
            self.batches_per_process = gather_counts(len(my_share(batches)))
        new = broadcast_masks(dict(selection.masks)) if self.world_size > 1 else selection.masks
        refit = self._reconstruct(new, batches)
        t = time.perf_counter()
        newly = {n: new[n] | removed[n] for n in new} if removed else new  # keep-mask of this step's removal
        self._compensate({n: v for n, v in stats.items() if n not in refit}, newly)
        self.timings["compensation"] = self.timings.get("compensation", 0.0) + time.perf_counter() - t
        self.masks, self.forced_min, self.sparsity = new, set(selection.forced_min), sparsity
        for n in sorted(self.forced_min):
            logger.warning("%s would have lost every unit; kept %d (min_units)", n, self.config.min_units)
        return selection

    def _width_depth_step(self, batches: list) -> Selection:
        """Blocks, residual channels (and neurons/heads with them) scored once and removed in one step."""
        params_before = self.baseline.params
        self._loader, self.kept_axes = self.wd_step.run(self.model, self.config, batches, self.progress,
                                                        self.timings)
        # the fractions differ per axis: the run's sparsity is the share of parameters removed
        self.sparsity = round(1 - count_params(self.model)[0] / params_before, 4)
        return Selection({})

    def _protect(self, batches: list) -> dict[str, torch.Tensor] | None:
        """Outlier units to keep (hfprune extension, `hfprune.steps.protection`), detected once on the dense model."""
        if self.config.protect == "none":
            return None
        if self.protection is None:
            t = time.perf_counter()
            self.protection = detect_outliers(self.model, self.layers, self.groups, batches,
                                              float(self.config.protect_threshold), self.config.protect)
            self.timings["protection"] = time.perf_counter() - t
            logger.info("protected %d units (protect=%r)", sum(len(v) for v in self.protection.to_report().values()),
                        self.config.protect)
        return self.protection.masks

    def _reconstruct(self, masks: dict[str, torch.Tensor], batches: list) -> set[str]:
        """Refit the kept weights (hfprune extension, `hfprune.reconstruction.refit`); the names of the refit layers,
        whose bias (elimination-compensation with ``compensate``) is fitted jointly instead of compensated. Every
        process refits on all batches (the same result everywhere)."""
        if self.config.reconstruction == "none":
            return set()
        fit_bias = self.config.compensate and \
            type(self.criterion).bias_compensation is not Criterion.bias_compensation
        self.reconstruction = reconstruct(self.model, self.layers, masks, batches, groups=self.groups,
                                          damp=self.config.reconstruction_damp,
                                          target=self.config.reconstruction_target,
                                          cg_steps=self.config.reconstruction_cg_steps, fit_bias=fit_bias,
                                          adapter=self.adapter, progress=self.progress)
        self.timings["reconstruction"] = self.timings.get("reconstruction", 0.0) + self.reconstruction.seconds
        for name in self.reconstruction.rank_deficient:
            logger.info("reconstruction: the inputs of %s were rank-deficient; damped", name)
        return {f.name for f in self.reconstruction.layers}

    def _compensate(self, stats: dict, masks: dict[str, torch.Tensor]) -> None:
        """Elimination-compensation: add each layer's optimal bias change for the weights being removed."""
        if not self.config.compensate:
            return
        for name in stats:
            layer = self.layers[name]
            gone = ~masks[name] if self.groups is None else removed_columns(layer, self.groups, masks)
            if gone is None or not gone.any():
                continue
            delta = self.criterion.bias_compensation(layer, stats[name], gone)
            if delta is not None:
                add_bias(self.model, layer, delta, self.adapter)

    # --- compaction ---------------------------------------------------------------------------------------------
    def compact(self) -> Compaction:
        """Remove the masked units (structured) or zero the masked weights (unstructured) and rewrite the config."""
        t = time.perf_counter()
        hf = hasattr(self.model, "save_pretrained")
        if self.width_depth:  # removed by the step itself
            if self._loader is None:
                raise ConfigError("Pruner.compact() before Pruner.step(): nothing was chosen yet.")
            return Compaction(self._loader, self.kept_axes)
        if self.groups is None:
            apply_weight_masks(self.layers, self.masks)
            result = Compaction(Loader.TRANSFORMERS if hf else Loader.STATE_DICT, {})
        else:
            compact_units(self.model, self.groups, self.masks, self.adapter)
            loader, kept = rewrite_config(self.model, self.groups, self.masks, self.adapter)
            result = Compaction(loader if hf else Loader.STATE_DICT, kept)
        self.timings["compaction"] = time.perf_counter() - t
        logger.info("compacted: loader %s", result.loader.value)
        return result

    # --- what was done ------------------------------------------------------------------------------------------
    def kept_units(self) -> dict[str, dict[str, Any]]:
        """Per group: kind, total and kept units (empty for unstructured runs; per axis for width/depth)."""
        if self.width_depth:
            return self.kept_axes
        if self.groups is None:
            return {}
        return {g.name: {"kind": g.kind, "total": g.num_units, "kept": int(self.masks[g.name].sum())}
                for g in self.groups}

    def layer_reports(self) -> list[LayerReport]:
        if self.width_depth:
            return [LayerReport(k, v["kind"], v["total"], v["kept"]) for k, v in self.kept_axes.items() if "kind" in v]
        if self.groups is None:
            return [LayerReport(n, "weights", m.numel(), int(m.sum()), n in self.forced_min)
                    for n, m in self.masks.items()]
        return [LayerReport(g.name, g.kind, g.num_units, int(self.masks[g.name].sum()), g.name in self.forced_min)
                for g in self.groups]

    def report(self, loader: Loader, evaluation: dict[str, dict[str, float]] | None = None,
               command: str | None = None, timings: dict[str, float] | None = None,
               compacted: bool = True) -> PruningReport:
        """The report of the model as it is now against the dense baseline. ``compacted=False`` (masks still
        applied while training): MACs are those of the dense shapes."""
        model, config, base = self.model, self.config, self.baseline
        cfg = getattr(model, "config", None)
        params_after, nonzero_after = count_params(model)
        changed = compacted and (self.width_depth or self.groups is not None
                                 and any(not m.all() for m in self.masks.values()))
        macs_after = count_macs(model, base.inputs) if changed and base.inputs is not None else base.macs
        warnings = list(self.calibration.warnings) if self.calibration else []
        warnings += [f"{n} would have lost every unit; kept {config.min_units}" for n in sorted(self.forced_min)]
        if base.warning:
            warnings.append(base.warning)
        target = self.wd_step.target if self.wd_step else None
        if target is not None and params_after < 0.99 * target:
            warnings.append(f"target_params={target:,}: the closest architecture found has {params_after:,} "
                            "parameters (more than 1% below the target)")
        calibration = self.calibration.describe(config.seq_len) if self.calibration else {"source": "none"}
        calibration["processes"] = self.world_size
        if self.batches_per_process:
            calibration["batches_per_process"] = list(self.batches_per_process)
        if base.probe_loss is not None:
            add_probe(calibration, warnings, base.probe_loss, probe_loss(model, self.calibration.batches),
                      self.config)
        return PruningReport(
            base_model=getattr(cfg, "_name_or_path", None) or None,
            model_type=getattr(cfg, "model_type", type(model).__name__),
            criterion=criterion_label(config) if self.width_depth else config.criterion,
            granularity=config.granularity, sparsity=self.sparsity, scope=config.scope,
            params_before=base.params, params_after=params_after, nonzero_after=nonzero_after,
            macs_before=base.macs, macs_after=macs_after, macs_input_shape=base.shape, loader=loader.value,
            layers=self.layer_reports(), timings={**self.timings, **(timings or {})}, calibration=calibration,
            warnings=warnings, evaluation={k: dict(v) for k, v in (evaluation or {}).items()}, command=command,
            protected=self.protection.to_report() if self.protection else {},
            reconstruction=self.reconstruction.to_dict() if self.reconstruction else {},
        )

    def pruning_info(self, loader: Loader, compacted: bool = True,
                     training: dict[str, Any] | None = None) -> PruningInfo:
        base = getattr(getattr(self.model, "config", None), "_name_or_path", None) or None
        return PruningInfo(base_model=base, loader=loader, auto_class=auto_class_name(self.model),
                           groups=self.kept_units(), compacted=compacted, training=training)


def _to_process_device(model: nn.Module, device: torch.device) -> None:
    """Under a multi-process launch on accelerators, each process calibrates on its own device."""
    current = next(model.parameters()).device
    if device.type != "cpu" and current.type == "cpu":
        model.to(device)
