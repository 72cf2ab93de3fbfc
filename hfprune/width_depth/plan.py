"""Width and depth pruning steps: score, then remove whole blocks (``layers``), residual channels (``hidden``),
FFN neurons and attention heads, each axis with its own fraction.

Every score is computed once on the unpruned model (as Minitron does for width and depth), then the removals are
applied: neurons/heads, residual channels, blocks. Because the scores do not depend on the fractions, the
`target_params` search (`hfprune.width_depth.search`) evaluates candidate architectures with exactly the procedure that
produces the final model. The engine (`hfprune.engine.pruner.Pruner`) runs them: it checks the plan before any work, then scores, searches
(`hfprune.width_depth.search`) and applies it in one step; `Scores` / `apply_plan` are the parts.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..reconstruction.dense_refit import DenseRefitReport, refit_to_dense
from ..reconstruction.refit import ReconstructionReport, reconstruct
from ..steps.compaction import Compaction
from ..structure.loaders import Loader
from ..config.groups import WidthDepthConfig
from ..config.pruning_config import PruningConfig
from ..structure.units import UNIT_AXES
from ..criteria import get_criterion
from .experts import apply_experts, check_experts
from .scores import BLOCK_SCORES, CHANNEL_SCORES, EXPERT_SCORES, hidden_statistics
from .blocks import block_list, check_layers, remove_blocks
from ..errors import ConfigError
from ..steps.scoring import compute_masks
from ..steps.selection import keep_top
from ..structure import adapter_for, find_groups, find_layers
from ..structure.layers import mark_origins, track_origins
from ..structure.residual import compact_hidden, residual_stream, rms_scales
from ..structure.experts import moe_blocks
from ..structure.widths import multiples_used, residual_multiple

@dataclass
class Plan:
    """How much of each axis one candidate architecture removes."""

    layers: int = 0  # blocks removed
    hidden: int | None = None  # residual channels kept (None: all)
    neurons: float = 0.0  # fraction of FFN neurons removed
    heads: float = 0.0  # fraction of heads (KV groups) removed
    experts: int = 0  # routed experts removed from every MoE block
    mix: tuple[float, float] | None = None  # the search's width mix (hidden share, neuron share) that gave it
    params: int | None = None
    loss: float | None = None  # held-out calibration loss, compacted (the search's screen)
    refit_loss: float | None = None  # held-out calibration loss after reconstruction (the search's re-score)

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Scores:
    """Every score the pipeline needs, from the unpruned model."""

    blocks: torch.Tensor | None = None  # [num_blocks], higher = keep
    hidden: torch.Tensor | None = None  # [hidden], higher = keep
    norm_sq: dict[str, torch.Tensor] = field(default_factory=dict)  # residual norms' input second moments
    unit_scores: dict[str, torch.Tensor] = field(default_factory=dict)  # neuron / head groups
    experts: dict[str, torch.Tensor] | None = None  # [experts] per MoE block, higher = keep
    unit_criterion: Any = None


def unit_config(config: PruningConfig, plan: Plan) -> PruningConfig | None:
    """The neurons/heads part of ``config`` with the plan's fractions (None when neither is pruned)."""
    parts = [p for p in config.parts if p in UNIT_AXES]
    if not parts:
        return None
    return _for_axes(config, "+".join(parts), sparsity=plan.neurons if "neurons" in parts else plan.heads,
                     head_sparsity=plan.heads if "heads" in parts else None)


def _for_axes(config: PruningConfig, granularity: str, **changes: Any) -> PruningConfig:
    """``config`` narrowed to ``granularity``: the options of the other axes back to their defaults (the config
    refuses options that have no effect)."""
    parts = granularity.split("+")
    reset: dict[str, Any] = {"width_depth": WidthDepthConfig()}
    if "heads" not in parts:
        reset.update(head_sparsity=None, gqa_mode="kv_groups")
    return dataclasses.replace(config, granularity=granularity, **{**reset, **changes})


def hidden_multiple(model: nn.Module, config: PruningConfig, heads_fraction: float = 0.0) -> int:
    """Residual widths must be multiples of this: ``round_to`` (`structure.widths.residual_multiple`) and, because
    Llama-style configs check ``hidden_size % num_attention_heads == 0``, the head count before and after head
    pruning."""
    cfg = model.config
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if heads_fraction > 0:
        unit = heads // kv if config.gqa_mode == "kv_groups" and kv < heads else (kv if kv < heads else 1)
        units = heads // unit
        heads = heads - int(round(heads_fraction * units)) * unit
    return residual_multiple(model, residual_stream(model).width,
                             math.lcm(cfg.num_attention_heads, max(heads, 1)), config.round_to)


def width_multiples(model: nn.Module, config: PruningConfig, plan: Plan) -> dict[str, int]:
    """The multiples the plan's widths are rounded to, per axis (stated in the report and the card)."""
    ucfg = unit_config(config, plan)
    groups = find_groups(model, ucfg) if ucfg is not None else []
    hidden = hidden_multiple(model, config, plan.heads) if "hidden" in config.parts else None
    return multiples_used(groups, hidden)


def hidden_keep_count(width: int, fraction: float, config: PruningConfig, multiple: int = 1) -> int:
    """Residual channels kept for a fraction: rounded up to a multiple of ``multiple`` (`hidden_multiple`); errors
    name the fix."""
    keep = width - int(round(fraction * width))
    keep = min(width, int(math.ceil(keep / multiple) * multiple))
    if keep < multiple:
        raise ConfigError(f"hidden_sparsity={fraction:g} of {width} residual channels leaves {keep}, fewer than "
                          f"{multiple} (round_to={config.round_to} and the head counts: widths must be multiples of "
                          f"{multiple}); use a smaller fraction.")
    if fraction > 0 and keep == width:
        raise ConfigError(f"hidden_sparsity={fraction:g} of {width} residual channels removes none once the width is "
                          f"rounded to a multiple of {multiple} (round_to={config.round_to} and the head counts); "
                          f"use a fraction of at least {multiple / width:.3f}.")
    return keep


def initial_plan(model: nn.Module, config: PruningConfig) -> Plan:
    """The plan the config's fractions ask for, validated before any work."""
    parts = config.parts
    plan = Plan()
    if "layers" in parts:
        plan.layers = check_layers(model, config)
    if "experts" in parts:
        plan.experts = check_experts(model, config)
    if "hidden" in parts:
        rs = residual_stream(model)
        f = config.sparsity_for("hidden")
        heads = config.sparsity_for("heads") if "heads" in parts else 0.0
        plan.hidden = hidden_keep_count(rs.width, f, config, hidden_multiple(model, config, heads)) \
            if f > 0 else rs.width
    plan.neurons = config.sparsity if "neurons" in parts else 0.0
    plan.heads = config.sparsity_for("heads") if "heads" in parts else 0.0
    return plan


def compute_scores(model: nn.Module, config: PruningConfig, batches: list, progress: bool = False) -> Scores:
    """Block, residual-channel and neuron/head scores of the (unpruned) model."""
    scores = Scores()
    parts = config.parts
    if "experts" in parts:
        scores.experts = EXPERT_SCORES[config.width_depth.expert_score].score(model, moe_blocks(model), batches)
    if "layers" in parts:
        _, blocks = block_list(model)
        score = BLOCK_SCORES[config.width_depth.block_score].score
        scores.blocks = score(model, blocks, batches, config.seed)
    if "hidden" in parts:
        rs = residual_stream(model)
        stats = hidden_statistics(model, rs.spec.scored_norms, rs.spec.norms, batches) if batches else None
        if stats is not None and config.width_depth.rescale_norms:
            scores.norm_sq = stats["sq"]
        scores.hidden = CHANNEL_SCORES[config.width_depth.channel_score].score(rs, stats, config.seed)
    ucfg = unit_config(config, Plan(neurons=config.sparsity, heads=config.sparsity_for("heads")))
    if ucfg is not None:
        crit = get_criterion(ucfg)
        layers = find_layers(model)
        groups = find_groups(model, ucfg)
        _, unit_scores, _ = compute_masks(model, crit, layers, groups, batches, progress)
        scores.unit_scores, scores.unit_criterion = unit_scores, crit
    return scores


def apply_plan(model: nn.Module, config: PruningConfig, plan: Plan, scores: Scores | None,
               refit_units: Callable[[nn.Module, list, dict], None] | None = None,
               before_width: Callable[[nn.Module], None] | None = None) -> Compaction:
    """Remove what ``plan`` says, choosing by ``scores`` (None: the first units, for counting parameters on a
    meta-device skeleton). Returns the loader and the kept counts per axis. ``refit_units(model, groups, masks)``
    runs on the masked model before the neurons / heads are compacted; ``before_width(model)`` after that, before
    residual channels and blocks are removed (`prune_to_plan` uses both for reconstruction)."""
    from ..steps.compaction import compact_units, rewrite_config
    from ..steps.selection import structured_masks

    kept: dict[str, dict[str, Any]] = {}
    loader = Loader.TRANSFORMERS
    if "experts" in config.parts:
        expert_kept = apply_experts(model, plan.experts, scores.experts if scores is not None else None)
    ucfg = unit_config(config, plan)
    if ucfg is not None and (plan.neurons > 0 or plan.heads > 0):
        groups = find_groups(model, ucfg)
        unit_scores = scores.unit_scores if scores is not None else \
            {g.name: -torch.arange(g.num_units, dtype=torch.float64) for g in groups}
        masks = structured_masks(unit_scores, groups, ucfg).masks
        if refit_units is not None:
            refit_units(model, groups, masks)
        compact_units(model, groups, masks, adapter_for(model))
        loader, kept = rewrite_config(model, groups, masks, adapter_for(model))
    if before_width is not None:
        before_width(model)
    if plan.hidden is not None:
        width = residual_stream(model).width
        if plan.hidden < width:
            s = scores.hidden if scores is not None else -torch.arange(width, dtype=torch.float64)
            keep = keep_top(s, plan.hidden)
            scale = rms_scales(scores.norm_sq, keep) if scores is not None and scores.norm_sq else None
            compact_hidden(model, keep, scale)
        kept["hidden"] = {"kind": "hidden", "total": width, "kept": plan.hidden}
    if "layers" in config.parts:
        _, blocks = block_list(model)
        n = len(blocks)
        s = scores.blocks if scores is not None else -torch.arange(n, dtype=torch.float64)
        drop = sorted((~keep_top(s, n - plan.layers)).nonzero().flatten().tolist())
        if drop:
            remove_blocks(model, drop)
        kept["layers"] = {"kind": "layers", "total": n, "kept": n - len(drop), "removed": drop}
    if "experts" in config.parts:
        kept.update(expert_kept)
    return Compaction(loader, kept)


@dataclass
class PlanReconstruction:
    """The two refits of `prune_to_plan`: neurons / heads on their masks (each layer's own output on its new
    inputs, as on the unit axes), then residual channels / blocks after compaction (the unit-pruned model's
    outputs)."""

    units: ReconstructionReport | None = None
    width_depth: DenseRefitReport | None = None

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in (self.units, self.width_depth) if r is not None)

    def to_dict(self) -> dict[str, Any]:
        units = self.units.to_dict() if self.units else None
        wd = self.width_depth.to_dict() if self.width_depth else None
        layers = (units or {}).get("layers", []) + (wd or {}).get("layers", [])
        return {"units": units, "width_depth": wd, "layers": layers, "seconds": self.seconds,
                "compacted": wd is not None}


def prune_to_plan(model: nn.Module, config: PruningConfig, plan: Plan, scores: Scores, batches: list | None,
                  progress: bool = False) -> tuple[Compaction, PlanReconstruction | None]:
    """`apply_plan`, with reconstruction when ``batches`` are given (hfprune extension): the neurons / heads removed
    are refit on their masks with the unit axes' least squares (`hfprune.reconstruction.refit`, target
    ``reconstruction.target``) -- measured better than fitting them to the dense model (docs/benchmarks.md) --
    then, when residual channels or blocks go too, every kept layer is refit to the unit-pruned model's outputs
    (`hfprune.reconstruction.dense_refit`)."""
    if not batches:
        return apply_plan(model, config, plan, scores), None

    rec = PlanReconstruction()
    options = config.reconstruction
    reference: list[nn.Module] = []

    def refit_units(m: nn.Module, groups: list, masks: dict) -> None:
        rec.units = reconstruct(m, find_layers(m), masks, batches, groups=groups, damp=options.damp,
                                target=options.target, adapter=adapter_for(m), progress=progress)

    def before_width(m: nn.Module) -> None:
        if _changes_width_or_depth(m, plan):
            reference.append(copy.deepcopy(m))
            mark_origins(m)  # output rows from here on are counted in the reference's shapes

    with track_origins(model):
        done = apply_plan(model, config, plan, scores, refit_units, before_width)
        if reference:
            removed = done.kept.get("layers", {}).get("removed", [])
            rec.width_depth = refit_to_dense(reference[0], model, removed, batches, options.damp, progress)
    return done, rec


def _changes_width_or_depth(model: nn.Module, plan: Plan) -> bool:
    return plan.layers > 0 or (plan.hidden is not None and plan.hidden < residual_stream(model).width)


def criterion_label(config: PruningConfig) -> str:
    """The criteria of a width/depth run, one per axis, e.g. 'block_influence+wanda'."""
    axes = [score for axis, score in (("layers", config.width_depth.block_score),
                                      ("hidden", config.width_depth.channel_score)) if axis in config.parts]
    units = [config.criterion] if any(p in UNIT_AXES for p in config.parts) else []
    return "+".join(dict.fromkeys(axes + units))
