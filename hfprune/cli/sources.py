"""Resolve the MODEL and data arguments: packaged examples, local folders and files, Hub ids.

Every missing path is reported before a model is loaded, and a Hub id that cannot be fetched (no network,
``HF_HUB_OFFLINE``) becomes one line that says to pass a local folder.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import CalibrationError, PruningError, reason
from .common import UsageError

TASKS = {"causal-lm": "AutoModelForCausalLM", "sequence-classification": "AutoModelForSequenceClassification",
         "base": "AutoModel"}
TEXT_EXAMPLES = ("example:lee_background", "example:lee_test", "example:polarity")
MODEL_EXAMPLES = ("example:minilm", "example:smollm2", "example:mnist-mlp", "example:digits-cnn")
VISION_DATA = {"example:mnist": "mnist-mlp", "example:digits": "digits-cnn"}
FILE_TYPES = {".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "json"}


@dataclass
class LoadedModel:
    """A model ready for `prune`, with its tokenizer (text) or example data (vision examples)."""

    model: torch.nn.Module
    tokenizer: Any = None
    vision: Any = None  # a `VisionExample` for example:mnist-mlp / example:digits-cnn
    task: str = "base"


def _looks_like_path(name: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def check_model_arg(name: str, task: str | None) -> None:
    """Fail fast (before any loading) on a missing folder, an unknown example or task."""
    if task is not None and task not in TASKS:
        raise UsageError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    if name.startswith("example:"):
        if name not in MODEL_EXAMPLES:
            raise UsageError(f"Unknown example model {name!r}; choose one of {', '.join(MODEL_EXAMPLES)}.")
    elif os.path.isfile(name):
        raise UsageError(f"Model {name!r} is a file; pass the folder that holds config.json and the weights.")
    elif _looks_like_path(name) and not os.path.isdir(name):
        raise UsageError(f"Model folder {name!r} does not exist; pass a folder saved with save_pretrained, a Hub id, "
                         "or example:minilm / example:smollm2.")


def _task_of(config: Any, task: str | None) -> str:
    if task:
        return task
    arch = (getattr(config, "architectures", None) or [""])[0]
    if arch.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    return "sequence-classification" if arch.endswith("ForSequenceClassification") else "base"


def _from_pretrained(name: str, task: str | None, allow_pickle: bool = False) -> LoadedModel:
    import transformers

    pickled = False
    if os.path.isdir(name):  # every file checked before transformers reads any (raw errors name no fix)
        from ..checkpoint.loading import check_model_folder

        config, _, pickled, _ = check_model_folder(name, allow_pickle)
    else:
        try:
            config = transformers.AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise PruningError(f"Could not load {name!r} from the Hugging Face Hub (offline or unknown id: "
                               f"{reason(e)}). Pass a local "
                               "folder that holds config.json and the weights, or an example model such as "
                               "example:minilm.") from None
    task = _task_of(config, task)
    safe = {"use_safetensors": not pickled} if os.path.isdir(name) else {}
    model = getattr(transformers, TASKS[task]).from_pretrained(name, dtype=torch.float32, **safe)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return LoadedModel(model.eval(), tokenizer, task=task)


def load_model(name: str, task: str | None = None, train_epochs: int = 3, seed: int = 0,
               allow_pickle: bool = False) -> LoadedModel:
    """Load ``name``: an example (``example:minilm`` ...), a local folder, or a Hub id. Seeded, so a newly
    initialised head (e.g. a classifier on a bare encoder) is the same on every run. A local folder's pickled
    weights need ``allow_pickle``."""
    check_model_arg(name, task)
    torch.manual_seed(seed)
    if name in ("example:mnist-mlp", "example:digits-cnn"):
        from ..examples.vision import load_vision_example

        ex = load_vision_example(name.split(":", 1)[1], train_epochs, seed)
        return LoadedModel(ex.model, vision=ex, task="image-classification")
    if name == "example:minilm":
        from ..examples import load_minilm

        task = task or "base"
        model, tok = load_minilm(TASKS[task])
        return LoadedModel(model, tok, task=task)
    if name == "example:smollm2":
        from ..examples import load_smollm2

        model, tok = load_smollm2()
        return LoadedModel(model, tok, task="causal-lm")
    return _from_pretrained(name, task, allow_pickle)


def check_data_arg(spec: str | None) -> None:
    """Fail fast on a data file that does not exist or has a type we cannot read."""
    if spec is None or spec == "random" or spec.startswith("example:"):
        if spec and spec.startswith("example:") and spec not in TEXT_EXAMPLES and spec not in VISION_DATA:
            raise UsageError(f"Unknown example data {spec!r}; choose one of "
                             f"{', '.join(TEXT_EXAMPLES + tuple(VISION_DATA))}.")
        return
    ext = os.path.splitext(spec)[1].lower()
    if os.path.exists(spec) or ext in FILE_TYPES or _looks_like_path(spec):
        if not os.path.isfile(spec):
            raise UsageError(f"Data file {spec!r} does not exist; pass a .txt (one text per line), .csv, .json or "
                             ".jsonl file, 'random', or example:lee_background.")
        if ext not in FILE_TYPES:
            raise UsageError(f"Cannot read {spec!r}: use a .txt, .csv, .json or .jsonl file.")


def _example_texts(spec: str) -> tuple[list[str], list[int] | None]:
    from ..examples import lee_texts, polarity_sentences

    if spec == "example:polarity":
        texts, labels = polarity_sentences()
        order = list(range(len(texts)))
        random.Random(0).shuffle(order)  # the file is sorted by label; mix so any prefix has both classes
        return [texts[i] for i in order], [labels[i] for i in order]
    return lee_texts("background" if spec == "example:lee_background" else "test"), None


def load_rows(spec: str, text_column: str = "text", label_column: str | None = None) -> tuple[list[str], list | None]:
    """Texts (and labels when ``label_column`` is given) from an example, a local file or a Hub dataset
    (``name``, ``name:config`` or ``name:config:split``)."""
    check_data_arg(spec)
    if spec.startswith("example:"):
        texts, labels = _example_texts(spec)
        if label_column and labels is None:
            raise UsageError(f"{spec} has no labels; use example:polarity or a file with a {label_column!r} column.")
        return texts, labels if label_column else None
    ext = os.path.splitext(spec)[1].lower()
    if ext == ".txt":
        try:
            with open(spec, encoding="utf-8") as f:
                texts = [line.strip() for line in f if line.strip()]
        except UnicodeDecodeError:
            raise CalibrationError(f"{spec} is not a UTF-8 text file (binary data?); pass one text per line in "
                                   "UTF-8.") from None
        if any("\x00" in t for t in texts):
            raise CalibrationError(f"{spec} holds NUL bytes: it is a binary file, not text. Pass one text per line.")
        if label_column:
            raise UsageError(f"{spec} is plain text and has no labels; use a CSV or JSONL file with a "
                             f"{label_column!r} column.")
        labels = None
    else:
        rows = _load_dataset(spec, ext)
        columns = [c for c in (text_column, label_column) if c]
        missing = [c for c in columns if c not in rows.column_names]
        if missing:
            raise UsageError(f"{spec} has no column {missing[0]!r}; its columns are {rows.column_names}. Pass "
                             "--text-column (or text_column / label_column in a recipe).")
        texts = [str(t) for t in rows[text_column] if t is not None and str(t).strip()]
        labels = list(rows[label_column]) if label_column else None
    if not texts:
        raise CalibrationError(f"{spec} holds no text: the data set is empty. Pass a file with at least one "
                               "non-blank line or row.")
    return texts, labels


def _load_dataset(spec: str, ext: str) -> Any:
    import datasets

    if ext in FILE_TYPES:
        if os.path.getsize(spec) == 0:
            raise CalibrationError(f"{spec} is empty; pass a file with at least one row.")
        try:
            return datasets.load_dataset(FILE_TYPES[ext], data_files=spec, split="train")
        except Exception as e:  # pyarrow / datasets raise many types for a malformed or binary file
            raise CalibrationError(f"{spec} is not a readable {ext[1:].upper()} file ({type(e).__name__}: "
                                   f"{reason(e)}); check its format (UTF-8, one record per line for JSONL, a "
                                   "header row for CSV).") from None
    name, config, split = (spec.split(":") + [None, None])[:3]
    try:
        return datasets.load_dataset(name, config, split=split or "train")
    except Exception as e:  # datasets raises many types for a missing or unreachable dataset
        raise PruningError(f"Could not load the Hub dataset {spec!r} ({type(e).__name__}). Without network access, "
                           "pass a local .txt, .csv, .json or .jsonl file.") from None


def calibration_input(spec: str | None, loaded: LoadedModel, text_column: str) -> Any:
    """What `prune(calibration_data=...)` takes for ``spec``: texts, an image tensor, or 'random'."""
    if spec is None or spec == "random":
        return "random"
    if loaded.vision is not None:
        if VISION_DATA.get(spec) != loaded.vision.name:
            raise UsageError(f"example:{loaded.vision.name} is calibrated with its own images: use "
                             f"{[k for k, v in VISION_DATA.items() if v == loaded.vision.name][0]} or 'random'.")
        return loaded.vision.train_x
    if spec in VISION_DATA:
        raise UsageError(f"{spec} holds images; the model {type(loaded.model).__name__} takes text.")
    return load_rows(spec, text_column)[0]
