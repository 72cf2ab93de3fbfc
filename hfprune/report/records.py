"""Quality numbers and the reproducing command, recorded the same way by `PruningResult` and both trainers."""

from __future__ import annotations

from typing import Any

from .pruning_report import add_evaluation


class EvaluationRecords:
    """``record_evaluation`` / ``record_command`` for the objects whose report and card show them. Each keeps its
    metrics in ``self._evaluation`` (metric -> ``{"before", "after"}`` and what describes the measurement, such as
    the perplexity protocol) and its command in ``self._command``."""

    _evaluation: dict[str, dict[str, Any]]
    _command: str | None

    def record_evaluation(self, metric: str, before: float | None = None, after: float | None = None,
                          **details: Any) -> None:
        """Add a quality number measured outside the run (e.g. the CLI's perplexity before and after) to the
        report and the card; ``details`` describe how it was measured (e.g. ``protocol="..."``)."""
        add_evaluation(self._evaluation, metric, before, after, **details)

    def record_command(self, command: str | None) -> None:
        """The command or recipe that reproduces this result (report and card)."""
        self._command = command
