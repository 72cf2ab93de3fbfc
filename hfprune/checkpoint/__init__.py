"""The pruned checkpoint: its record (pruning_config.json), atomic output folders, and loading it back."""
