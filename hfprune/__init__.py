"""hfprune: prune Hugging Face models with research criteria, fine-tune with Trainer, publish with model cards."""

from .config import PruningConfig
from .criteria import available_criteria
from .loading import load_pruned
from .prune import PruningResult, prune
from .report import PruningReport
from .errors import (
    CalibrationError,
    CheckpointError,
    ConfigError,
    OutputExistsError,
    PruningError,
    PublishError,
    StructureError,
)

__version__ = "0.1.0"

__all__ = [
    "PruningConfig",
    "available_criteria",
    "prune",
    "PruningResult",
    "PruningReport",
    "load_pruned",
    "PruningError",
    "ConfigError",
    "CalibrationError",
    "StructureError",
    "OutputExistsError",
    "CheckpointError",
    "PublishError",
]
