"""Recovery after pruning: `RecoveryConfig` (the one place distillation is configured), the teacher (`Distiller`),
token budgets, the `RecoveryMixin` both trainers share, LoRA, and `RecoveryTrainer`."""

from .config import RecoveryConfig
from .trainer import RecoveryTrainer

__all__ = ["RecoveryConfig", "RecoveryTrainer"]
