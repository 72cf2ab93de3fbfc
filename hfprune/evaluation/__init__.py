"""Quality of a model before and after pruning: perplexity, accuracy, embedding fidelity."""
