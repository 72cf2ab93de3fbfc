"""`PruningConfig`: everything that decides what a pruning run removes, in one validated, serialisable object.

Modelled on transformers' `GenerationConfig` and peft's `LoraConfig`: a dataclass whose fields carry a ``help``
string (so `HfArgumentParser` can build the command line from it), checked at construction, saved as
``pruning_config.json`` next to the weights.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import CheckpointError, ConfigError

CONFIG_NAME = "pruning_config.json"

STRUCTURED_GRANULARITIES = ("neurons", "heads", "channels", "hidden", "layers")
#: axes scored by their own criteria (`layer_criterion`, `hidden_criterion`), not by `criterion`
WIDTH_DEPTH_AXES = ("hidden", "layers")
LAYER_CRITERIA = ("block_influence", "skip_loss", "magnitude", "random")
HIDDEN_CRITERIA = ("minitron", "magnitude", "random")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMbBgG]?)\s*$")
_NM = re.compile(r"^(\d+):(\d+)$")

DEFAULT_IGNORE = (
    "*embed*",
    "*wte*",
    "*wpe*",
    "*lm_head*",
    "*classifier*",
    "*score*",
    "*pooler*",
    "*qa_outputs*",
)

SCHEDULES = ("one_shot", "iterative", "cubic")


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its help text (read by `HfArgumentParser` and the docs)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class PruningConfig:
    """What to prune, how to score it and how to calibrate. Invalid values raise `ConfigError` at construction."""

    # --- what is removed -------------------------------------------------------------------------------------
    criterion: str = _f("magnitude", "Scoring criterion: magnitude, random, taylor, wanda, expressiveness, hybrid, "
                        "elimination_compensation, relative_importance.")
    granularity: str = _f("weights", "Unit removed: 'weights' (unstructured), an N:M pattern such as '2:4', "
                          "'neurons' (FFN), 'heads' (attention), 'channels' (conv), 'hidden' (residual-stream "
                          "channels), 'layers' (whole transformer blocks), or a '+'-joined combination such as "
                          "'neurons+heads' or 'hidden+neurons+heads+layers'.")
    sparsity: float = _f(0.5, "Fraction of the targeted units removed, in [0, 1).")
    head_sparsity: float | None = _f(None, "Fraction of attention heads (or KV groups) removed when heads are "
                                     "pruned together with other units; defaults to `sparsity`.")
    hidden_sparsity: float | None = _f(None, "Fraction of residual-stream channels removed (granularity 'hidden'); "
                                       "defaults to `sparsity`.")
    layer_sparsity: float | None = _f(None, "Fraction of transformer blocks removed (granularity 'layers', rounded "
                                      "to the nearest block count); defaults to `sparsity`.")
    target_params: int | str | None = _f(None, "Target total parameter count (e.g. 100000000 or '100M'): the "
                                         "per-axis fractions are chosen by a search scored on calibration loss "
                                         "(the sparsity fields are then ignored); never above, within 1%.")
    layer_criterion: str | None = _f(None, "Block score for 'layers': block_influence (ShortGPT), skip_loss, "
                                     "magnitude or random; default: `criterion` when it is a block score, else "
                                     "block_influence.")
    hidden_criterion: str | None = _f(None, "Residual-channel score for 'hidden': minitron (activations), "
                                      "magnitude or random; default: `criterion` when it is one, else minitron.")
    hidden_rescale_norms: bool = _f(True, "After removing residual channels, rescale each RMSNorm weight by the "
                                    "measured RMS change of its input (hfprune extension).")
    scope: str = _f("local", "'local': the same fraction in every layer (widths stay uniform, the result loads "
                    "with plain transformers); 'global': one ranking over all layers (non-uniform widths).")
    targets: list[str] | None = _f(None, "Glob patterns of module names to prune (e.g. '*.mlp.*'); all prunable "
                                   "modules when empty.")
    ignore: list[str] = _f(list(DEFAULT_IGNORE), "Glob patterns of module names never pruned (embeddings, "
                           "classifier and LM heads by default).")
    round_to: int = _f(1, "Keep unit counts a multiple of this number (e.g. 8 for tensor cores).")
    min_units: int = _f(1, "Fewest units a layer keeps; a layer that would lose everything keeps this many and "
                        "the report says so.")
    gqa_mode: str = _f("kv_groups", "Heads under grouped-query attention: 'kv_groups' removes whole KV groups, "
                       "'query_heads' removes the same query heads inside every group.")
    # --- calibration ----------------------------------------------------------------------------------------
    num_samples: int = _f(64, "Number of calibration sequences (or images).")
    seq_len: int = _f(512, "Tokens per calibration sequence (texts are packed and cut to this length).")
    batch_size: int = _f(8, "Calibration batch size.")
    source: str = _f("data", "'data': the calibration data given; 'random': data-agnostic inputs matched to the "
                     "model (random token ids, Gaussian images).")
    seed: int = _f(0, "Seed for random criteria, random calibration inputs and projections.")
    calibration_mode: str = _f("full", "'full': whole-model forward (and backward) passes, statistics of every "
                               "layer held at once; 'sequential': layer-by-layer for large models, only one "
                               "transformer block's inputs and statistics held at a time (forward-only criteria; "
                               "same masks as 'full' for them). See docs/scaling.md.")
    # --- criterion options ----------------------------------------------------------------------------------
    norm: int = _f(1, "Norm of `magnitude` (and of hybrid's default importance): 1 or 2.")
    alpha: float = _f(0.5, "Hybrid: weight of expressiveness against importance, in [0, 1].")
    hybrid_importance: str = _f("magnitude", "Hybrid: the importance criterion mixed with expressiveness.")
    hybrid_form: str = _f("rank", "Hybrid: 'rank' (convex mix of normalised ranks) or 'product' "
                          "(E^alpha * I^(1-alpha)).")
    head_pattern: str = _f("output", "Expressiveness of a head: 'output' (mean over its output dimensions).")
    ec_output: str = _f("network", "Elimination-compensation: 'network' (gradients of the network output, "
                        "Hutchinson projections for many outputs), 'loss' (loss gradient, cheaper) or 'layer' "
                        "(the layer's own output: one forward pass).")
    ec_projections: int = _f(4, "Elimination-compensation: random output projections for the Hutchinson "
                             "estimate when the output has many dimensions.")
    compensate: bool = _f(True, "Elimination-compensation: add the optimal bias perturbation after removal "
                          "(enables biases in the config where the family has them).")
    ri_k: float = _f(0.0, "Relative importance: score = mu + k * sigma of each weight's contribution share.")
    ri_threshold: str = _f("sparsity", "Relative importance: 'sparsity' (remove the `sparsity` fraction) or "
                           "'tau' (remove weights whose score is below tau / fan_in).")
    ri_tau: float = _f(1.0, "Relative importance: tau of the 'tau' threshold rule.")
    # --- schedule (PruningTrainer) --------------------------------------------------------------------------
    schedule: str = _f("one_shot", "When PruningTrainer prunes: 'one_shot' (before training), 'iterative' "
                       "(`pruning_steps` equal steps between start and end), 'cubic' (Zhu & Gupta gradual).")
    start_step: int = _f(0, "Optimizer step of the first pruning step.")
    end_step: int | None = _f(None, "Optimizer step at which the final sparsity is reached (iterative, cubic).")
    pruning_steps: int = _f(1, "Number of pruning steps (iterative) or mask updates (cubic).")
    keep_masks: bool = _f(False, "Keep masks at the end of training instead of compacting the model.")
    regularizer: str | None = _f(None, "Loss term added while training: 'relative_importance' or 'group_lasso'.")
    regularizer_weight: float = _f(1e-4, "Weight of the regulariser in the loss.")
    distillation: bool = _f(False, "Distil from the unpruned model (KL on logits) while fine-tuning.")
    distillation_temperature: float = _f(2.0, "Temperature of the distillation KL.")
    distillation_weight: float = _f(0.5, "Weight of the distillation term (the task loss gets 1 - weight).")

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------------------------
    @property
    def parts(self) -> list[str]:
        """The granularity split on '+', e.g. ['neurons', 'heads']."""
        return [p.strip() for p in str(self.granularity).split("+") if p.strip()]

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) of an N:M pattern (N weights removed in every group of M consecutive inputs), else None."""
        m = _NM.match(str(self.granularity))
        return (int(m.group(1)), int(m.group(2))) if m else None

    @property
    def structured(self) -> bool:
        return all(p in STRUCTURED_GRANULARITIES for p in self.parts)

    def sparsity_for(self, kind: str) -> float:
        """Fraction removed for one unit kind (heads may have their own)."""
        own = {"heads": self.head_sparsity, "hidden": self.hidden_sparsity, "layers": self.layer_sparsity}.get(kind)
        return self.sparsity if own is None else own

    def axis_criterion(self, axis: str) -> str:
        """The criterion scoring ``axis`` ('layers' or 'hidden')."""
        own, allowed, default = ((self.layer_criterion, LAYER_CRITERIA, "block_influence") if axis == "layers"
                                 else (self.hidden_criterion, HIDDEN_CRITERIA, "minitron"))
        if own is not None:
            return own
        return self.criterion if self.criterion in allowed and self.criterion not in ("magnitude", "random") \
            else default

    @property
    def target_params_count(self) -> int | None:
        """`target_params` as an integer ('100M' -> 100000000)."""
        if self.target_params is None or isinstance(self.target_params, int):
            return self.target_params
        num, unit = _SIZE.match(str(self.target_params)).groups()
        return int(round(float(num) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}[unit.lower()]))

    def validate(self) -> None:
        """Check every field; raise `ConfigError` naming the field, the value and what is allowed."""
        def bad(name: str, allowed: str, hint: str = "") -> ConfigError:
            return ConfigError(f"PruningConfig.{name}={getattr(self, name)!r} is not allowed: {allowed}.{hint}")

        # The criterion names (and each criterion's own rules) are checked by `hfprune.criteria.resolve_criterion`
        # at the entry points: the registry is open to user criteria, so this module stays a leaf.
        for name in ("criterion", "hybrid_importance"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise bad(name, "the name of a registered criterion (see hfprune.available_criteria())")
        parts = self.parts
        if not parts:
            raise bad("granularity", "weights, N:M (e.g. 2:4), neurons, heads, channels or a '+' combination")
        nm = self.nm
        if nm is not None:
            n, m = nm
            if not (0 < n < m):
                raise bad("granularity", "an N:M pattern needs 0 < N < M (N of every M weights removed), e.g. 2:4")
        elif parts != ["weights"]:
            for p in parts:
                if p not in STRUCTURED_GRANULARITIES:
                    raise bad("granularity", "weights, N:M (e.g. 2:4), neurons, heads, channels, hidden, layers, "
                              "or a '+' combination of them")
            if len(set(parts)) != len(parts):
                raise bad("granularity", "each unit kind at most once")
        self._validate_width_depth(bad)
        for name in ("sparsity", "head_sparsity", "hidden_sparsity", "layer_sparsity"):
            v = getattr(self, name)
            if v is None:
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0 <= v < 1:
                raise bad(name, "a number in [0, 1) (the fraction removed)")
        if self.scope not in ("local", "global"):
            raise bad("scope", "'local' or 'global'")
        for name in ("targets", "ignore"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, str) or not all(isinstance(s, str) for s in v)):
                raise bad(name, "a list of glob patterns of module names, e.g. ['*.mlp.*']")
        for name, low in (("round_to", 1), ("min_units", 1), ("num_samples", 1), ("seq_len", 1),
                          ("batch_size", 1), ("ec_projections", 1), ("pruning_steps", 1), ("start_step", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise bad(name, f"an integer >= {low}")
        if self.end_step is not None and (not isinstance(self.end_step, int) or self.end_step < self.start_step):
            raise bad("end_step", f"an integer >= start_step ({self.start_step}), or None")
        choices = {
            "gqa_mode": ("kv_groups", "query_heads"),
            "source": ("data", "random"),
            "hybrid_form": ("rank", "product"),
            "head_pattern": ("output",),
            "ec_output": ("network", "loss", "layer"),
            "calibration_mode": ("full", "sequential"),
            "ri_threshold": ("sparsity", "tau"),
            "schedule": SCHEDULES,
            "norm": (1, 2),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise bad(name, "one of " + ", ".join(map(repr, allowed)))
        if self.regularizer not in (None, "relative_importance", "group_lasso"):
            raise bad("regularizer", "None, 'relative_importance' or 'group_lasso'")
        for name in ("alpha", "distillation_weight"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise bad(name, "a number in [0, 1]")
        for name in ("ri_tau", "distillation_temperature"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v > 0:
                raise bad(name, "a positive number")
        if not isinstance(self.regularizer_weight, (int, float)) or self.regularizer_weight < 0:
            raise bad("regularizer_weight", "a number >= 0")

    def _validate_width_depth(self, bad: Any) -> None:
        for name, allowed in (("layer_criterion", LAYER_CRITERIA), ("hidden_criterion", HIDDEN_CRITERIA)):
            if getattr(self, name) is not None and getattr(self, name) not in allowed:
                raise bad(name, "None or one of " + ", ".join(allowed))
        if self.target_params is None:
            return
        t = self.target_params
        if isinstance(t, bool) or not (isinstance(t, int) and t > 0 or isinstance(t, str) and _SIZE.match(t)
                                       and float(_SIZE.match(t).group(1)) > 0):
            raise bad("target_params", "a positive integer or a size such as '100M' or '1.5B'")
        if "channels" in self.parts or not self.structured:
            raise bad("target_params", "a target for structured transformer axes: granularity made of neurons, "
                      "heads, hidden and layers (e.g. 'hidden+neurons+layers')", f" Got granularity "
                      f"{self.granularity!r}.")

    # --- serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningConfig":
        """Build from a mapping; unknown keys are errors that name the key and the closest valid one."""
        if not isinstance(data, dict):
            raise ConfigError(f"A pruning config must be a mapping of field names to values, got {type(data).__name__}.")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else f" Valid keys: {', '.join(known)}."
                raise ConfigError(f"Unknown pruning config key {key!r}.{hint}")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text_or_path: str | os.PathLike) -> "PruningConfig":
        """Read YAML text or a YAML file (with `yaml.safe_load`)."""
        text = str(text_or_path)
        if os.path.isfile(text):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        data = yaml.safe_load(text)
        return cls.from_dict(data or {})

    def save_pretrained(self, save_directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> str:
        """Write ``pruning_config.json`` (this config, plus ``extra`` such as the kept widths) into a folder."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        payload = {"pruning_config": self.to_dict(), **(extra or {})}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "PruningConfig":
        return cls.from_dict(read_pruning_file(directory)["pruning_config"])


def read_pruning_file(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``pruning_config.json`` of a pruned checkpoint folder."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing: {directory} is not a folder saved by hfprune. Pass the folder "
                              "that `PruningResult.save_pretrained` or `hfprune prune --output` wrote.")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); save the pruned model again.") from None
    if not isinstance(data, dict) or not isinstance(data.get("pruning_config"), dict):
        raise CheckpointError(f"{path} has no 'pruning_config' mapping; save the pruned model again.")
    return data
