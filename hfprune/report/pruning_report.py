"""`PruningReport`: what a pruning run did and what it cost, as data (saved as ``pruning_report.json``).

The model card, the CLI's ``report`` command and the benchmarks all read this one object, so every number a user
sees comes from the same place.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError, reason
from ..structure.loaders import Loader

REPORT_NAME = "pruning_report.json"


@dataclass
class LayerReport:
    """Units kept in one group (structured) or weights kept in one layer (unstructured)."""

    name: str
    kind: str  # "weights" | "neurons" | "heads" | "channels"
    total: int
    kept: int
    forced_min: bool = False  # the layer would have lost every unit and kept `min_units` instead


def add_evaluation(store: dict[str, dict[str, Any]], metric: str, before: float | None, after: float | None,
                   **details: Any) -> None:
    """``store[metric]`` gets the numbers given (as floats) and what describes the measurement (``protocol``...)."""
    entry = store.setdefault(metric, {})
    entry.update({k: float(v) for k, v in (("before", before), ("after", after)) if v is not None})
    entry.update(details)


@dataclass
class PruningReport:
    base_model: str | None
    model_type: str
    criterion: str
    granularity: str
    sparsity: float
    scope: str
    params_before: int
    params_after: int  # parameters stored in the compacted model
    nonzero_after: int  # parameters that are not exactly zero (differs from params_after when unstructured)
    macs_before: int
    macs_after: int  # dense MACs of the compacted model; unstructured zeros are not subtracted
    macs_input_shape: list[int]
    loader: str  # "transformers" (plain from_pretrained works) or "hfprune" (use hfprune.load_pruned)
    layers: list[LayerReport] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    calibration: dict[str, Any] = field(default_factory=dict)  # source, name, num_samples, seq_len, tokens
    warnings: list[str] = field(default_factory=list)
    evaluation: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> {"before", "after", "protocol"}
    latency: dict[str, Any] = field(default_factory=dict)  # dense_ms, pruned_ms, input_shape, device
    command: str | None = None  # the command or recipe that reproduces the result
    protected: dict[str, list[int]] = field(default_factory=dict)  # outlier units kept by `protect` (per group/layer)
    reconstruction: dict[str, Any] = field(default_factory=dict)  # `ReconstructionReport.to_dict()` when refit
    recovery: dict[str, Any] = field(default_factory=dict)  # training after pruning (RecoveryTrainer): method, tokens
    width_multiples: dict[str, int] = field(default_factory=dict)  # kept widths are multiples of these, per axis
    experts_removed: dict[str, list[int]] = field(default_factory=dict)  # MoE block -> removed expert indices

    def record_evaluation(self, metric: str, before: float | None = None, after: float | None = None,
                          **details: Any) -> None:
        """Add a quality number to this report (``hfprune evaluate --tasks`` on a saved folder)."""
        add_evaluation(self.evaluation, metric, before, after, **details)

    @property
    def param_ratio(self) -> float:
        return self.params_before / max(self.params_after, 1)

    @property
    def macs_ratio(self) -> float:
        return self.macs_before / max(self.macs_after, 1)

    @property
    def achieved_sparsity(self) -> float:
        """Fraction of the original parameters that are gone or zero."""
        return 1.0 - self.nonzero_after / max(self.params_before, 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruningReport":
        data = dict(data)
        data["layers"] = [LayerReport(**x) for x in data.get("layers", [])]
        return cls(**data)

    def save(self, directory: str | os.PathLike) -> str:
        path = os.path.join(directory, REPORT_NAME)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "PruningReport":
        """Read ``pruning_report.json``; a missing, unreadable or edited-beyond-recognition file is a
        `CheckpointError` naming it."""
        path = os.path.join(directory, REPORT_NAME)
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except FileNotFoundError:
            raise CheckpointError(f"{path} is missing; save the pruned model again (or run `hfprune prune`)."
                                  ) from None
        except (OSError, ValueError, TypeError, AttributeError) as e:  # JSON and UTF-8 errors are ValueErrors
            raise CheckpointError(f"{path} is corrupt ({reason(e)}); "
                                  "save the pruned model again to rewrite it.") from None

    def summary(self) -> str:
        """A short human-readable text (what the CLI prints)."""
        lines = [
            f"criterion {self.criterion}, granularity {self.granularity}, sparsity {self.sparsity:g} ({self.scope})",
            f"parameters {self.params_before:,} -> {self.params_after:,} stored, {self.nonzero_after:,} non-zero "
            f"({self.achieved_sparsity:.1%} removed)",
            f"MACs for input {self.macs_input_shape}: {self.macs_before:,} -> {self.macs_after:,} "
            f"({self.macs_ratio:.2f}x fewer)",
            "load with: " + ("transformers from_pretrained" if self.loader == Loader.TRANSFORMERS
                             else "hfprune.load_pruned"),
            "time: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items()),
        ]
        if self.recovery:
            r = self.recovery
            lines.append(f"recovery: {r.get('method')}, {r.get('tokens') or 0:,} tokens of {r.get('data') or 'user data'}"
                         f" ({r.get('steps')} steps)")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)
