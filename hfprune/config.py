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

STRUCTURED_GRANULARITIES = ("neurons", "heads", "channels")
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
                          "'neurons' (FFN), 'heads' (attention), 'channels' (conv), or a '+'-joined combination "
                          "such as 'neurons+heads'.")
    sparsity: float = _f(0.5, "Fraction of the targeted units removed, in [0, 1).")
    head_sparsity: float | None = _f(None, "Fraction of attention heads (or KV groups) removed when heads are "
                                     "pruned together with other units; defaults to `sparsity`.")
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
        if kind == "heads" and self.head_sparsity is not None:
            return self.head_sparsity
        return self.sparsity

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
                    raise bad("granularity", "weights, N:M (e.g. 2:4), neurons, heads, channels, or a '+' "
                              "combination of neurons, heads and channels")
            if len(set(parts)) != len(parts):
                raise bad("granularity", "each unit kind at most once")
        for name in ("sparsity", "head_sparsity"):
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
