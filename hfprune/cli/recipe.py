"""Recipes: one YAML file that says which model, how to prune, on what data, whether to fine-tune, and where the
result goes. The whole recipe is validated before any work, so a typo fails in a second, not after calibration.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..config.pruning_config import PruningConfig
from ..utils.rules import NAME, Rule, check_fields, integer, is_number, number, optional
from ..errors import ConfigError, reason, shown
from .common import UsageError
from .sources import check_data_arg, check_model_arg


@dataclass
class ModelSection:
    name: str = field(metadata={"help": "Hub id, local folder, or example:minilm | example:smollm2 | "
                                        "example:mnist-mlp | example:digits-cnn."})
    task: str | None = field(default=None, metadata={"help": "causal-lm, sequence-classification or base; read "
                                                             "from the model's config when empty."})
    train_epochs: int = field(default=3, metadata={"help": "Vision examples only: epochs of training before "
                                                           "pruning (from the pruning seed)."})
    allow_pickle: bool = field(default=False, metadata={"help": "Accept a folder whose weights are pickles "
                                                                "(pytorch_model.bin), read with "
                                                                "torch.load(weights_only=True); only for folders "
                                                                "you trust."})


@dataclass
class CalibrationSection:
    data: str | None = field(default=None, metadata={"help": "random, a .txt/.csv/.json/.jsonl file, a Hub "
                                                             "dataset (name[:config[:split]]) or example:NAME."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text in CSV/JSON data."})


@dataclass
class TrainingSection:
    dataset: str = field(metadata={"help": "Labelled training data: a CSV/JSON/JSONL file or example:polarity."})
    text_column: str = field(default="text", metadata={"help": "Text column of the training data."})
    label_column: str = field(default="label", metadata={"help": "Label column of the training data."})
    eval_fraction: float = field(default=0.2, metadata={"help": "Share of the rows held out for evaluation."})
    max_length: int = field(default=128, metadata={"help": "Tokens per training example."})
    args: dict[str, Any] = field(default_factory=dict, metadata={"help": "transformers TrainingArguments fields."})


@dataclass
class RecoverySection:
    """Training after one-shot pruning (RecoveryTrainer): own keys here, `RecoveryConfig` keys in ``settings``,
    `TrainingArguments` keys in ``args`` (both flat in the YAML)."""

    data: str | None = field(default=None, metadata={"help": "Training text for recovery: example:lee_background "
                                                             "or a .txt/.csv/.json/.jsonl file (packed into "
                                                             "seq_len-token rows)."})
    generated_share: float = field(default=0.0, metadata={"help": "Share of the training rows the unpruned model "
                                                                  "generates itself (self-data distillation; "
                                                                  "seeded, cached); 1: no data needed (set "
                                                                  "max_tokens)."})
    text_column: str = field(default="text", metadata={"help": "Text column of CSV/JSON data."})
    seq_len: int = field(default=256, metadata={"help": "Tokens per training row."})
    eval_data: str | None = field(default=None, metadata={"help": "Held-out text for perplexity during training "
                                                                  "(TrainingArguments eval_strategy); none when empty."})
    eval_tokens: int = field(default=2048, metadata={"help": "Most held-out tokens evaluated during training."})
    settings: Any = field(default=None, metadata={"help": "RecoveryConfig fields."})
    args: dict[str, Any] = field(default_factory=dict, metadata={"help": "transformers TrainingArguments fields."})


@dataclass
class EvaluationSection:
    data: str | None = field(default=None, metadata={"help": "Evaluation data; the model's packaged default "
                                                             "(example:lee_test, example:polarity) when empty."})
    text_column: str = field(default="text", metadata={"help": "Text column of the evaluation data."})
    label_column: str = field(default="label", metadata={"help": "Label column (classifiers)."})
    max_samples: int = field(default=200, metadata={"help": "Most evaluation texts used."})
    seq_len: int = field(default=512, metadata={"help": "Perplexity window (non-overlapping windows; 2048 is the "
                                                          "WikiText-2 protocol of the pruning papers)."})
    max_tokens: int = field(default=4096, metadata={"help": "Perplexity token budget (0: every token of the texts)."})
    tasks: list[str] | None = field(default=None, metadata={
        "help": "lm-evaluation-harness tasks measured before and after (e.g. [hfprune_polarity, arc_easy]); needs "
                'pip install "hfprune[eval]". hfprune_polarity is packaged and runs offline.'})
    include_path: str | None = field(default=None, metadata={"help": "Folder of lm-eval task YAML files."})
    limit: int | None = field(default=None, metadata={"help": "First N documents of each task (all when empty)."})
    num_fewshot: int | None = field(default=None, metadata={"help": "Few-shot examples (the task's default when "
                                                                    "empty)."})


@dataclass
class OutputSection:
    dir: str | None = field(default=None, metadata={"help": "Folder the pruned model is saved to; nothing is "
                                                            "saved when empty."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output folder."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo id to push the saved folder to."})
    private: bool | None = field(default=None, metadata={"help": "Create the Hub repo as private."})


@dataclass
class Recipe:
    model: ModelSection
    pruning: PruningConfig
    calibration: CalibrationSection = field(default_factory=CalibrationSection)
    training: TrainingSection | None = None
    evaluation: EvaluationSection | None = None
    recovery: RecoverySection | None = None
    output: OutputSection = field(default_factory=OutputSection)


_PATH = Rule(NAME.ok, "a non-empty path")
# Values whose type hint says too little; every other key is checked against its field's type hint.
_RULES: dict[str, dict[str, Rule]] = {
    "model": {"name": Rule(NAME.ok, "a Hub id, a local folder or example:NAME (a non-empty string)"),
              "train_epochs": integer(0)},
    "calibration": {"data": optional(_PATH), "text_column": NAME},
    "training": {"dataset": _PATH, "text_column": NAME, "label_column": NAME, "max_length": integer(1),
                 "eval_fraction": number(0, 1, open_low=True, open_high=True)},
    "evaluation": {"data": optional(_PATH), "text_column": NAME, "label_column": NAME, "max_samples": integer(1),
                   "seq_len": integer(1), "max_tokens": integer(0), "include_path": optional(_PATH),
                   "limit": optional(integer(1)), "num_fewshot": optional(integer(0))},
    "output": {"dir": optional(Rule(NAME.ok, "a non-empty folder path (leave it out to save nothing)")),
               "push_to_hub": optional(NAME)},
}

_SECTIONS = {"model": ModelSection, "pruning": PruningConfig, "calibration": CalibrationSection,
             "training": TrainingSection, "evaluation": EvaluationSection, "output": OutputSection,
             "recovery": RecoverySection}


def _unknown(where: str, key: Any, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else f" Valid keys: {', '.join(known)}."
    return ConfigError(f"Unknown key {where}{shown(key)} in the recipe.{hint}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"Recipe section {where!r} must be a mapping of keys to values, got "
                          f"{type(value).__name__}.")
    return value


def _section(cls: type, data: dict[str, Any], where: str) -> Any:
    known = [f.name for f in dataclasses.fields(cls) if f.name not in ("args", "settings")]
    for key in data:
        if not isinstance(key, str) or key not in known:
            raise _unknown(f"{where}.", key, known)
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    for name in required:
        if data.get(name) is None:
            help_text = cls.__dataclass_fields__[name].metadata["help"]
            raise ConfigError(f"Recipe section {where!r} needs {name!r}: {help_text}")
    section = cls(**data)
    check_fields(section, _RULES.get(where, {}), f"Recipe key {where}")
    return section


def _training(data: dict[str, Any]) -> TrainingSection:
    """Own keys go to `TrainingSection`; every other key must be a `TrainingArguments` field."""
    from transformers import TrainingArguments

    own = {f.name for f in dataclasses.fields(TrainingSection)} - {"args"}
    targs = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
    args = {k: v for k, v in data.items() if k not in own}
    for key in args:
        if not isinstance(key, str) or key not in targs:
            raise _unknown("training.", key, sorted(own) + targs)
    section = _section(TrainingSection, {k: v for k, v in data.items() if k in own}, "training")
    section.args = args
    return section


def _recovery(data: dict[str, Any]) -> RecoverySection:
    """Own keys go to `RecoverySection`, `RecoveryConfig` keys to its settings, the rest must be
    `TrainingArguments` fields; all checked now."""
    from transformers import TrainingArguments

    from ..trainer.recovery import RecoveryConfig

    own = {f.name for f in dataclasses.fields(RecoverySection)} - {"args", "settings"}
    rec = {f.name for f in dataclasses.fields(RecoveryConfig)}
    targs = [f.name for f in dataclasses.fields(TrainingArguments) if f.init]
    for key in data:
        if key not in own and key not in rec and key not in targs:
            raise _unknown("recovery.", key, sorted(own | rec) + targs)
    section = _section(RecoverySection, {k: v for k, v in data.items() if k in own}, "recovery")
    section.settings = RecoveryConfig(**{k: v for k, v in data.items() if k in rec})
    section.args = {k: v for k, v in data.items() if k not in own and k not in rec}
    return section


def _check_recovery_data(section: RecoverySection) -> None:
    share = section.generated_share
    if not is_number(share) or not 0 <= share <= 1:
        raise ConfigError(f"recovery.generated_share={share!r} is not allowed: a number in [0, 1] (the share of "
                          "training rows the unpruned model generates).")
    if section.data is None and share < 1:
        raise ConfigError("recovery.data is missing: give training text (e.g. example:lee_background), or set "
                          "recovery.generated_share: 1 (the unpruned model writes all of it) with max_tokens.")
    if share == 1 and section.data is not None:
        raise ConfigError("recovery.data is unused with recovery.generated_share: 1 (the unpruned model writes every "
                          "row); remove it, or lower generated_share to mix it in.")
    if share == 1 and section.settings.max_tokens is None:
        raise ConfigError("recovery.generated_share: 1 needs recovery.max_tokens (how much text to generate).")


def parse_recipe(data: Any) -> Recipe:
    """Validate a loaded recipe mapping (every section, key and value) and return it as a `Recipe`."""
    data = _mapping(data, "recipe")
    for key in data:
        if not isinstance(key, str) or key not in _SECTIONS:
            raise _unknown("", key, list(_SECTIONS))
    if "model" not in data:
        raise ConfigError("The recipe needs a 'model' section with a 'name' (e.g. model: {name: example:minilm}).")
    sections = {k: _mapping(data.get(k), k) for k in _SECTIONS}
    recipe = Recipe(
        model=_section(ModelSection, sections["model"], "model"),
        pruning=PruningConfig.from_dict(sections["pruning"]),
        calibration=_section(CalibrationSection, sections["calibration"], "calibration"),
        training=_training(sections["training"]) if data.get("training") is not None else None,
        evaluation=_section(EvaluationSection, sections["evaluation"], "evaluation")
        if "evaluation" in data else None,
        output=_section(OutputSection, sections["output"], "output"),
        recovery=_recovery(sections["recovery"]) if data.get("recovery") is not None else None,
    )
    if recipe.recovery and recipe.training:
        raise ConfigError("A recipe has either 'training' (prune while fine-tuning a classifier) or 'recovery' "
                          "(prune one-shot, then train the language model back), not both.")
    check_model_arg(recipe.model.name, recipe.model.task)
    check_data_arg(recipe.calibration.data)
    if recipe.evaluation:
        check_data_arg(recipe.evaluation.data)
    if recipe.training:
        check_data_arg(recipe.training.dataset)
    if recipe.recovery:
        _check_recovery_data(recipe.recovery)
        check_data_arg(recipe.recovery.data)
        check_data_arg(recipe.recovery.eval_data)
    return recipe


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read a recipe file with `yaml.safe_load` and validate it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"Recipe {path!r} does not exist; pass a YAML file such as recipes/mnist-mlp-ec.yaml.")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except UnicodeDecodeError:
        raise ConfigError(f"Recipe {path} is not a text file (not UTF-8); pass a YAML recipe.") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"Recipe {path} is not valid YAML: {reason(e)}.") from None
    except OSError as e:
        raise UsageError(f"Recipe {path} cannot be read ({e.strerror}).") from None
    return parse_recipe(data)
