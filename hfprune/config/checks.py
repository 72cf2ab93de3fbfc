"""What each `PruningConfig` field accepts: one rule per field (`hfprune.config.rules`), the fields checked against each
other, and the names of the granularities and width/depth criteria. A leaf: functions take the config as
``Any`` (a `PruningConfig`), so `hfprune.config.pruning_config` imports this module and not the other way round.

Kept apart from `hfprune.config.pruning_config` (the dataclass, its help strings and serialisation) so each stays readable; the CLI
reads `FIELD_RULES` to give argparse the fixed choices.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, shown
from .rules import NAME, PATTERNS, Rule, check_fields, choice, integer, is_int, number, optional

STRUCTURED_GRANULARITIES = ("neurons", "heads", "channels", "hidden", "layers")
#: axes scored by their own criteria (`layer_criterion`, `hidden_criterion`), not by `criterion`
WIDTH_DEPTH_AXES = ("hidden", "layers")
LAYER_CRITERIA = ("block_influence", "skip_loss", "magnitude", "random")
HIDDEN_CRITERIA = ("minitron", "magnitude", "random")
SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMbBgG]?)\s*$")
NM_PATTERN = re.compile(r"^(\d+):(\d+)$")

SCHEDULES = ("one_shot", "iterative", "cubic")

# --- validation: one rule per field (hfprune.config.rules), derived from its type hint unless this table says more ---
_FRACTION = number(0, 1, open_high=True, allowed="a number in [0, 1) (the fraction removed)")
_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_CRITERION = Rule(lambda v: isinstance(v, str) and bool(_NAME_RE.fullmatch(v)),
                  "the name of a registered criterion (see hfprune.available_criteria())")

# Fields whose hint says too little (ranges, choices); every other field is checked from its type hint.
# The criterion names (and each criterion's own rules) are checked by `hfprune.criteria.resolve_criterion` at the
# entry points: the registry is open to user criteria, so this module stays a leaf.
FIELD_RULES: dict[str, Rule] = {
    "criterion": _CRITERION,
    "hybrid_importance": _CRITERION,
    "granularity": Rule(NAME.ok, "weights, N:M (e.g. 2:4), neurons, heads, channels or a '+' combination"),
    "sparsity": _FRACTION,
    "head_sparsity": optional(_FRACTION),
    "hidden_sparsity": optional(_FRACTION),
    "layer_sparsity": optional(_FRACTION),
    "target_params": optional(Rule(lambda v: (is_int(v) and v > 0)
                                   or (isinstance(v, str) and bool(SIZE_PATTERN.match(v))
                                       and float(SIZE_PATTERN.match(v).group(1)) > 0),
                                   "a positive integer or a size such as '100M' or '1.5B'")),
    "layer_criterion": optional(choice(*LAYER_CRITERIA)),
    "hidden_criterion": optional(choice(*HIDDEN_CRITERIA)),
    "scope": choice("local", "global"),
    "targets": optional(PATTERNS),
    "ignore": PATTERNS,
    **{name: integer(1) for name in ("round_to", "min_units", "num_samples", "seq_len", "batch_size",
                                      "ec_projections", "pruning_steps")},
    "start_step": integer(0),
    "end_step": optional(integer(0)),
    "seed": integer(0),
    "gqa_mode": choice("kv_groups", "query_heads"),
    "source": choice("data", "random"),
    "calibration_mode": choice("full", "sequential"),
    "norm": choice(1, 2),
    "hybrid_form": choice("rank", "product"),
    "head_pattern": choice("output"),
    "ec_output": choice("network", "loss", "layer"),
    "taylor_form": choice("auto", "squared", "absolute"),
    "compare_within": choice("auto", "layer", "row"),
    "ri_threshold": choice("sparsity", "tau"),
    "schedule": choice(*SCHEDULES),
    "regularizer": optional(choice("relative_importance", "group_lasso")),
    "alpha": number(0, 1),
    "distillation_weight": number(0, 1),
    "ri_tau": number(0, open_low=True),
    "distillation_temperature": number(0, open_low=True),
    "regularizer_weight": number(0),
    "reconstruction": choice("auto", "none", "weights"),
    "reconstruction_cg_steps": integer(0),
    "reconstruction_target": choice("dense", "layer"),
    "reconstruction_damp": number(0, allowed="a number >= 0 (a fraction of the mean diagonal, e.g. 0.01)"),
    "protect": choice("auto", "none", "outliers", "energy"),
    "protect_threshold": optional(number(1, open_low=True,
                                         allowed="a number > 1 (ratio to the group median, e.g. 20)")),
}

_HEADS = "when the granularity includes 'heads' (e.g. 'neurons+heads')"
_GRADUAL = "with schedule 'iterative' or 'cubic'"
# (field, does it apply?, when it applies): a field changed from its default where it has no effect is an error.
_ONLY_WITH: list[tuple[str, Callable[[Any], bool], str]] = [
    ("head_sparsity", lambda c: "heads" in c.parts, _HEADS),
    ("hidden_sparsity", lambda c: "hidden" in c.parts, "when the granularity includes 'hidden'"),
    ("hidden_criterion", lambda c: "hidden" in c.parts, "when the granularity includes 'hidden'"),
    ("hidden_rescale_norms", lambda c: "hidden" in c.parts, "when the granularity includes 'hidden'"),
    ("layer_sparsity", lambda c: "layers" in c.parts, "when the granularity includes 'layers'"),
    ("layer_criterion", lambda c: "layers" in c.parts, "when the granularity includes 'layers'"),
    ("gqa_mode", lambda c: "heads" in c.parts, _HEADS),
    ("end_step", lambda c: c.schedule != "one_shot", _GRADUAL),
    ("regularizer_weight", lambda c: c.regularizer is not None, "with a regularizer"),
    ("distillation_temperature", lambda c: c.distillation, "with distillation=True"),
    ("distillation_weight", lambda c: c.distillation, "with distillation=True"),
    ("ri_tau", lambda c: c.ri_threshold == "tau", "with ri_threshold='tau'"),
    ("compare_within", lambda c: c.parts == ["weights"] and c.nm is None, "with granularity='weights'"),
    ("reconstruction_damp", lambda c: c.reconstruction != "none", "with reconstruction='weights'"),
    ("reconstruction_cg_steps", lambda c: c.reconstruction != "none", "with reconstruction='weights'"),
    ("reconstruction_target", lambda c: c.reconstruction != "none", "with reconstruction='weights'"),
    ("protect_threshold", lambda c: c.protect != "none", "with protect='outliers' or 'energy'"),
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
            raise bad("weights, N:M (e.g. 2:4), neurons, heads, channels, hidden, layers, or a '+' combination "
                      "of them")
        if len(set(parts)) != len(parts):
            raise bad("each unit kind at most once")


def check_config(config: Any) -> None:
    """Check every field (type, range, finiteness, choices) and the fields against each other; raise `ConfigError`
    naming the field, the value and what is allowed."""
    check_fields(config, FIELD_RULES, "PruningConfig")
    if config.end_step is not None and config.end_step < config.start_step:
        raise ConfigError(f"PruningConfig.end_step={config.end_step!r} is not allowed: an integer >= start_step "
                          f"({config.start_step}), or None.")
    _check_granularity(config)
    if config.target_params is not None and ("channels" in config.parts or not config.structured):
        raise ConfigError(f"PruningConfig.target_params={shown(config.target_params)} is not allowed with "
                          f"granularity {config.granularity!r}: it is a target for structured transformer axes, "
                          "a granularity made of neurons, heads, hidden and layers (e.g. "
                          "'hidden+neurons+layers').")
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name, applies, when in _ONLY_WITH:
        if getattr(config, name) != defaults[name] and not applies(config):
            raise ConfigError(f"PruningConfig.{name}={shown(getattr(config, name))} has no effect: it is used "
                              f"only {when}. Remove it, or change the config so that it applies.")
