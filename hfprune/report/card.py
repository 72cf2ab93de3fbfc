"""Model cards for pruned checkpoints, rendered from ``model_cards/`` with huggingface_hub's `ModelCard`.

Every number comes from the folder's ``pruning_report.json`` and every setting from its ``pruning_config.json``,
so the card can be regenerated from a saved folder alone and never disagrees with the files beside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..config.pruning_config import PruningConfig, read_pruning_file
from ..criteria import criterion_class
from ..errors import CheckpointError
from ..structure.loaders import Loader
from .pruning_report import REPORT_NAME, PruningReport
from .plot import PLOT_NAME, plot_kept_units

CARD_NAME = "README.md"
TEMPLATE_PATH = Path(__file__).parent.parent / "model_cards" / "pruned_model_card.md"
# The load snippet names this id until `push_to_hub` replaces it with the repo id (the folder has no name yet
# when the card is written: it is still a temporary folder).
PLACEHOLDER_ID = "path/to/pruned-model"

PIPELINE_TAGS = {
    "AutoModel": "feature-extraction",
    "AutoModelForCausalLM": "text-generation",
    "AutoModelForMaskedLM": "fill-mask",
    "AutoModelForSeq2SeqLM": "text2text-generation",
    "AutoModelForSequenceClassification": "text-classification",
    "AutoModelForTokenClassification": "token-classification",
    "AutoModelForQuestionAnswering": "question-answering",
    "AutoModelForImageClassification": "image-classification",
    "AutoModelForObjectDetection": "object-detection",
    "AutoModelForSemanticSegmentation": "image-segmentation",
    "AutoModelForAudioClassification": "audio-classification",
    "AutoModelForCTC": "automatic-speech-recognition",
    "AutoModelForSpeechSeq2Seq": "automatic-speech-recognition",
    "AutoModelForImageTextToText": "image-text-to-text",
}

SELECTION_OPTIONS = ("scope", "compare_within", "head_sparsity", "round_to", "min_units", "gqa_mode", "targets", "ignore")


def _hub_id(name: str | None) -> str | None:
    """``name`` if it can be a Hub model id (not a local folder), else None: the Hub rejects paths as base_model."""
    if not name or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _license_of(base_model: str | None) -> str | None:
    """The base model's license, read from its card in a local folder or the local Hub cache (never the network)."""
    if not base_model:
        return None
    card_path: Any = os.path.join(base_model, CARD_NAME)
    if not os.path.isfile(card_path) and _hub_id(base_model):
        card_path = try_to_load_from_cache(base_model, CARD_NAME)
    if not isinstance(card_path, str) or not os.path.isfile(card_path):
        return None
    try:
        return ModelCard.load(card_path, ignore_metadata_errors=True).data.get("license")
    except (OSError, ValueError):
        return None


def _read_folder(folder: str | os.PathLike) -> tuple[dict[str, Any], PruningReport]:
    """``pruning_config.json`` and the report of a saved folder, or a `CheckpointError` naming what is missing."""
    saved = read_pruning_file(folder)
    path = os.path.join(folder, REPORT_NAME)
    try:
        report = PruningReport.load(folder)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: a model card needs the pruning report. Save the pruned model "
                              "with `PruningResult.save_pretrained`.") from None
    except (json.JSONDecodeError, TypeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); save the pruned model again.") from None
    return saved, report


def _eval_results(report: PruningReport, task: str, model_name: str) -> list[EvalResult]:
    """One `EvalResult` per metric with the pruned model's value: model-index states results of this model only."""
    results = []
    for metric, entry in report.evaluation.items():
        if entry.get("after") is None:
            continue
        results.append(EvalResult(
            task_type=task, dataset_type=entry.get("dataset", "custom"),
            dataset_name=entry.get("dataset_name", entry.get("dataset", "evaluation data")),
            dataset_split=entry.get("split"), metric_type=entry.get("metric_type", metric),
            metric_name=f"{metric} (pruned)",
            metric_value=entry["after"]))
    return results


def _card_data(saved: dict[str, Any], report: PruningReport, license: str | None) -> ModelCardData:
    base = _hub_id(report.base_model)
    task = PIPELINE_TAGS.get(saved.get("auto_class", ""))
    model_name = f"{(report.base_model or 'model').rstrip('/').split('/')[-1]}-pruned"
    results = _eval_results(report, task or "other", model_name)
    return ModelCardData(
        base_model=base,
        # Plain transformers loading gets the Hub's working "Use in Transformers" snippet and widget; a folder
        # only hfprune can load must not advertise a snippet that fails, so it names hfprune instead.
        library_name="transformers" if report.loader == Loader.TRANSFORMERS else "hfprune",
        license=license or saved.get("license") or _license_of(report.base_model),
        pipeline_tag=task,
        tags=["pruned", "hfprune", report.criterion, _granularity_text(report.granularity).split(":")[0]],
        model_name=model_name if results else None,
        eval_results=results or None,
    )


def _granularity_text(granularity: str) -> str:
    if granularity == "weights":
        return "unstructured: individual weights set to zero"
    if ":" in granularity:
        n, m = granularity.split(":")
        return f"semi-structured: {n} of every {m} consecutive weights set to zero"
    return "structured: " + " and ".join(granularity.split("+")) + " physically removed"


def _scores_units(cfg: dict[str, Any]) -> bool:
    """Whether ``criterion`` scored anything (a pure blocks / residual-channels run uses its own scores only)."""
    return any(p.strip() not in ("hidden", "layers") for p in str(cfg.get("granularity", "")).split("+"))


def _config_args(cfg: dict[str, Any]) -> str:
    """``PruningConfig`` keyword arguments: the main settings and every non-default one (of a group: the non-default
    fields; of the criterion's options: those that differ from the criterion's defaults)."""
    defaults = {**PruningConfig().to_dict(), "options": criterion_class(cfg["criterion"]).Options().to_dict()}
    always = ("criterion", "granularity", "sparsity")
    args = []
    for k, v in cfg.items():
        if isinstance(v, dict):
            v = {f: x for f, x in v.items() if defaults.get(k, {}).get(f) != x}
            if v:
                args.append(f"{k}={v!r}")
        elif k in always or (k in defaults and defaults[k] != v):
            args.append(f"{k}={v!r}")
    return ", ".join(args)


def _recipe(cfg: dict[str, Any], report: PruningReport, auto_class: str) -> str:
    """Python that reruns the pruning when no command was recorded: the main settings and every non-default one."""
    args = _config_args(cfg)
    source = report.calibration.get("source", "none")
    data = {"none": "", "random": ', calibration_data="random"'}.get(source, ", calibration_data=texts, tokenizer=tok")
    base = report.base_model or "BASE_MODEL"
    tokenizer_import = ", AutoTokenizer" if source == "data" else ""
    lines = ["from hfprune import PruningConfig, prune", f"from transformers import {auto_class}{tokenizer_import}", "",
             f'model = {auto_class}.from_pretrained("{base}")']
    if source == "data":
        lines += [f'tok = AutoTokenizer.from_pretrained("{base}")',
                  f"texts = ...  # the calibration data: {report.calibration.get('name') or 'not recorded'}"]
    lines += [f"config = PruningConfig({args})", f"result = prune(model, config{data})",
              'result.save_pretrained("pruned")']
    return "\n".join(lines)


def _training_recipe(cfg: dict[str, Any], report: PruningReport, auto_class: str, training: dict[str, Any]) -> str:
    """Python that reruns a `PruningTrainer` run (pruning while fine-tuning) with the recorded settings."""
    base = report.base_model or "BASE_MODEL"
    steps = (f"max_steps={training.get('max_steps')}" if (training.get("max_steps") or 0) > 0
             else f"num_train_epochs={training.get('num_train_epochs')}")
    recovery = training.get("recovery")  # distillation settings (RecoveryConfig), when the run distilled
    return "\n".join([
        "from hfprune import PruningConfig",
        "from hfprune.trainer import PruningTrainer" + (", RecoveryConfig" if recovery else ""),
        f"from transformers import {auto_class}, TrainingArguments", "",
        f'model = {auto_class}.from_pretrained("{base}")',
        "train = ...  # the training data (not recorded)",
        f"config = PruningConfig({_config_args(cfg)})",
        f'args = TrainingArguments("pruned", {steps}, learning_rate={training.get("learning_rate")!r}, '
        f"per_device_train_batch_size={training.get('per_device_train_batch_size')})",
        *([f"recovery = RecoveryConfig({', '.join(f'{k}={v!r}' for k, v in recovery.items())})"] if recovery
          else []),
        "trainer = PruningTrainer(model=model, args=args, train_dataset=train, pruning_config=config"
        + (", recovery=recovery)" if recovery else ")"),
        "trainer.train()", "trainer.save_model()"])


def render_model_card(folder: str | os.PathLike, license: str | None = None) -> ModelCard:
    """Render the card of a saved pruned folder (its metadata parses with huggingface_hub's `ModelCardData`)."""
    saved, report = _read_folder(folder)
    return _render(folder, saved, report, license)


def _render(folder: str | os.PathLike, saved: dict[str, Any], report: PruningReport,
            license: str | None) -> ModelCard:
    cfg = PruningConfig.from_dict(saved["pruning_config"]).to_dict()  # older flat files in the current shape
    training = saved.get("training") if isinstance(saved.get("training"), dict) else None
    auto_class = saved.get("auto_class", "AutoModel")
    recipe = _training_recipe(cfg, report, auto_class, training) if training else _recipe(cfg, report, auto_class)
    has_tokenizer = any(os.path.isfile(os.path.join(folder, n)) for n in ("tokenizer_config.json", "tokenizer.json"))
    data = _card_data(saved, report, license)
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATE_PATH),
        r=report,
        cfg=cfg,
        base_model=report.base_model,
        base_link=_hub_id(report.base_model),
        granularity_text=_granularity_text(report.granularity),
        criterion_options=(cfg.get("options") or {}) if _scores_units(cfg) else {},
        selection_options={k: cfg[k] for k in SELECTION_OPTIONS if cfg.get(k) not in (None, [], "auto")
                           and (k != "gqa_mode" or "heads" in report.granularity)},
        auto_class=auto_class,
        recipe=recipe,
        training=training,
        model_id=PLACEHOLDER_ID,
        has_tokenizer=has_tokenizer,
        plot_name=PLOT_NAME,
        forced=[lr.name for lr in report.layers if lr.forced_min],
        recon=_reconstruction_summary(report.reconstruction),
        protected_count=sum(len(v) for v in report.protected.values()),
    )


def _reconstruction_summary(rec: dict[str, Any]) -> dict[str, Any] | None:
    """Layer count, mean relative output errors before / after the refit, damped and reverted layers."""
    fits = rec.get("layers") or []
    if not fits:
        return None
    return {"layers": len(fits), "before": sum(f["error_before"] for f in fits) / len(fits),
            "after": sum(f["error_after"] for f in fits) / len(fits),
            "rank_deficient": sum(bool(f.get("rank_deficient")) for f in fits),
            "reverted": sum(bool(f["reverted"]) for f in fits), "compacted": bool(rec.get("compacted"))}


def write_model_card(folder: str | os.PathLike, license: str | None = None) -> None:
    """Write ``README.md`` and ``kept_units.png`` into a saved folder (called last by ``save_pretrained``)."""
    saved, report = _read_folder(folder)
    card = _render(folder, saved, report, license)
    plot_kept_units(report.layers, os.path.join(folder, PLOT_NAME),
                    title=f"{report.criterion}, {report.granularity}, sparsity {report.sparsity:g}")
    card.save(os.path.join(folder, CARD_NAME))
