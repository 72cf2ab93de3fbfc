"""Pruning while fine-tuning: `PruningTrainer` (a `transformers.Trainer`) and its schedules; recovery after pruning:
`RecoveryTrainer` and `RecoveryConfig` (distillation, LoRA, token budgets)."""

from .callback import PruningCallback
from .recovery import RecoveryConfig, RecoveryTrainer
from .schedule import pruning_positions, sparsity_at
from .trainer import PruningTrainer

__all__ = ["PruningTrainer", "PruningCallback", "RecoveryTrainer", "RecoveryConfig", "sparsity_at",
           "pruning_positions"]
