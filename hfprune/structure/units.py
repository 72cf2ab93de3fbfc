"""The vocabulary of units a granularity names: unstructured weights, N:M patterns, and the structured axes."""

from __future__ import annotations

import re

#: structured unit kinds, each removable along one axis
STRUCTURED_GRANULARITIES = ("neurons", "heads", "channels", "hidden", "layers", "experts")
#: axes removed in one step and scored by their own scores (`WidthDepthConfig.block_score`, `.channel_score`,
#: `.expert_score`), not by `criterion`
WIDTH_DEPTH_AXES = ("hidden", "layers", "experts")
#: axes scored by `criterion` inside a width/depth run
UNIT_AXES = ("neurons", "heads")
NM_PATTERN = re.compile(r"^(\d+):(\d+)$")


def granularity_parts(granularity: str) -> list[str]:
    """The granularity split on '+', e.g. 'neurons+heads' -> ['neurons', 'heads']."""
    return [p.strip() for p in str(granularity).split("+") if p.strip()]


def nm_pattern(granularity: str) -> tuple[int, int] | None:
    """(N, M) of an N:M pattern (N weights removed in every group of M consecutive inputs), else None."""
    m = NM_PATTERN.match(str(granularity))
    return (int(m.group(1)), int(m.group(2))) if m else None
