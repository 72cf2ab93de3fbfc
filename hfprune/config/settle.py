"""What ``"auto"`` means for one run: the defaults of `PruningConfig` that depend on the run (calibration data,
the model's blocks, the granularity), settled once by the engine, before the criterion is built, and saved
settled."""

from __future__ import annotations

import dataclasses

from ..criteria.registry import criterion_class
from .groups import ProtectionConfig
from .pruning_config import PruningConfig


def settle(config: PruningConfig, has_data: bool, has_blocks: bool = True,
           seq_len: int | None = None) -> PruningConfig:
    """The config with ``"auto"`` settled for this run (the engine calls it once it knows whether there is
    calibration data and whether the model is a list of blocks, which reconstruction refits one by one):
    reconstruction 'weights' and protection 'energy' (neurons / heads only) where they can run, else 'none'; the
    protection threshold of the chosen mode; the calibration window (for "auto", ``seq_len``: what the
    calibration resolved against the model); the unstructured comparison group (`compare_within`) the criterion
    uses; the criterion's own options (`Criterion.settle_options`). The defaults
    are measured (docs/criteria.md): with them no criterion's default collapses SmolLM2; set
    ``reconstruction.method`` and ``protection.mode`` to 'none' for the criteria exactly as published."""
    method, mode = config.reconstruction.method, config.protection.mode
    if method == "auto":
        refits = set(config.parts) - {"channels", "experts"}  # removed experts leave nothing to refit
        method = "weights" if has_data and has_blocks and "channels" not in config.parts and refits else "none"
    if mode == "auto":
        mode = "energy" if has_data and config.structured and set(config.parts) <= {"neurons", "heads"} else "none"
    threshold = config.protection.threshold
    if mode != "none" and threshold is None:
        threshold = ProtectionConfig.THRESHOLDS[mode]
    if mode == "none":
        threshold = None
    cls = criterion_class(config.criterion)
    options = cls.settle_options(config.options, config)
    compare_within = config.compare_within
    if compare_within == "auto" and config.parts == ["weights"] and config.nm is None:
        compare_within = "row" if cls(config).compares_rows else "layer"  # the criterion's own, saved as such
    calibration = config.calibration
    if calibration.seq_len == "auto" and seq_len is not None:
        calibration = dataclasses.replace(calibration, seq_len=seq_len)
    settled = dataclasses.replace(
        config, options=options, compare_within=compare_within, calibration=calibration,
        reconstruction=dataclasses.replace(config.reconstruction, method=method),
        protection=dataclasses.replace(config.protection, mode=mode, threshold=threshold))
    return config if settled == config else settled
