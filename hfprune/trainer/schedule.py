"""When `PruningTrainer` prunes: the sparsity the model should have after a given optimizer step.

- ``one_shot``: the final sparsity from step 0 (pruned before the first update).
- ``iterative``: ``pruning_steps`` equal increments; the first at ``start_step``, the last at ``end_step``, the
  others at equal intervals between them.
- ``cubic`` (Zhu & Gupta 2017): s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n·Δt))^3 with s_i = 0, t0 = ``start_step``,
  n = ``pruning_steps`` and n·Δt = ``end_step - start_step``; the sparsity changes only at t0 + kΔt (k = 1..n),
  so it is 0 at ``start_step`` and the final sparsity at ``end_step``.

Positions are rounded up to whole steps. The functions are pure, so every process (and a resumed run) agrees.
"""

from __future__ import annotations

import math

from ..config.pruning_config import PruningConfig
from ..errors import ConfigError


def _span(config: PruningConfig) -> tuple[int, int, int]:
    if config.training.end_step is None:
        raise ConfigError(f"schedule={config.training.schedule!r} needs PruningConfig.end_step (the optimizer step at which "
                          "the final sparsity is reached); set it, or use schedule='one_shot'.")
    return config.training.start_step, config.training.end_step, config.training.pruning_steps


def pruning_positions(config: PruningConfig) -> list[int]:
    """The optimizer steps after which the sparsity changes (``[0]`` for one-shot)."""
    if config.training.schedule == "one_shot":
        return [0]
    start, end, n = _span(config)
    if config.training.schedule == "iterative":
        return [start + (math.ceil((k - 1) * (end - start) / (n - 1)) if n > 1 else 0) for k in range(1, n + 1)]
    return [start + math.ceil(k * (end - start) / n) for k in range(1, n + 1)]


def check_schedule(config: PruningConfig, max_steps: int | None) -> None:
    """`ConfigError` when the schedule has no room for its steps or ends after training does."""
    positions = pruning_positions(config)
    if len(set(positions)) < len(positions):
        need = config.training.pruning_steps - (1 if config.training.schedule == "iterative" else 0)
        raise ConfigError(f"schedule={config.training.schedule!r} with pruning_steps={config.training.pruning_steps} needs at least "
                          f"{need} optimizer steps between start_step={config.training.start_step} and "
                          f"end_step={config.training.end_step}; widen the interval or use fewer pruning_steps.")
    if max_steps is not None and max_steps > 0 and positions[-1] > max_steps:
        raise ConfigError(f"PruningConfig.end_step={positions[-1]} is beyond the end of training (max_steps="
                          f"{max_steps}): the final sparsity would never be reached. Lower end_step or train longer.")


def sparsity_at(step: int, config: PruningConfig) -> float:
    """Target sparsity of the model after ``step`` optimizer steps (0 = before the first update)."""
    final = config.sparsity
    if config.training.schedule == "one_shot":
        return final
    start, end, n = _span(config)
    if step < start:
        return 0.0
    if config.training.schedule == "iterative":
        done = n if step >= end else min(n, (step - start) * (n - 1) // (end - start) + 1)
        return final * done / n
    done = n if step >= end else n * (step - start) // (end - start)
    return final * (1.0 - (1.0 - done / n) ** 3)
