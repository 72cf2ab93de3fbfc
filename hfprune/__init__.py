"""hfprune: prune Hugging Face models with research criteria, fine-tune with Trainer, publish with model cards."""

from .config.pruning_config import PruningConfig
from .criteria import Criterion, CriterionOptions, available_criteria, register_criterion
from .structure import Adapter, AttentionSpec, FFNSpec, register_adapter
from .checkpoint.loading import load_pruned
from .export import export
from .prune import PruningResult, prune
from .publishing import push_to_hub, render_model_card, write_model_card
from .trainer import PruningTrainer
from .report.pruning_report import PruningReport
from .errors import (
    CalibrationError,
    CheckpointError,
    ConfigError,
    EvaluationError,
    OutputExistsError,
    OutputPathError,
    PruningError,
    PublishError,
    StructureError,
    TrainingError,
)

__version__ = "0.1.0"

__all__ = [
    "export",
    "PruningConfig",
    "available_criteria",
    "Criterion",
    "CriterionOptions",
    "register_criterion",
    "Adapter",
    "AttentionSpec",
    "FFNSpec",
    "register_adapter",
    "prune",
    "PruningResult",
    "PruningReport",
    "load_pruned",
    "PruningTrainer",
    "push_to_hub",
    "render_model_card",
    "write_model_card",
    "PruningError",
    "ConfigError",
    "CalibrationError",
    "StructureError",
    "EvaluationError",
    "OutputExistsError",
    "OutputPathError",
    "CheckpointError",
    "PublishError",
    "TrainingError",
]
