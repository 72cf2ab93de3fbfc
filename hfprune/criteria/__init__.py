"""Pruning criteria, registered by name. Adding one = a `Criterion` subclass decorated with `register_criterion`."""

from __future__ import annotations

from .base import Criterion, CriterionOptions, Stats
from .registry import available_criteria, criterion_class, get_criterion, register_criterion
from . import baselines, elimination_compensation, expressiveness, hybrid, obs, relative_importance  # noqa: F401,E402

from .hybrid import rank_norm
from .relative_importance import ri_regularizer

__all__ = ["Criterion", "Stats", "register_criterion", "available_criteria", "criterion_class", "get_criterion",
           "CriterionOptions", "rank_norm", "ri_regularizer"]
