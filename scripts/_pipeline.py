"""prune() with reconstruction and protection, assembled from hfprune's steps in a script (until the engine has a
step for them): calibrate, score, [protect], select, [reconstruct], compensate, apply masks / compact."""

from __future__ import annotations

import time
from typing import Any

from hfprune.calibration.data import prepare_calibration
from hfprune.compaction import compact_units, rewrite_config
from hfprune.config import PruningConfig
from hfprune.masks import apply_weight_masks
from hfprune.prune import _compensate, _select, compute_masks, criterion_for
from hfprune.protection import detect_outliers
from hfprune.reconstruction import reconstruct
from hfprune.selection import check_head_ratio, protect_scores
from hfprune.structure import adapter_for, find_groups, find_layers, target_layers


def run(model: Any, tok: Any, cfg: PruningConfig, texts: list[str], *, reconstruction: bool = False,
        damp: float = 0.01, method: str = "obs", sequential: bool = True, protect: float | None = None) -> dict:
    """Prune ``model`` in place; returns timings (s), the reconstruction report and the protected units."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    criterion = criterion_for(cfg)
    adapter = adapter_for(model)
    calib = prepare_calibration(texts, model, cfg, tok)
    groups = None
    if cfg.structured:
        groups = find_groups(model, cfg, calib.batches[0])
        for g in groups:
            check_head_ratio(g, cfg)
        layers = find_layers(model)
    else:
        layers = target_layers(model, cfg)
    selection, scores, stats = compute_masks(model, criterion, layers, groups, calib, False, timings=timings)
    out: dict[str, Any] = {}
    if protect is not None:
        t = time.perf_counter()
        prot = detect_outliers(model, layers, groups, calib.batches, protect)
        selection = _select(criterion, layers, groups, protect_scores(scores, prot.masks), {}, timings)
        out["protected"] = prot.to_report()
        timings["protection"] = time.perf_counter() - t
    if reconstruction:
        fit_bias = bool(cfg.compensate and cfg.criterion == "elimination_compensation")
        rep = reconstruct(model, layers, selection.masks, calib.batches, groups=groups, damp=damp,
                          sequential=sequential, method=method, fit_bias=fit_bias, adapter=adapter)
        timings["reconstruction"] = rep.seconds
        out["reconstruction"] = rep
    else:
        _compensate(model, criterion, layers, stats, groups, selection.masks, adapter)
    if groups is None:
        apply_weight_masks(layers, selection.masks)
    else:
        compact_units(model, groups, selection.masks)
        rewrite_config(model, groups, selection.masks, adapter)
    timings["total"] = time.perf_counter() - t0
    out["timings"] = timings
    return out
