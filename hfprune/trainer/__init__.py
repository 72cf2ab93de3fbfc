"""Pruning while fine-tuning: `PruningTrainer` (a `transformers.Trainer`) and its schedules."""

from .callback import PruningCallback
from .schedule import pruning_positions, sparsity_at
from .trainer import PruningTrainer

__all__ = ["PruningTrainer", "PruningCallback", "sparsity_at", "pruning_positions"]
