"""Width and depth pruning: whole blocks, residual channels, a parameter target searched over the axes."""

from . import scores  # noqa: F401  (registers block_influence, skip_loss, minitron)
