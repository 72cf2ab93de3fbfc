"""Registry of pruning criteria by name. Adding a criterion = one module + one `register` line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Criterion, Stats

if TYPE_CHECKING:
    from ..config import PruningConfig

_REGISTRY: dict[str, type[Criterion]] = {}


def register(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: make ``cls`` available as ``PruningConfig(criterion=cls.name)``."""
    _REGISTRY[cls.name] = cls
    return cls


def available_criteria() -> list[str]:
    return sorted(_REGISTRY)


def get_criterion(config: "PruningConfig", name: str | None = None) -> Criterion:
    """Instantiate the criterion named ``name`` (default: ``config.criterion``)."""
    return _REGISTRY[name or config.criterion](config)


_GRADIENTS = {"loss": "the loss gradient", "output": "gradients of the network output"}


def sequential_conflict(config: "PruningConfig") -> str | None:
    """Why ``config`` cannot run with ``calibration_mode='sequential'`` (None when it can).

    Layer-by-layer calibration runs one block at a time, forward only: a criterion needing network gradients
    cannot be computed, and an unstructured global ranking would need every weight's score at once. A criterion
    that cannot score the granularity is left to `get_criterion`, which says so at pruning time.
    """
    from ..errors import PruningError

    try:
        crit = get_criterion(config)
    except PruningError:
        return None
    if crit.grad_mode is not None:
        what, fix = f"criterion {config.criterion!r}", "use calibration_mode='full'"
        hybrid = config.criterion == "hybrid"
        if hybrid:
            what += f" with hybrid_importance={config.hybrid_importance!r}"
        if (config.hybrid_importance if hybrid else config.criterion) == "elimination_compensation":
            what += f"{' and' if hybrid else ' with'} ec_output={config.ec_output!r}"
            fix = "use ec_output='layer' (forward only) or calibration_mode='full'"
        return (f"{what} needs {_GRADIENTS[crit.grad_mode]}, which layer-by-layer calibration cannot compute "
                f"(it runs one block at a time, forward only); {fix}")
    if config.scope == "global" and not config.structured and config.nm is None and not crit.per_row:
        return ("scope='global' with unstructured weights ranks every weight of the network at once, which needs "
                "all per-weight scores (as large as the model) together; use scope='local' or "
                "calibration_mode='full' (structured units such as neurons and heads support global scope)")
    return None


from . import baselines  # noqa: E402,F401  (registers magnitude, random, taylor, wanda)
from . import research  # noqa: E402,F401  (registers expressiveness, hybrid, elimination_compensation, relative_importance)
from . import width_depth  # noqa: E402,F401  (registers block_influence, skip_loss, minitron)

__all__ = ["Criterion", "Stats", "register", "available_criteria", "get_criterion"]
