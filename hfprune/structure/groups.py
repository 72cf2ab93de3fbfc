"""Prunable units and what is coupled to each.

A `UnitGroup` is a set of interchangeable units (the FFN neurons of one block, the heads of one attention layer,
the channels of one conv) together with every slice of every parameter that belongs to each unit. Removing unit
``u`` removes, in each `Coupling`, the indices ``index[u]`` along that coupling's dimension.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(eq=False)
class Coupling:
    """Unit ``u`` owns ``index[u]`` (a row of a ``[num_units, width]`` index tensor) of layer ``layer``.

    ``side`` is ``"out"`` for a producer (output rows of W, and the bias) or ``"in"`` for a consumer (input columns
    of W). For other parameters (norms) ``side`` is ``"param"`` and ``layer`` names the parameter.
    """

    layer: str
    side: str
    index: torch.Tensor


@dataclass(eq=False)
class UnitGroup:
    """Interchangeable units of one kind in one place of the network.

    ``activation`` names the tensor whose sign is the unit's on/off state (for expressiveness): the consumers'
    input. ``family`` is the adapter key used to rewrite the config and module attributes after compaction.
    """

    name: str
    kind: str  # "neurons" | "heads" | "channels"
    num_units: int
    couplings: list[Coupling]
    config_key: str | None = None  # e.g. "intermediate_size"; None when the config cannot express the width
    meta: dict[str, Any] = field(default_factory=dict)
    parent: str = ""  # the module the units belong to (the FFN or attention module; "" for conv channels)
    multiple: int = 1  # kept counts are rounded up to a multiple of this (`structure.widths.group_multiple`)

    @property
    def producers(self) -> list[Coupling]:
        return [c for c in self.couplings if c.side == "out"]

    @property
    def consumers(self) -> list[Coupling]:
        return [c for c in self.couplings if c.side == "in"]


def blocks(num_units: int, width: int, offset: int = 0) -> torch.Tensor:
    """Index tensor of contiguous blocks: unit u owns ``offset + u*width ... offset + (u+1)*width - 1``."""
    return torch.arange(offset, offset + num_units * width).view(num_units, width)


def kept_count(group: UnitGroup, removed: float, min_units: int = 1) -> int:
    """Units ``group`` keeps after removing ``removed`` of them: rounded up to a multiple of ``group.multiple``,
    never fewer than ``min_units`` (nor more than it has)."""
    keep, round_to = group.num_units - removed, group.multiple
    keep = int(math.ceil(round(keep, 6) / round_to) * round_to) if round_to > 1 else int(round(keep))
    return max(min(keep, group.num_units), min(min_units, group.num_units))
