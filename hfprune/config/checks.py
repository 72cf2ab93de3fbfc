"""The checks of `PruningConfig` that span fields: the granularity, the ranges of its top-level numbers, and the
settings that have no effect with the rest of the config. A leaf: functions take the config as ``Any`` (a
`PruningConfig`), so `hfprune.config.pruning_config` imports this module and not the other way round.

Choices are not listed here: they are the ``Literal`` types of the fields (the command line reads the same types).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, shown
from ..structure.units import STRUCTURED_GRANULARITIES
from ..utils.rules import NAME, PATTERNS, Rule, check_fields, integer, is_int, optional
from .groups import FRACTION

# Top-level fields whose hint says too little (ranges); every other field is checked from its type hint.
FIELD_RULES: dict[str, Rule] = {
    "criterion": NAME,
    "granularity": Rule(NAME.ok, "weights, N:M (e.g. 2:4), neurons, heads, channels or a '+' combination"),
    "sparsity": FRACTION,
    "head_sparsity": optional(FRACTION),
    "targets": optional(PATTERNS),
    "ignore": PATTERNS,
    "round_to": Rule(lambda v: v == "auto" or (is_int(v) and v >= 1), "'auto' or an integer >= 1"),
    "min_units": integer(1),
    "seed": integer(0),
}

_HEADS = "when the granularity includes 'heads' (e.g. 'neurons+heads')"
_HIDDEN = "when the granularity includes 'hidden'"
_LAYERS = "when the granularity includes 'layers'"
_EXPERTS = "when the granularity includes 'experts'"
# (dotted field, does it apply?, when it applies): a field changed from its default where it has no effect is an error.
_ONLY_WITH: list[tuple[str, Callable[[Any], bool], str]] = [
    ("head_sparsity", lambda c: "heads" in c.parts, _HEADS),
    ("gqa_mode", lambda c: "heads" in c.parts, _HEADS),
    ("width_depth.hidden_sparsity", lambda c: "hidden" in c.parts, _HIDDEN),
    ("width_depth.channel_score", lambda c: "hidden" in c.parts, _HIDDEN),
    ("width_depth.rescale_norms", lambda c: "hidden" in c.parts, _HIDDEN),
    ("width_depth.layer_sparsity", lambda c: "layers" in c.parts, _LAYERS),
    ("width_depth.block_score", lambda c: "layers" in c.parts, _LAYERS),
    ("width_depth.expert_sparsity", lambda c: "experts" in c.parts, _EXPERTS),
    ("width_depth.expert_score", lambda c: "experts" in c.parts, _EXPERTS),
    ("width_depth.search_refits", lambda c: c.width_depth.target_params is not None, "with width_depth.target_params"),
    ("training.end_step", lambda c: c.training.schedule != "one_shot", "with schedule 'iterative' or 'cubic'"),
    ("training.regularizer_weight", lambda c: c.training.regularizer is not None, "with a regularizer"),
    ("compare_within", lambda c: c.parts == ["weights"] and c.nm is None, "with granularity='weights'"),
    ("reconstruction.damp", lambda c: c.reconstruction.method != "none", "with reconstruction.method='weights'"),
    ("reconstruction.cg_steps", lambda c: c.reconstruction.method != "none", "with reconstruction.method='weights'"),
    ("reconstruction.target", lambda c: c.reconstruction.method != "none", "with reconstruction.method='weights'"),
    ("calibration.generated_share", lambda c: c.calibration.source == "mixed", "with calibration.source='mixed'"),
    ("protection.threshold", lambda c: c.protection.mode != "none", "with protection.mode='outliers' or 'energy'"),
    ("calibration.device", lambda c: c.calibration.offload != "none", "with calibration.offload='cpu' or 'disk'"),
]


def _check_granularity(config: Any) -> None:
    def bad(allowed: str) -> ConfigError:
        return ConfigError(f"PruningConfig.granularity={shown(config.granularity)} is not allowed: {allowed}.")

    parts, nm = config.parts, config.nm
    if not parts:
        raise bad(FIELD_RULES["granularity"].allowed)
    if nm is not None:
        if not 0 < nm[0] < nm[1]:
            raise bad("an N:M pattern needs 0 < N < M (N of every M weights removed), e.g. 2:4")
    elif parts != ["weights"]:
        if any(p not in STRUCTURED_GRANULARITIES for p in parts):
            raise bad("weights, N:M (e.g. 2:4), neurons, heads, channels, hidden, layers, experts, or a '+' "
                      "combination of them")
        if len(set(parts)) != len(parts):
            raise bad("each unit kind at most once")


def _default(config: Any, dotted: str) -> Any:
    """The declared default of a (possibly nested) field."""
    group, _, name = dotted.rpartition(".")
    owner = getattr(config, group) if group else config
    f = next(f for f in dataclasses.fields(owner) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def _value(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def check_config(config: Any) -> None:
    """Check the top-level fields (type, range, finiteness, choices) and the fields against each other; raise
    `ConfigError` naming the field, the value and what is allowed. The option groups check their own fields."""
    check_fields(config, FIELD_RULES, "PruningConfig")
    _check_granularity(config)
    if "experts" in config.parts and config.scope == "global":
        raise ConfigError("PruningConfig.scope='global' with granularity 'experts' would give MoE blocks different "
                          "expert counts, which a transformers config cannot state (one num_experts); use "
                          "scope='local' (the same count removed in every block).")
    offload, mode = config.calibration.offload, config.calibration.mode
    if offload != "none" and mode == "full":
        raise ConfigError(f"PruningConfig.calibration.offload={offload!r} moves one transformer block at a time to "
                          "the execution device, which only the block-by-block passes do; set "
                          "calibration.mode='sequential' or 'one_pass' (or offload='none').")
    if mode == "one_pass":
        _check_one_pass(config)
    if offload != "none" and config.prunes_width_depth:
        raise ConfigError(f"PruningConfig.calibration.offload={offload!r} covers the unit axes (weights, N:M, "
                          f"neurons, heads); granularity {config.granularity!r} removes blocks, residual channels "
                          "or experts, whose scores and refit run on the whole model. Set offload='none'.")
    target = config.width_depth.target_params
    if target is not None and ("channels" in config.parts or "experts" in config.parts or not config.structured):
        raise ConfigError(f"PruningConfig.width_depth.target_params={shown(target)} is not allowed with "
                          f"granularity {config.granularity!r}: it is a target for structured transformer axes, "
                          "a granularity made of neurons, heads, hidden and layers (e.g. "
                          "'hidden+neurons+layers'); experts are not searched yet (set "
                          "width_depth.expert_sparsity instead).")
    for name, applies, when in _ONLY_WITH:
        value = _value(config, name)
        if value != _default(config, name) and not applies(config):
            raise ConfigError(f"PruningConfig.{name}={shown(value)} has no effect: it is used only {when}. "
                              "Remove it, or change the config so that it applies.")


def _check_one_pass(config: Any) -> None:
    """calibration.mode='one_pass' decides each block's masks inside the refit pass: it needs the refit, each
    layer's own output as the target, and a selection that one block's scores can make."""
    why = None
    if config.reconstruction.method == "none":
        why = "it chooses the masks inside the reconstruction pass; set reconstruction.method='weights' (or 'auto')"
    elif config.reconstruction.target != "layer":
        why = "it fits each layer to its own output on the inputs it receives; set reconstruction.target='layer'"
    elif config.prunes_width_depth:
        why = (f"granularity {config.granularity!r} removes blocks, residual channels or experts, which are scored "
               "on the whole model")
    elif config.structured and config.scope == "global":
        why = "scope='global' ranks the units of every block together, before any block is refit; use scope='local'"
    if why:
        raise ConfigError(f"PruningConfig.calibration.mode='one_pass' is not allowed: {why}, or use "
                          "calibration.mode='sequential'.")
