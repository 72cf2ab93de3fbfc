"""The unit step: single weights, N:M patterns, FFN neurons, attention heads and conv channels, chosen by the
criterion and removed at compaction.

One call of `UnitStep.run` protects, calibrates, scores and selects at a sparsity (units already removed stay
removed), refits the kept weights (reconstruction) and compensates biases for what it removed; `UnitStep.compact`
then removes the masked units physically (or zeroes masked weights). Its peer for blocks and residual channels is
`hfprune.width_depth.step.WidthDepthStep`; the `Pruner` drives either through the same methods.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from torch import nn

from ..calibration.checks import check_units
from ..calibration.offload import check_offload, offload_of
from ..config.pruning_config import PruningConfig
from ..criteria import criterion_class, get_criterion
from ..errors import ConfigError
from ..reconstruction.refit import ReconstructionReport, reconstruct
from ..report.pruning_report import LayerReport
from ..steps.compaction import Compaction, add_bias, compact_units, rewrite_config
from ..structure.loaders import Loader
from ..steps.masks import apply_weight_masks, removed_columns
from ..steps.protection import Protection, detect_outliers
from ..steps.scoring import BlockSelector, compute_masks
from ..steps.selection import Selection, check_head_ratio
from ..structure import UnitGroup, adapter_for, find_groups, find_layers, target_layers
from ..structure.widths import multiples_used
from ..utils.distributed import broadcast_masks, gather_counts, my_share
from ..utils.logging import get_logger

logger = get_logger(__name__)


class UnitStep:
    """Masks of units (or weights) chosen by ``config.criterion``; built from the settled config."""

    @staticmethod
    def applies(config: PruningConfig) -> bool:
        return not config.prunes_width_depth

    @staticmethod
    def check(model: nn.Module, config: PruningConfig) -> None:
        """Nothing about the units is checked before calibration (conv channels are traced on a calibration batch,
        and the groups are checked when the step is built); an offloaded run needs the model in CPU memory."""
        check_offload(model, offload_of(config))

    @staticmethod
    def needs_data(config: PruningConfig) -> str | None:
        """What in the config needs calibration batches (None: nothing): the criterion reads activations, conv
        channels are traced on a batch, or an explicit protection / reconstruction reads layer inputs."""
        if criterion_class(config.criterion).needs_data:
            return f"criterion {config.criterion!r}"
        if "channels" in config.parts:
            return "granularity 'channels' (traced on a calibration batch)"
        if config.protection.mode not in ("none", "auto"):
            return f"protection.mode={config.protection.mode!r}"
        if config.reconstruction.method not in ("none", "auto"):
            return f"reconstruction.method={config.reconstruction.method!r}"
        return None

    def __init__(self, model: nn.Module, config: PruningConfig, example_inputs: Any, world_size: int,
                 progress: bool) -> None:
        self.model, self.config, self.world_size, self.progress = model, config, world_size, progress
        self.criterion = get_criterion(config)
        self.label = config.criterion
        self.adapter = adapter_for(model)
        self.groups: list[UnitGroup] | None = None
        if config.structured:
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
        if config.calibration.mode == "one_pass" and config.reconstruction.method == "none":
            raise ConfigError("calibration.mode='one_pass' chooses the masks inside the reconstruction pass, which "
                              "needs calibration data and a model built from a list of blocks; pass calibration "
                              "data, or use calibration.mode='sequential'.")
        self.forced_min: set[str] = set()
        self.over_protected: dict[str, tuple[int, int]] = {}
        self.batches_per_process: list[int] = []
        self.protection: Protection | None = None  # detected once, on the dense model (config.protection)
        self.reconstruction: ReconstructionReport | None = None  # of the latest step (config.reconstruction)

    def config_at(self, sparsity: float) -> PruningConfig:
        """The config with ``sparsity`` (heads scaled in proportion when they have their own fraction)."""
        config = self.config
        if sparsity == config.sparsity:
            return config
        head = config.head_sparsity
        if head is not None and config.sparsity > 0:
            head = head * sparsity / config.sparsity
        return dataclasses.replace(config, sparsity=sparsity, head_sparsity=head)

    def run(self, sparsity: float, batches: list, timings: dict[str, float],
            already: bool) -> tuple[Selection, float]:
        """Prune to ``sparsity``, scored on the current weights; with ``already`` the units removed by earlier
        steps stay removed, so repeated steps give monotone masks. Compensates for what this step removes.
        Returns the selection and the sparsity reached (the one asked for)."""
        removed = {n: ~m for n, m in self.masks.items()} if already else {}
        logger.info("step to sparsity %g: calibrating on %d batch(es), scoring, selecting", sparsity, len(batches))
        if self.config.calibration.mode == "one_pass":
            selection, stats, refit = self._one_pass(sparsity, batches, timings, removed)
            new = selection.masks
        else:
            protected = self._protect(batches, timings)
            selection, _, stats = compute_masks(self.model, self.criterion, self.layers, self.groups, batches,
                                                self.progress, removed, timings, self.config_at(sparsity),
                                                protected=protected)
            if self.criterion.needs_data and batches:
                self.batches_per_process = gather_counts(len(my_share(batches)))
            new = broadcast_masks(dict(selection.masks)) if self.world_size > 1 else selection.masks
            refit = self._reconstruct(new, batches, timings)
        t = time.perf_counter()
        newly = {n: new[n] | removed[n] for n in new} if removed else new  # keep-mask of this step's removal
        self._compensate({n: v for n, v in stats.items() if n not in refit}, newly)
        timings["compensation"] = timings.get("compensation", 0.0) + time.perf_counter() - t
        self.masks, self.forced_min = new, set(selection.forced_min)
        self.over_protected = dict(selection.over_protected)
        for n in sorted(self.forced_min):
            logger.warning("%s would have lost every unit; kept %d (min_units)", n, self.config.min_units)
        return selection, sparsity

    def _protect(self, batches: list, timings: dict[str, float]) -> dict[str, torch.Tensor] | None:
        """Units to keep (hfprune extension, `hfprune.steps.protection`), detected once on the dense model."""
        mode = self.config.protection.mode
        if mode == "none":
            return None
        if self.protection is None:
            t = time.perf_counter()
            self.protection = detect_outliers(self.model, self.layers, self.groups, batches,
                                              float(self.config.protection.threshold), mode)
            timings["protection"] = time.perf_counter() - t
            logger.info("protected %d units (protection.mode=%r)",
                        sum(len(v) for v in self.protection.to_report().values()), mode)
        return self.protection.masks

    def _reconstruct(self, masks: dict[str, torch.Tensor], batches: list, timings: dict[str, float],
                     chooser: BlockSelector | None = None) -> set[str]:
        """Refit the kept weights (hfprune extension, `hfprune.reconstruction.refit`); the names of the refit
        layers, whose bias (elimination-compensation with ``compensate``) is fitted jointly instead of compensated.
        Every process refits on all batches (the same result everywhere)."""
        options = self.config.reconstruction
        if options.method == "none":
            return set()
        self.reconstruction = reconstruct(self.model, self.layers, masks, batches, groups=self.groups,
                                          damp=options.damp, target=options.target, cg_steps=options.cg_steps,
                                          fit_bias=self.criterion.compensates, adapter=self.adapter,
                                          progress=self.progress, offload=offload_of(self.config),
                                          chooser=chooser)
        timings["reconstruction"] = timings.get("reconstruction", 0.0) + self.reconstruction.seconds
        for name in self.reconstruction.rank_deficient:
            logger.info("reconstruction: the inputs of %s were rank-deficient; damped", name)
        return {f.name for f in self.reconstruction.layers}

    def _one_pass(self, sparsity: float, batches: list, timings: dict[str, float],
                  removed: dict[str, torch.Tensor]) -> tuple[Selection, dict, set[str]]:
        """calibration.mode='one_pass': each block's statistics, protection, scores, masks and refit in one pass
        over the blocks (`reconstruct` with a `BlockSelector`), protection detected there on the first step (on the
        inputs each block receives) instead of in a whole-model pass; every process runs every batch, so all
        decide the same masks."""
        for phase in ("calibration", "scoring", "selection"):
            timings.setdefault(phase, 0.0)
        config = self.config_at(sparsity)
        observed = self.criterion.observed_layers(self.layers, self.groups)
        mode = self.config.protection.mode
        detect = mode != "none" and self.protection is None
        chooser = BlockSelector(self.model, self.criterion, self.layers, self.groups, observed, removed, timings,
                                config, self.protection.masks if self.protection else {},
                                protect=(mode, float(self.config.protection.threshold)) if detect else None)
        refit = self._reconstruct({}, batches, timings, chooser)  # ends with chooser.finish()
        if batches:
            self.batches_per_process = gather_counts(len(batches))  # every process ran every batch
        if detect:
            self.protection = chooser.protection
        return chooser.selection, chooser.kept, refit

    def _compensate(self, stats: dict, masks: dict[str, torch.Tensor]) -> None:
        """Elimination-compensation: add each layer's optimal bias change for the weights being removed."""
        if not self.criterion.compensates:
            return
        for name in stats:
            layer = self.layers[name]
            gone = ~masks[name] if self.groups is None else removed_columns(layer, self.groups, masks)
            if gone is None or not gone.any():
                continue
            delta = self.criterion.bias_compensation(layer, stats[name], gone)
            if delta is not None:
                add_bias(self.model, layer, delta, self.adapter)

    def compact(self) -> Compaction:
        """Remove the masked units (structured) or zero the masked weights (unstructured); rewrite the config."""
        hf = hasattr(self.model, "save_pretrained")
        if self.groups is None:
            apply_weight_masks(self.layers, self.masks)
            return Compaction(Loader.TRANSFORMERS if hf else Loader.STATE_DICT, {})
        compact_units(self.model, self.groups, self.masks, self.adapter)
        loader, kept = rewrite_config(self.model, self.groups, self.masks, self.adapter)
        return Compaction(loader if hf else Loader.STATE_DICT, kept)

    @property
    def changes_shapes(self) -> bool:
        """Whether compaction changed any shape (so MACs must be counted again)."""
        return self.groups is not None and any(not m.all() for m in self.masks.values())

    def kept_units(self) -> dict[str, dict[str, Any]]:
        """Per group: kind, total and kept units (empty for unstructured runs)."""
        if self.groups is None:
            return {}
        return {g.name: {"kind": g.kind, "total": g.num_units, "kept": int(self.masks[g.name].sum())}
                for g in self.groups}

    def layer_reports(self) -> list[LayerReport]:
        if self.groups is None:
            return [LayerReport(n, "weights", m.numel(), int(m.sum()), n in self.forced_min)
                    for n, m in self.masks.items()]
        return [LayerReport(g.name, g.kind, g.num_units, int(self.masks[g.name].sum()), g.name in self.forced_min)
                for g in self.groups]

    def report_sections(self) -> dict[str, Any]:
        """What this step adds to the report: protected units and the reconstruction's numbers."""
        return {"protected": self.protection.to_report() if self.protection else {},
                "reconstruction": self.reconstruction.to_dict() if self.reconstruction else {},
                "width_multiples": multiples_used(self.groups) if self.groups else {}}

    def warnings(self) -> list[str]:
        out = [f"{n} would have lost every unit; kept {self.config.min_units}" for n in sorted(self.forced_min)]
        out += [f"{n}: protection (protection.mode={self.config.protection.mode!r}) keeps {kept} units where the "
                f"sparsity keeps {keep}, so this group reaches a lower sparsity; raise protection.threshold or set "
                "protection.mode='none' to remove them" for n, (keep, kept) in sorted(self.over_protected.items())]
        return out


def check_reconstruction(model_has_blocks: bool, config: PruningConfig, model: nn.Module) -> None:
    """An explicit reconstruction needs a model built from a list of blocks (it refits block by block)."""
    if config.reconstruction.method == "weights" and not model_has_blocks:
        raise ConfigError(f"reconstruction.method='weights' refits block by block and needs a model built from a "
                          f"list of blocks (an nn.ModuleList of transformer layers); {type(model).__name__} has "
                          "none. Use reconstruction={'method': 'none'}.")
