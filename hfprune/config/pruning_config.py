"""`PruningConfig`: everything that decides what a pruning run removes, in one validated, serialisable object.

Modelled on transformers' `GenerationConfig` and peft's `LoraConfig`: a dataclass whose fields carry a ``help``
string (so `HfArgumentParser` can build the command line from it), checked at construction, saved as
``pruning_config.json`` next to the weights.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import CheckpointError, ConfigError, reason, shorten, shown
from .checks import HIDDEN_CRITERIA, LAYER_CRITERIA, NM_PATTERN, SIZE_PATTERN, STRUCTURED_GRANULARITIES, \
    WIDTH_DEPTH_AXES, check_config

CONFIG_NAME = "pruning_config.json"
LOADERS = ("transformers", "hfprune", "state_dict")  # how `load_pruned` rebuilds a saved model

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
                        "elimination_compensation, relative_importance; obs (structured OBS, needs "
                        "reconstruction='weights').")
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
    compare_within: str = _f("auto", "Unstructured selection: remove the `sparsity` fraction of each 'layer' or of each "
                             "output 'row' (Wanda's rule: no row is emptied); 'auto' (default): the criterion's "
                             "own, 'row' for wanda and taylor (for taylor an hfprune choice, measured: "
                             "docs/criteria.md; with scope='global', taylor ranks globally), 'layer' for the others.")
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
    taylor_form: str = _f("auto", "Taylor: 'squared' (mean over batches of (w * dL/dw)^2, Molchanov et al. 2019), "
                          "'absolute' (|w * mean dL/dw|, Molchanov et al. 2017, as Torch-Pruning's Taylor), or 'auto' "
                          "(default: 'squared' for single weights and N:M, 'absolute' for units; measured, "
                          "docs/criteria.md).")
    norm: int = _f(1, "Norm of `magnitude` (and of hybrid's default importance): 1 or 2.")
    alpha: float = _f(0.5, "Hybrid: weight of expressiveness against importance, in [0, 1].")
    hybrid_importance: str = _f("magnitude", "Hybrid: the importance criterion mixed with expressiveness.")
    hybrid_form: str = _f("rank", "Hybrid: 'rank' (convex mix of normalised ranks) or 'product' "
                          "(E^alpha * I^(1-alpha)).")
    head_pattern: str = _f("output", "Expressiveness of a head: 'output' (mean over its output dimensions).")
    ec_output: str = _f("network", "Elimination-compensation: 'network' (gradients of the network output, "
                        "Hutchinson projections for many outputs), 'loss' (loss gradient, cheaper) or 'layer' "
                        "(the layer's own output: one forward pass).")
    ec_projections: int = _f(2, "Elimination-compensation: random output projections for the Hutchinson "
                             "estimate when the output has many dimensions (each is one backward pass; 2 measured "
                             "as good as 4 on SmolLM2 at 1.94x Taylor's statistics cost instead of 2.89x).")
    compensate: bool = _f(True, "Elimination-compensation: add the optimal bias perturbation after removal "
                          "(enables biases in the config where the family has them).")
    ri_k: float = _f(0.0, "Relative importance: score = mu + k * sigma of each weight's contribution share.")
    ri_threshold: str = _f("sparsity", "Relative importance: 'sparsity' (remove the `sparsity` fraction) or "
                           "'tau' (remove weights whose score is below tau / fan_in).")
    ri_tau: float = _f(1.0, "Relative importance: tau of the 'tau' threshold rule.")
    # --- after selection (hfprune extensions) ---------------------------------------------------------------------
    reconstruction: str = _f("auto", "After selection: 'weights' (refit the kept weights of each layer by least "
                             "squares to the dense layer's output on the calibration inputs, block by block; masks "
                             "unchanged), 'none', or 'auto' (default: 'weights' when the run has calibration data and "
                             "removes weights, neurons or heads; else 'none'). See hfprune.reconstruction.refit.")
    reconstruction_cg_steps: int = _f(20, "Reconstruction of unstructured / N:M masks: conjugate-gradient steps after "
                                      "the OBS sweep, toward the exact per-row least squares (0 = OBS alone).")
    reconstruction_target: str = _f("layer", "Reconstruction: 'layer' (each layer refit to the unpruned layer's output "
                                    "on the inputs it now receives, as SparseGPT does) or 'dense' (to the dense "
                                    "model's output on the dense inputs, which also corrects the errors of earlier "
                                    "blocks; measured worse on SmolLM2 FFN neurons, docs/benchmarks.md).")
    reconstruction_damp: float = _f(0.01, "Reconstruction: dampening added to the input statistics' diagonal, as a "
                                    "fraction of its mean (keeps dead or duplicated inputs solvable).")
    protect: str = _f("auto", "Before selection: 'none'; 'outliers' (never remove units whose activation peak is "
                      "`protect_threshold` x their layer's median: massive activations); 'energy' (never remove "
                      "units whose output energy E[a^2] ||W_col||^2 is `protect_threshold` x the median); 'auto' "
                      "(default: 'energy' for neurons and heads when the run has calibration data, else 'none'). "
                      "See hfprune.steps.protection.")
    protect_threshold: float | None = _f(None, "Protection: ratio to the group median (activation peak for "
                                         "'outliers', output energy for 'energy') above which a unit is protected "
                                         "(> 1); default 20 for 'outliers', 2 for 'energy'.")
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
    def width_depth(self) -> bool:
        """Whether this config prunes blocks or residual channels, or asks for a parameter target (the one-step
        width/depth runs of `hfprune.width_depth.plan`)."""
        return any(p in WIDTH_DEPTH_AXES for p in self.parts) or self.target_params is not None

    @property
    def parts(self) -> list[str]:
        """The granularity split on '+', e.g. ['neurons', 'heads']."""
        return [p.strip() for p in str(self.granularity).split("+") if p.strip()]

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) of an N:M pattern (N weights removed in every group of M consecutive inputs), else None."""
        m = NM_PATTERN.match(str(self.granularity))
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
        num, unit = SIZE_PATTERN.match(str(self.target_params)).groups()
        return int(round(float(num) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}[unit.lower()]))

    def validate(self) -> None:
        """Check every field (type, range, finiteness, choices) and the fields against each other; raise
        `ConfigError` naming the field, the value and what is allowed. Run at construction and again by every entry
        point that consumes a config, so a field changed after construction is caught before any work."""
        check_config(self)

    # --- serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningConfig":
        """Build from a mapping; unknown keys are errors that name the key and the closest valid one."""
        if not isinstance(data, dict):
            raise ConfigError("A pruning config must be a mapping of field names to values, got "
                              f"{type(data).__name__}.")
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
