"""The option groups of `PruningConfig`: settings that only make sense together, each a small dataclass.

Each group checks its own fields at construction (choices from their ``Literal`` types, ranges from `RULES`) and
is written as a nested mapping in ``pruning_config.json`` and recipes, e.g. ``calibration: {num_samples: 16}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from ..errors import ConfigError
from ..utils.rules import Rule, check_fields, integer, is_int, number, optional

SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMbBgG]?)\s*$")
FRACTION = number(0, 1, open_high=True, allowed="a number in [0, 1) (the fraction removed)")


def _is_device(value: Any) -> bool:
    try:
        torch.device(value)
    except (RuntimeError, TypeError):
        return False
    return isinstance(value, str)


def option(default: Any, help: str) -> Any:
    """A dataclass field with its help text (read by the command line and the docs)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


class OptionGroup:
    """Base of the option groups: fields checked at construction (Literal choices, type hints, `RULES`)."""

    RULES: ClassVar[dict[str, Rule]] = {}
    #: how error messages name the group, e.g. "PruningConfig.calibration"
    where: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self, self.RULES, self.where or type(self).__name__)


@dataclass
class CalibrationConfig(OptionGroup):
    """How the calibration data are read and fed."""

    RULES = {"num_samples": integer(1), "batch_size": integer(1),
             "generated_share": number(0, 1, open_low=True, open_high=True, allowed="a number in (0, 1)"),
             "seq_len": Rule(lambda v: v == "auto" or (is_int(v) and v >= 1),
                             "a positive integer, or 'auto' (the model's positions, at most 512)"),
             "device": optional(Rule(_is_device, "a torch device name such as 'cuda', 'cuda:1' or 'cpu'"))}
    where = "PruningConfig.calibration"
    #: the longest window "auto" gives (the calibration size the defaults were measured with)
    AUTO_SEQ_LEN: ClassVar[int] = 512

    num_samples: int = option(64, "Number of calibration sequences (or images).")
    seq_len: int | Literal["auto"] = option(
        "auto", "Tokens per calibration sequence (texts are packed and cut to this length). 'auto' (default): the "
        "model's positions, at most 512, settled once and saved; texts too short for one window are then "
        "calibrated as padded rows (stated in the report). An explicit length that does not fit is an error.")
    batch_size: int = option(8, "Calibration batch size.")
    source: Literal["data", "random", "generated", "mixed"] = option(
        "data", "'data': the calibration data given; 'random': data-agnostic inputs matched to the model (random "
        "token ids, Gaussian images); 'generated': text the language model samples itself from its BOS token "
        "(seeded, cached; no data needed); 'mixed': the data given plus generated text (`generated_share`).")
    generated_share: float = option(0.5, "With source 'mixed': the share of the calibration sequences the model "
                                    "generates (the rest come from the data given).")
    mode: Literal["full", "sequential", "one_pass"] = option(
        "full", "'full': whole-model forward (and backward) passes, statistics of every layer held at once; "
        "'sequential': layer-by-layer for large models, one transformer block's inputs and statistics at a time "
        "(forward-only criteria; same masks as 'full' for them); 'one_pass': with reconstruction, each block's "
        "statistics, scores, masks and refit in one pass, on the inputs the pruned and refit blocks before it give "
        "(SparseGPT's order; the calibration pass of the other modes is saved). See docs/scaling.md.")
    offload: Literal["none", "cpu", "disk"] = option(
        "none", "With mode 'sequential' or 'one_pass': where the transformer blocks wait while another block is "
        "calibrated and refit. 'none': in place; 'cpu': in CPU memory, each block moved to `device` for its turn (a model larger "
        "than the accelerator); 'disk': written to a temporary folder in Accelerate's offload format and read "
        "back block by block. See docs/scaling.md.")
    device: str | None = option(None, "With offload 'cpu' or 'disk': the execution device each block is moved to "
                                "(default: 'cuda' when available, else 'cpu').")

    @property
    def data_free(self) -> bool:
        """Whether the calibration inputs are made here (random or generated), so no data need be given."""
        return self.source in ("random", "generated")


@dataclass
class ReconstructionConfig(OptionGroup):
    """Weight reconstruction after selection (hfprune extension, `hfprune.reconstruction.refit`)."""

    RULES = {"cg_steps": integer(0),
             "damp": number(0, allowed="a number >= 0 (a fraction of the mean diagonal, e.g. 0.01)")}
    where = "PruningConfig.reconstruction"

    method: Literal["auto", "none", "weights"] = option(
        "auto", "'weights' (refit the kept weights of each layer by least squares to the dense layer's output on "
        "the calibration inputs, block by block; masks unchanged), 'none', or 'auto' (default: 'weights' when the "
        "run has calibration data and removes weights, neurons or heads; else 'none').")
    target: Literal["layer", "dense"] = option(
        "layer", "'layer' (each layer refit to the unpruned layer's output on the inputs it now receives, as "
        "SparseGPT does) or 'dense' (to the dense model's output on the dense inputs; measured worse, "
        "docs/benchmarks.md).")
    cg_steps: int = option(20, "Unstructured / N:M masks: conjugate-gradient steps after the OBS sweep, toward the "
                           "exact per-row least squares (0 = OBS alone).")
    damp: float = option(0.01, "Dampening added to the input statistics' diagonal, as a fraction of its mean "
                         "(keeps dead or duplicated inputs solvable).")


@dataclass
class ProtectionConfig(OptionGroup):
    """Units kept whatever their score (hfprune extension, `hfprune.steps.protection`)."""

    RULES = {"threshold": optional(number(1, open_low=True,
                                          allowed="a number > 1 (ratio to the group median, e.g. 20)"))}
    where = "PruningConfig.protection"
    #: the default threshold of each mode
    THRESHOLDS: ClassVar[dict[str, float]] = {"outliers": 20.0, "energy": 2.0}

    mode: Literal["auto", "none", "outliers", "energy"] = option(
        "auto", "'none'; 'outliers' (never remove units whose activation peak is `threshold` x their layer's "
        "median: massive activations); 'energy' (never remove units whose output energy E[a^2] ||W_col||^2 is "
        "`threshold` x the median); 'auto' (default: 'energy' for neurons and heads when the run has calibration "
        "data, else 'none').")
    threshold: float | None = option(None, "Ratio to the group median above which a unit is protected (> 1); "
                                     "default 20 for 'outliers', 2 for 'energy'.")


@dataclass
class WidthDepthConfig(OptionGroup):
    """Residual width (``hidden``), depth (``layers``), MoE experts (``experts``) and a parameter target
    (`hfprune.width_depth`)."""

    RULES = {"hidden_sparsity": optional(FRACTION), "layer_sparsity": optional(FRACTION),
             "expert_sparsity": optional(FRACTION), "search_refits": integer(0),
             "target_params": optional(Rule(lambda v: (is_int(v) and v > 0)
                                            or (isinstance(v, str) and bool(SIZE_PATTERN.match(v))
                                                and float(SIZE_PATTERN.match(v).group(1)) > 0),
                                            "a positive integer or a size such as '100M' or '1.5B'"))}
    where = "PruningConfig.width_depth"

    target_params: int | str | None = option(None, "Target total parameter count (e.g. 100000000 or '100M'): the "
                                             "per-axis fractions are chosen by a search scored on calibration "
                                             "loss (the sparsity fields are then ignored); never above, within 1% (or one FFN width step where "
                                             "round_to makes steps coarser).")
    hidden_sparsity: float | None = option(None, "Fraction of residual-stream channels removed (granularity "
                                           "'hidden'); defaults to `sparsity`.")
    layer_sparsity: float | None = option(None, "Fraction of transformer blocks removed (granularity 'layers', "
                                          "rounded to the nearest block count); defaults to `sparsity`.")
    expert_sparsity: float | None = option(None, "Fraction of routed experts removed in every MoE block "
                                           "(granularity 'experts', rounded to a whole count); defaults to "
                                           "`sparsity`.")
    expert_score: Literal["reap", "frequency"] = option(
        "reap", "Expert score for 'experts': reap (router-weighted expert output norm, Lasby et al. 2025) or "
        "frequency (how often the router picks the expert).")
    block_score: Literal["block_influence", "skip_loss", "magnitude", "random"] = option(
        "block_influence", "Block score for 'layers': block_influence (ShortGPT), skip_loss, magnitude or random.")
    channel_score: Literal["minitron", "magnitude", "random"] = option(
        "minitron", "Residual-channel score for 'hidden': minitron (activations), magnitude or random.")
    search_refits: int = option(4, "With target_params: how many of the best screened candidates are refit and "
                                "scored again after reconstruction (then the winner's grid neighbours); 0 = choose "
                                "by the screen's loss without refit.")
    rescale_norms: bool = option(True, "After removing residual channels, rescale each RMSNorm weight by the "
                                 "measured RMS change of its input (hfprune extension).")

    @property
    def target_params_count(self) -> int | None:
        """`target_params` as an integer ('100M' -> 100000000)."""
        if self.target_params is None or isinstance(self.target_params, int):
            return self.target_params
        num, unit = SIZE_PATTERN.match(str(self.target_params)).groups()  # type: ignore[union-attr]
        return int(round(float(num) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}[unit.lower()]))


@dataclass
class TrainingConfig(OptionGroup):
    """When `PruningTrainer` prunes and what it adds to the loss (ignored by one-shot `prune()`)."""

    RULES = {"start_step": integer(0), "end_step": optional(integer(0)), "pruning_steps": integer(1),
             "regularizer_weight": number(0)}
    where = "PruningConfig.training"

    schedule: Literal["one_shot", "iterative", "cubic"] = option(
        "one_shot", "'one_shot' (before training), 'iterative' (`pruning_steps` equal steps between start and "
        "end), 'cubic' (Zhu & Gupta gradual).")
    start_step: int = option(0, "Optimizer step of the first pruning step.")
    end_step: int | None = option(None, "Optimizer step at which the final sparsity is reached (iterative, cubic).")
    pruning_steps: int = option(1, "Number of pruning steps (iterative) or mask updates (cubic).")
    keep_masks: bool = option(False, "Keep masks at the end of training instead of compacting the model.")
    regularizer: Literal["relative_importance", "group_lasso"] | None = option(
        None, "Loss term added while training: 'relative_importance' or 'group_lasso'.")
    regularizer_weight: float = option(1e-4, "Weight of the regulariser in the loss.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.end_step is not None and self.end_step < self.start_step:
            raise ConfigError(f"{self.where}.end_step={self.end_step!r} is not allowed: an integer >= start_step "
                              f"({self.start_step}), or None.")
