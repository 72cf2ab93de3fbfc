"""The research criteria register here: expressiveness, hybrid, elimination-compensation, relative importance."""

from .elimination_compensation import EliminationCompensation
from .expressiveness import Expressiveness
from .hybrid import Hybrid, rank_norm
from .relative_importance import RelativeImportance, ri_regularizer

__all__ = ["EliminationCompensation", "Expressiveness", "Hybrid", "RelativeImportance", "rank_norm",
           "ri_regularizer"]
