"""What ``"auto"`` means for one run: the defaults of `PruningConfig` that depend on the run (calibration data,
the model's blocks, the granularity), settled once by the engine and saved settled."""

from __future__ import annotations

import dataclasses

from .pruning_config import PruningConfig


def taylor_form_for(config: PruningConfig) -> str:
    """Taylor's score form: the configured one, or for ``"auto"`` 'squared' on single weights and N:M and
    'absolute' on units (measured on SmolLM2: docs/criteria.md)."""
    if config.taylor_form != "auto":
        return config.taylor_form
    return "absolute" if config.structured else "squared"


PROTECT_THRESHOLDS = {"outliers": 20.0, "energy": 2.0}  # the default protect_threshold of each mode


def resolve_defaults(config: PruningConfig, has_data: bool, has_blocks: bool = True) -> PruningConfig:
    """The config with ``"auto"`` settled for this run (the engine calls it once it knows whether there is
    calibration data and whether the model is a list of blocks, which reconstruction refits one by one):
    reconstruction 'weights' and protection 'energy' (neurons / heads only) where they can run, else 'none'; the
    protection threshold of the chosen mode; Taylor's form (`taylor_form_for`). The defaults are measured
    (docs/criteria.md): with them no criterion's default collapses SmolLM2; set reconstruction and protect to
    'none' for the criteria exactly as published."""
    width_depth = config.width_depth
    reconstruction, protect = config.reconstruction, config.protect
    if reconstruction == "auto":
        reconstruction = "weights" if has_data and has_blocks and not width_depth and "channels" not in config.parts \
            else "none"
    if protect == "auto":
        protect = "energy" if has_data and config.structured and set(config.parts) <= {"neurons", "heads"} \
            else "none"
    uses_taylor = "taylor" in (config.criterion, config.hybrid_importance if config.criterion == "hybrid" else None)
    taylor_form = taylor_form_for(config) if uses_taylor else config.taylor_form
    threshold = config.protect_threshold
    if protect != "none" and threshold is None:
        threshold = PROTECT_THRESHOLDS[protect]
    if protect == "none":
        threshold = None
    settled = {"reconstruction": reconstruction, "protect": protect, "protect_threshold": threshold,
               "taylor_form": taylor_form}
    if all(getattr(config, k) == v for k, v in settled.items()):
        return config
    return dataclasses.replace(config, **settled)
