"""`prune()`: calibrate, score, select, compensate and compact, in one call; and the `PruningResult` it returns."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .calibration.collector import collect_statistics
from .calibration.data import CalibrationSet, prepare_calibration
from .calibration.sequential import block_of, block_statistics, find_blocks
from .compaction import add_bias, compact_units, rewrite_config
from .config import PruningConfig
from .criteria import Criterion, resolve_criterion
from .errors import ConfigError, StructureError
from .io import atomic_output_dir
from .masks import PackedMasks, apply_weight_masks, removed_columns
from .measure import count_macs, count_params, dummy_input
from .report import LayerReport, PruningReport
from .selection import Selection, check_head_ratio, structured_masks, unstructured_masks
from .structure import Layer, UnitGroup, adapter_for, find_groups, find_layers, target_layers

_AUTO_CLASSES = ("CAUSAL_LM", "SEQUENCE_CLASSIFICATION", "IMAGE_CLASSIFICATION", "MASKED_LM",
                 "TOKEN_CLASSIFICATION", "QUESTION_ANSWERING")


def auto_class_name(model: nn.Module) -> str:
    """The `transformers` Auto class that loads a model of this class (e.g. GPT2LMHeadModel -> ForCausalLM)."""
    from transformers.models.auto import modeling_auto

    name = type(model).__name__
    for task in _AUTO_CLASSES:
        if name in getattr(modeling_auto, f"MODEL_FOR_{task}_MAPPING_NAMES").values():
            return "AutoModelFor" + "".join(w.capitalize() for w in task.split("_")).replace("Lm", "LM")
    return "AutoModel"


@dataclass
class PruningResult:
    """The pruned (compacted) model, its report, and what `load_pruned` needs to rebuild it."""

    model: nn.Module
    report: PruningReport
    config: PruningConfig
    masks: dict[str, torch.Tensor]
    groups_kept: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokenizer: Any = None

    @property
    def pruning_info(self) -> dict[str, Any]:
        """The extra content of ``pruning_config.json`` besides the config itself."""
        return {"base_model": self.report.base_model, "loader": self.report.loader,
                "auto_class": auto_class_name(self.model), "groups": self.groups_kept}

    def save_pretrained(self, save_directory: str | os.PathLike, overwrite: bool = False,
                        tokenizer: Any = None) -> str:
        """Write weights (safetensors), config, tokenizer, ``pruning_config.json``, the report and the model card
        into a temporary folder and move it into place; an existing non-empty folder needs ``overwrite=True``."""
        if not hasattr(self.model, "save_pretrained"):
            raise StructureError("Only Hugging Face models (PreTrainedModel) can be saved as checkpoints; for a "
                                 "plain module save result.model.state_dict() with safetensors.")
        tokenizer = tokenizer or self.tokenizer
        with atomic_output_dir(save_directory, overwrite) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            self.config.save_pretrained(tmp, extra=self.pruning_info)
            self.report.save(tmp)
            _write_card(tmp)
        return os.fspath(save_directory)


def _write_card(folder: str) -> None:
    from .publishing import write_model_card  # late: publishing imports this module's neighbours

    write_model_card(folder)


def _check_inputs(model: nn.Module, config: PruningConfig) -> None:
    if not isinstance(config, PruningConfig):
        raise ConfigError(f"config must be a PruningConfig, got {type(config).__name__}.")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module (e.g. from from_pretrained), got {type(model).__name__}.")
    for name, p in model.named_parameters():
        if p.is_meta:
            raise ConfigError(f"Parameter {name} is on the 'meta' device (not loaded, or offloaded by accelerate's "
                              "device_map to 'cpu'/'disk'); scoring reads every weight. Load the model with its "
                              "weights on real devices (device_map over GPUs, or on CPU): see docs/scaling.md.")
        if not torch.isfinite(p).all():
            raise ConfigError(f"Parameter {name} holds NaN or inf; the model is corrupt and cannot be pruned.")


def prune(model: nn.Module, config: PruningConfig, calibration_data: Any = None, tokenizer: Any = None,
          example_inputs: Any = None, progress: bool = True) -> PruningResult:
    """Prune ``model`` in place as ``config`` says and return the compacted model with its report.

    ``calibration_data``: texts (with ``tokenizer``), a ``datasets.Dataset``, a ``DataLoader``, a tensor, or
    ``"random"`` (data-agnostic). ``example_inputs``: an input batch for plain (non-Hugging Face) modules.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    _check_inputs(model, config)
    criterion = criterion_for(config)
    adapter = adapter_for(model)
    needs_data = criterion.needs_data or "channels" in config.parts
    calib: CalibrationSet | None = None
    if needs_data:
        calib = prepare_calibration(calibration_data, model, config, tokenizer, example_inputs)
        if example_inputs is None:
            example_inputs = calib.batches[0]
    all_layers = find_layers(model)
    groups: list[UnitGroup] | None = None
    if config.structured:
        groups = find_groups(model, config, example_inputs)
        for g in groups:
            if g.kind == "heads":
                check_head_ratio(g, config)
        layers = all_layers
    else:
        layers = target_layers(model, config)
    dummy, shape = dummy_input(model, config.seq_len, example_inputs)
    params_before, _ = count_params(model)
    macs_before = count_macs(model, dummy)

    selection, scores, stats = compute_masks(model, criterion, layers, groups, calib, progress, timings=timings)

    t = time.perf_counter()
    _compensate(model, criterion, layers, stats, groups, selection.masks, adapter)
    kept: dict[str, dict[str, Any]] = {}
    loader = "transformers" if hasattr(model, "save_pretrained") else "hfprune"
    if groups is None:
        apply_weight_masks(layers, selection.masks)
    else:
        compact_units(model, groups, selection.masks)
        loader, kept = rewrite_config(model, groups, selection.masks, adapter)
    timings["compaction"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    params_after, nonzero_after = count_params(model)
    # Masked weights stay in place as zeros: dense MACs only change when units were removed.
    macs_after = count_macs(model, dummy) if groups is not None else macs_before
    report = PruningReport(
        base_model=getattr(getattr(model, "config", None), "_name_or_path", None) or None,
        model_type=getattr(getattr(model, "config", None), "model_type", type(model).__name__),
        criterion=config.criterion, granularity=config.granularity, sparsity=config.sparsity, scope=config.scope,
        params_before=params_before, params_after=params_after, nonzero_after=nonzero_after,
        macs_before=macs_before, macs_after=macs_after, macs_input_shape=shape, loader=loader,
        layers=_layer_reports(groups, selection, scores),
        timings=timings,
        calibration=calib.describe(config.seq_len) if calib else {"source": "none"},
        warnings=(calib.warnings if calib else []) + [
            f"{n} would have lost every unit; kept {config.min_units}" for n in sorted(selection.forced_min)],
    )
    return PruningResult(model, report, config, selection.masks, kept, tokenizer)


def criterion_for(config: PruningConfig) -> Any:
    """The criterion ``config`` names, checked against the config (`ConfigError` otherwise)."""
    return resolve_criterion(config)


def compute_masks(model: nn.Module, criterion: Any, layers: dict[str, Layer], groups: list[UnitGroup] | None,
                  calib: CalibrationSet | None, progress: bool = True, removed: dict[str, torch.Tensor] | None = None,
                  timings: dict[str, float] | None = None) -> tuple[Any, dict, dict]:
    """Calibrate, score and select on the current weights: (selection, scores, statistics).

    ``removed`` (True = already removed, per layer or group) stays removed, so that repeated calls during
    training (`PruningTrainer`) give monotone masks. ``timings`` receives the time of each phase.
    With ``calibration_mode='sequential'`` see `_sequential_masks`.
    """
    timings = {} if timings is None else timings
    for phase in ("calibration", "scoring", "selection"):
        timings[phase] = 0.0
    observed = criterion.observed_layers(layers, groups)
    batches = calib.batches if calib else []
    if criterion.config.calibration_mode == "sequential":
        return _sequential_masks(model, criterion, layers, groups, observed, batches, progress, removed or {},
                                 timings)
    t = time.perf_counter()
    stats = collect_statistics(model, criterion, layers, observed, batches, progress)
    timings["calibration"] = time.perf_counter() - t
    scores = _scores(criterion, layers, groups, stats, removed or {}, timings)
    return _select(criterion, layers, groups, scores, removed or {}, timings), scores, stats


def _scores(criterion: Any, layers: dict[str, Layer], groups: list[UnitGroup] | None, stats: dict,
            removed: dict[str, torch.Tensor], timings: dict[str, float]) -> dict[str, torch.Tensor]:
    """Scores per layer (``[out, in]``) or per group (``[units]``); already-removed entries get -inf."""
    t = time.perf_counter()
    if groups is None:
        scores = {n: criterion.weight_scores(l, stats.get(n, {})) for n, l in layers.items()}
    else:
        scores = {g.name: criterion.unit_scores(g, stats, layers) for g in groups}
    for n in scores.keys() & removed.keys():
        scores[n] = scores[n].masked_fill(removed[n].to(scores[n].device), -math.inf)
    timings["scoring"] += time.perf_counter() - t
    return scores


def _select(criterion: Any, layers: dict[str, Layer], groups: list[UnitGroup] | None, scores: dict,
            removed: dict[str, torch.Tensor], timings: dict[str, float]) -> Any:
    t = time.perf_counter()
    config = criterion.config
    if groups is None:
        removal = getattr(criterion, "removal_mask", None)
        overrides = {}
        if removal is not None:
            overrides = {n: m for n in layers if (m := removal(layers[n], scores[n])) is not None}
        selection = unstructured_masks(scores, config, criterion.per_row, overrides)
    else:
        selection = structured_masks(scores, groups, config)
    for n in selection.masks.keys() & removed.keys():
        selection.masks[n] &= ~removed[n].cpu()
    timings["selection"] += time.perf_counter() - t
    return selection


def _sequential_masks(model: nn.Module, criterion: Any, layers: dict[str, Layer], groups: list[UnitGroup] | None,
                      observed: list[str], batches: list, progress: bool, removed: dict[str, torch.Tensor],
                      timings: dict[str, float]) -> tuple[Any, dict, dict]:
    """Block by block: statistics of one block (`block_statistics`), its scores and masks, then the next block.

    Kept across blocks: masks; per-unit scores (structured: small; global scope selects once all are in);
    statistics only where compensation needs them (elimination-compensation with ec_output='layer': two vectors
    per layer). Per-weight scores and the other statistics are dropped after each block, so the returned scores
    are empty for unstructured granularities, and unstructured masks are stored one bit per weight
    (`PackedMasks`).
    """
    prefix, blocks = find_blocks(model)
    units = {g.name: g for g in groups} if groups is not None else layers
    members = {n: [c.layer for c in g.couplings if c.layer in layers] for n, g in units.items()} \
        if groups is not None else {n: [n] for n in layers}
    where = block_of(list(layers), prefix, len(blocks))
    home = {n: where[ls[0]] if ls and len({where[l] for l in ls}) == 1 else None for n, ls in members.items()}
    split = sorted(n for n, h in home.items() if h is None and set(members[n]) & set(observed))
    if split:
        raise ConfigError(f"calibration_mode='sequential': the units {split} span several blocks or lie outside "
                          f"{prefix}.N; use calibration_mode='full'.")
    keep_stats = criterion.config.compensate and \
        type(criterion).bias_compensation is not Criterion.bias_compensation
    deferred = groups is not None and criterion.config.scope == "global"
    selection = Selection({} if groups is not None else PackedMasks())
    scores, kept = {}, {}
    pending = set(units)

    def decide(names: list[str], stats: dict) -> None:
        part = [units[n] for n in names] if groups is not None else None
        sub = {n: layers[n] for n in names} if groups is None else layers
        s = _scores(criterion, sub, part, stats, removed, timings)
        if groups is not None:
            scores.update(s)
        if not deferred:
            chosen = _select(criterion, sub, part, s, removed, timings)
            selection.masks.update(chosen.masks)
            selection.forced_min.update(chosen.forced_min)
        pending.difference_update(names)

    t = time.perf_counter()
    for i, stats in block_statistics(model, criterion, layers, observed, batches, progress):
        timings["calibration"] += time.perf_counter() - t
        decide([n for n in units if home[n] == i], stats)
        if keep_stats:
            kept.update(stats)
        del stats
        t = time.perf_counter()
    for i in sorted({home[n] for n in pending}, key=lambda i: -1 if i is None else i):  # data-free, block by block
        decide([n for n in sorted(pending) if home[n] == i], {})
    if deferred:
        selection = _select(criterion, layers, groups, scores, removed, timings)
    return selection, scores, kept


def _compensate(model: nn.Module, criterion: Any, layers: dict[str, Layer], stats: dict, groups: list | None,
                masks: dict[str, torch.Tensor], adapter: Any) -> None:
    """Elimination-compensation: add each layer's optimal bias change for the weights being removed."""
    if not criterion.config.compensate:
        return
    for name in stats:
        layer = layers[name]
        removed = ~masks[name] if groups is None else removed_columns(layer, groups, masks)
        if removed is None or not removed.any():
            continue
        delta = criterion.bias_compensation(layer, stats[name], removed)
        if delta is not None:
            add_bias(model, layer, delta, adapter)


def _layer_reports(groups: list[UnitGroup] | None, selection: Any, scores: dict) -> list[LayerReport]:
    if groups is None:
        return [LayerReport(n, "weights", m.numel(), int(m.sum()), n in selection.forced_min)
                for n, m in selection.masks.items()]
    return [LayerReport(g.name, g.kind, g.num_units, int(selection.masks[g.name].sum()), g.name in selection.forced_min)
            for g in groups]
