"""Width and depth pruning: whole blocks, residual channels, a parameter target searched over the axes."""
