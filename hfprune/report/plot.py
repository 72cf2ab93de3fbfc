"""The per-layer kept-units plot of a model card (``kept_units.png``).

A bar per pruned layer or group shows where the pruning bit hardest, which a table of numbers hides when a model
has dozens of layers. Rendered with matplotlib's Agg backend so it works without a display.
"""

from __future__ import annotations

import os

from .pruning_report import LayerReport

PLOT_NAME = "kept_units.png"


def plot_kept_units(layers: list[LayerReport], path: str | os.PathLike, title: str = "") -> str:
    """Write a horizontal bar chart of the kept fraction per layer (colour per unit kind) to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # a bare Figure: no pyplot state, no change to the user's backend
    from matplotlib.patches import Patch

    kinds = sorted({lr.kind for lr in layers})
    colours = {k: f"C{i}" for i, k in enumerate(kinds)}
    fig = Figure(figsize=(7, 1.2 + 0.28 * max(len(layers), 1)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ys = list(range(len(layers)))[::-1]
    fractions = [lr.kept / max(lr.total, 1) for lr in layers]
    ax.barh(ys, fractions, color=[colours[lr.kind] for lr in layers])
    for y, lr, f in zip(ys, layers, fractions):
        ax.text(min(f, 1.0) + 0.01, y, f"{lr.kept}/{lr.total}", va="center", fontsize=7)
    ax.set_yticks(ys, [lr.name for lr in layers], fontsize=7)
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("fraction of units kept")
    if layers:
        ax.legend(handles=[Patch(color=colours[k], label=k) for k in kinds], loc="lower right", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return os.fspath(path)
