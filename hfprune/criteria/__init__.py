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


from . import baselines  # noqa: E402,F401  (registers magnitude, random, taylor, wanda)
from . import research  # noqa: E402,F401  (registers expressiveness, hybrid, elimination_compensation, relative_importance)

__all__ = ["Criterion", "Stats", "register", "available_criteria", "get_criterion"]
