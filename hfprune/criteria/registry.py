"""The criterion registry: names to classes, and the one place a config's criterion is resolved.

`PruningConfig` checks its criterion here at construction (the name, suggesting the closest; its options; the
granularity and calibration mode it can run with); the engine builds the criterion with `get_criterion` from the
settled config.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, shown

if TYPE_CHECKING:
    from .base import Criterion

_REGISTRY: dict[str, type["Criterion"]] = {}


def register_criterion(cls: type["Criterion"]) -> type["Criterion"]:
    """Class decorator: make ``cls`` available as ``PruningConfig(criterion=cls.name)``.

    Works from outside the package too (see docs/criteria.md, "Adding a criterion")."""
    if not getattr(cls, "name", ""):
        raise ConfigError(f"{cls.__name__} has no `name`; set a class attribute name = '...' before registering.")
    _REGISTRY[cls.name] = cls
    return cls


def available_criteria() -> list[str]:
    """Names of every registered criterion, sorted."""
    return sorted(_REGISTRY)


def criterion_class(name: str, field: str = "criterion") -> type["Criterion"]:
    """The class registered as ``name``; a `ConfigError` naming the closest valid name otherwise."""
    if name not in _REGISTRY:
        names = available_criteria()
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"PruningConfig.{field}={shown(name)} is not allowed: one of {', '.join(names)}.{hint}")
    return _REGISTRY[name]


def get_criterion(config: Any, name: str | None = None) -> "Criterion":
    """Instantiate the criterion named ``name`` (default: ``config.criterion``) for ``config``."""
    return criterion_class(name or config.criterion)(config)


