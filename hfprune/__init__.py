"""hfprune: prune Hugging Face models with research criteria, fine-tune with Trainer, publish with model cards."""

from .config import PruningConfig
from .criteria import available_criteria
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
    "PruningError",
    "ConfigError",
    "CalibrationError",
    "StructureError",
    "OutputExistsError",
    "CheckpointError",
    "PublishError",
]
