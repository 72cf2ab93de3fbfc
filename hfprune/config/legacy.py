"""Reading configs of the older flat shape (hfprune before the option groups): old keys in, new shape out.

A ``pruning_config.json`` written before the change (51 flat fields such as ``num_samples``, ``ec_projections``,
``protect``) loads and prunes the same way (one exception: the magnitude block score is now L1 whatever
``norm`` said): each old key moves to its group or to the criterion's options. The
trainer-only distillation keys moved to `hfprune.trainer.RecoveryConfig`; they never changed what was removed, so
they are dropped with a warning when set.
"""

from __future__ import annotations

from typing import Any

from ..utils.logging import get_logger

logger = get_logger(__name__)

#: old flat key -> (group, new key)
MOVED: dict[str, tuple[str, str]] = {
    "num_samples": ("calibration", "num_samples"),
    "seq_len": ("calibration", "seq_len"),
    "batch_size": ("calibration", "batch_size"),
    "source": ("calibration", "source"),
    "calibration_mode": ("calibration", "mode"),
    "reconstruction": ("reconstruction", "method"),
    "reconstruction_cg_steps": ("reconstruction", "cg_steps"),
    "reconstruction_target": ("reconstruction", "target"),
    "reconstruction_damp": ("reconstruction", "damp"),
    "protect": ("protection", "mode"),
    "protect_threshold": ("protection", "threshold"),
    "target_params": ("width_depth", "target_params"),
    "hidden_sparsity": ("width_depth", "hidden_sparsity"),
    "layer_sparsity": ("width_depth", "layer_sparsity"),
    "layer_criterion": ("width_depth", "block_score"),
    "hidden_criterion": ("width_depth", "channel_score"),
    "hidden_rescale_norms": ("width_depth", "rescale_norms"),
    "schedule": ("training", "schedule"),
    "start_step": ("training", "start_step"),
    "end_step": ("training", "end_step"),
    "pruning_steps": ("training", "pruning_steps"),
    "keep_masks": ("training", "keep_masks"),
    "regularizer": ("training", "regularizer"),
    "regularizer_weight": ("training", "regularizer_weight"),
}

#: old flat key -> (criteria that own it, option name)
OPTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "norm": (("magnitude",), "norm"),
    "taylor_form": (("taylor",), "form"),
    "alpha": (("hybrid",), "alpha"),
    "hybrid_importance": (("hybrid",), "importance"),
    "hybrid_form": (("hybrid",), "form"),
    "ec_output": (("elimination_compensation",), "output"),
    "ec_projections": (("elimination_compensation",), "projections"),
    "compensate": (("elimination_compensation",), "compensate"),
    "ri_k": (("relative_importance",), "k"),
    "ri_threshold": (("relative_importance",), "threshold"),
    "ri_tau": (("relative_importance",), "tau"),
}

#: old keys with no place in the new shape: trainer settings (now RecoveryConfig) and a one-value choice
DROPPED = ("distillation", "distillation_temperature", "distillation_weight", "head_pattern")

#: old `criterion` values that were block / channel scores (now `width_depth.block_score` / `.channel_score`)
_AXIS_SCORES = {"block_influence": "block_score", "skip_loss": "block_score", "minitron": "channel_score"}


def is_legacy(data: dict[str, Any]) -> bool:
    """Whether ``data`` has a key of the older flat shape (a group given as a mapping is the current shape)."""
    return data.get("criterion") in _AXIS_SCORES or any(
        k in data for k in (*MOVED, *OPTIONS, *DROPPED) if not isinstance(data.get(k), dict))


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` in the current shape: old flat keys moved into their groups and the criterion's options (merged
    with groups given in the current shape; ``data`` itself is not changed). A mapping already in the current shape
    is returned unchanged."""
    if not is_legacy(data):
        return data
    out: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()
                           if k not in MOVED and k not in OPTIONS and k not in DROPPED}
    options: dict[str, Any] = dict(data.get("options") or {})
    criterion = data.get("criterion", "magnitude")
    axis_score = _AXIS_SCORES.get(criterion)
    if axis_score is not None:  # a width/depth run whose `criterion` named the axis score
        field = "layer_criterion" if axis_score == "block_score" else "hidden_criterion"
        axis = "layers" if axis_score == "block_score" else "hidden"
        parts = [p.strip() for p in str(data.get("granularity", "weights")).split("+")]
        if data.get(field) is None and axis in parts:  # the score only ever applied to its own axis
            data = {**data, field: criterion}
        criterion = out["criterion"] = "magnitude"
    for key, value in data.items():
        if key in MOVED:
            if value is not None:  # None was the default of every moved key (block/channel score: "criterion's")
                group, new = MOVED[key]
                out.setdefault(group, {}).setdefault(new, value)  # a value given in the current shape wins
        elif key in OPTIONS:
            owners, new = OPTIONS[key]
            if criterion in owners:
                options.setdefault(new, value)
            elif criterion == "hybrid" and data.get("hybrid_importance", "magnitude") in owners:
                options.setdefault("importance_options", {}).setdefault(new, value)
        elif key == "distillation" and value:
            logger.warning("The saved config asks for distillation; distillation is now configured in "
                           "hfprune.trainer.RecoveryConfig (PruningTrainer(recovery=...)): it is ignored here.")
    if options:
        out["options"] = options
    return out
