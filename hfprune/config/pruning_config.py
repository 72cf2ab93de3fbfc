"""`PruningConfig`: everything that decides what a pruning run removes, in one validated, serialisable object.

Modelled on transformers' `GenerationConfig` and peft's `LoraConfig` (with its nested `LoftQConfig`): a dataclass
whose fields carry a ``help`` string (the command line is built from them), choices typed as ``Literal``, settings
that belong together in option groups (`hfprune.config.groups`), the criterion's own options in its `Options`
dataclass. Everything a config can know is checked at construction; it is saved as ``pruning_config.json`` next to
the weights, and files of the older flat shape still load (`hfprune.config.legacy`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from ..errors import CheckpointError, ConfigError, reason, shorten, shown
from ..criteria.base import CriterionOptions
from ..criteria.registry import criterion_class
from ..structure.units import STRUCTURED_GRANULARITIES, WIDTH_DEPTH_AXES, granularity_parts, nm_pattern
from ..structure.loaders import Loader
from .checks import check_config
from ..utils.rules import build_group
from .groups import (CalibrationConfig, ProtectionConfig, ReconstructionConfig, TrainingConfig, WidthDepthConfig,
                     option)
from .legacy import upgrade

CONFIG_NAME = "pruning_config.json"
LOADERS = tuple(loader.value for loader in Loader)  # how `load_pruned` rebuilds a saved model

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


GROUPS: dict[str, type] = {"calibration": CalibrationConfig, "reconstruction": ReconstructionConfig,
                           "protection": ProtectionConfig, "width_depth": WidthDepthConfig,
                           "training": TrainingConfig}


@dataclass
class PruningConfig:
    """What to prune, how to score it and how to calibrate. Invalid values raise `ConfigError` at construction."""

    # --- what is removed -------------------------------------------------------------------------------------
    criterion: str = option("magnitude", "Scoring criterion (see hfprune.available_criteria()): magnitude, random, "
                            "taylor, wanda, expressiveness, hybrid, elimination_compensation, relative_importance; "
                            "obs (structured OBS, needs reconstruction).")
    options: CriterionOptions | dict | None = option(None, "The criterion's own options, e.g. {'projections': 4} for "
                                                     "elimination_compensation (docs/criteria.md lists them); "
                                                     "default: the criterion's defaults.")
    granularity: str = option("weights", "Unit removed: 'weights' (unstructured), an N:M pattern such as '2:4', "
                              "'neurons' (FFN), 'heads' (attention), 'channels' (conv), 'hidden' (residual-stream "
                              "channels), 'layers' (whole transformer blocks), or a '+'-joined combination such as "
                              "'neurons+heads' or 'hidden+neurons+heads+layers'.")
    sparsity: float = option(0.5, "Fraction of the targeted units removed, in [0, 1).")
    head_sparsity: float | None = option(None, "Fraction of attention heads (or KV groups) removed when heads are "
                                         "pruned together with other units; defaults to `sparsity`.")
    scope: Literal["local", "global"] = option("local", "'local': the same fraction in every layer (widths stay "
                                               "uniform, the result loads with plain transformers); 'global': one "
                                               "ranking over all layers (non-uniform widths).")
    compare_within: Literal["auto", "layer", "row"] = option(
        "auto", "Unstructured selection: remove the `sparsity` fraction of each 'layer' or of each output 'row' "
        "(Wanda's rule: no row is emptied); 'auto': the criterion's own ('row' for wanda and taylor, 'layer' for "
        "the others; docs/criteria.md).")
    targets: list[str] | None = option(None, "Glob patterns of module names to prune (e.g. '*.mlp.*'); all "
                                       "prunable modules when empty.")
    ignore: list[str] = option(list(DEFAULT_IGNORE), "Glob patterns of module names never pruned (embeddings, "
                               "classifier and LM heads by default).")
    round_to: int | Literal["auto"] = option(
        "auto", "Keep unit counts a multiple of this number (e.g. 8 for tensor cores); 'auto': for language models, "
        "FFN widths in multiples of 128 and residual widths of 64 (smaller powers of two for small widths), so "
        "quantizers and GPU kernels take the result (docs/deployment.md); 1 elsewhere.")
    min_units: int = option(1, "Fewest units a layer keeps; a layer that would lose everything keeps this many and "
                            "the report says so.")
    gqa_mode: Literal["kv_groups", "query_heads"] = option(
        "kv_groups", "Heads under grouped-query attention: 'kv_groups' removes whole KV groups, 'query_heads' "
        "removes the same query heads inside every group.")
    seed: int = option(0, "Seed for random criteria, random calibration inputs and projections.")
    # --- option groups ----------------------------------------------------------------------------------------
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig,
                                           metadata={"help": "How calibration data are read and fed."})
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig, metadata={
        "help": "Weight reconstruction after selection (hfprune extension)."})
    protection: ProtectionConfig = field(default_factory=ProtectionConfig, metadata={
        "help": "Units kept whatever their score (hfprune extension)."})
    width_depth: WidthDepthConfig = field(default_factory=WidthDepthConfig, metadata={
        "help": "Residual width, depth and a parameter target."})
    training: TrainingConfig = field(default_factory=TrainingConfig, metadata={
        "help": "PruningTrainer's schedule and regulariser."})

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------------------------
    @property
    def prunes_width_depth(self) -> bool:
        """Whether this config prunes blocks or residual channels, or asks for a parameter target (the one-step
        width/depth runs of `hfprune.width_depth`)."""
        return any(p in WIDTH_DEPTH_AXES for p in self.parts) or self.width_depth.target_params is not None

    @property
    def parts(self) -> list[str]:
        """The granularity split on '+', e.g. ['neurons', 'heads']."""
        return granularity_parts(self.granularity)

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) of an N:M pattern (N weights removed in every group of M consecutive inputs), else None."""
        return nm_pattern(self.granularity)

    @property
    def structured(self) -> bool:
        return all(p in STRUCTURED_GRANULARITIES for p in self.parts)

    def sparsity_for(self, kind: str) -> float:
        """Fraction removed for one unit kind (heads, residual channels and blocks may have their own)."""
        own = {"heads": self.head_sparsity, "hidden": self.width_depth.hidden_sparsity,
               "layers": self.width_depth.layer_sparsity, "experts": self.width_depth.expert_sparsity}.get(kind)
        return self.sparsity if own is None else own

    def validate(self) -> None:
        """Check every field (type, range, choices), the criterion (its name against the registry, its options,
        the granularity and calibration mode it can run with) and the fields against each other; raise
        `ConfigError` naming the field, the value and what is allowed. Run at construction and again by every
        entry point that consumes a config, so a field changed after construction is caught before any work."""
        for name, group in GROUPS.items():
            setattr(self, name, build_group(group, getattr(self, name), f"PruningConfig.{name}"))
            getattr(self, name).__post_init__()  # fields changed after construction are checked again
        cls = criterion_class(self.criterion)
        if self.options is None:
            self.options = cls.Options()
        elif isinstance(self.options, dict):
            self.options = build_group(cls.Options, self.options, f"PruningConfig.options (of {self.criterion!r})")
        elif type(self.options) is not cls.Options:
            raise ConfigError(f"PruningConfig.options is a {type(self.options).__name__}, the options of another "
                              f"criterion; {self.criterion!r} takes {cls.Options.__name__} (or a mapping of its "
                              "fields).")
        self.options.__post_init__()
        check_config(self)
        criterion = cls(self)  # the criterion checks the granularity and its own options
        mode = self.calibration.mode
        problem = criterion.sequential_problem() if mode != "full" else None
        if problem:
            raise ConfigError(f"PruningConfig.calibration.mode={mode!r} is not allowed: {problem}.")

    # --- serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningConfig":
        """Build from a mapping (files of the older flat shape are upgraded first); unknown keys are errors that
        name the key and the closest valid one."""
        if not isinstance(data, dict):
            raise ConfigError("A pruning config must be a mapping of field names to values, got "
                              f"{type(data).__name__}.")
        data = upgrade(data)
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if not isinstance(key, str) or key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else f" Valid keys: {', '.join(known)}."
                raise ConfigError(f"Unknown pruning config key {shown(key)}.{hint}")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text_or_path: str | os.PathLike) -> "PruningConfig":
        """Read YAML text or a YAML file (with `yaml.safe_load`); every failure is a `ConfigError` that says which."""
        text = os.fspath(text_or_path)
        where = "the YAML text"
        looks_like_path = "\n" not in text and text.strip().lower().endswith((".yaml", ".yml", ".json"))
        if os.path.isfile(text):
            where = text
            try:
                with open(text, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError:
                raise ConfigError(f"{where} is not a text file (not UTF-8); pass a YAML file.") from None
        elif looks_like_path or isinstance(text_or_path, os.PathLike):
            raise ConfigError(f"Pruning config file {shown(text)} does not exist; pass an existing YAML file or "
                              "YAML text.")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{shown(where)} is not valid YAML ({reason(e)}); fix the "
                              "syntax (a mapping such as 'sparsity: 0.5').") from None
        if isinstance(data, str) and "\n" not in text and ":" not in text:
            raise ConfigError(f"{shown(text)} is neither an existing YAML file nor a YAML mapping; pass a file "
                              "path or text such as 'sparsity: 0.5'.")
        return cls.from_dict(data if data is not None else {})

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
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path} is corrupt or unreadable ({shorten(str(e))}); save the pruned model "
                              "again.") from None
    if not isinstance(data, dict) or not isinstance(data.get("pruning_config"), dict):
        raise CheckpointError(f"{path} has no 'pruning_config' mapping; save the pruned model again.")
    if data.get("loader", "transformers") not in LOADERS:
        raise CheckpointError(f"{path} names the loader {shown(data.get('loader'))}, not one of "
                              f"{', '.join(LOADERS)}; save the pruned model again.")
    return data
