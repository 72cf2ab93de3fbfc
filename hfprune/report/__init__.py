"""What a run did and cost: the `PruningReport`, parameters and MACs."""
