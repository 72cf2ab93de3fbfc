"""The pruning engine: one `Pruner` per run owns the settled config and the run's state."""
