"""Library loggers in the transformers style, and the one switch for progress bars.

Every module logs through ``get_logger(__name__)``: loggers under the ``hfprune`` root, WARNING by default (as
transformers), ``set_verbosity(logging.INFO)`` (or ``HFPRUNE_VERBOSITY=info``) shows the phases. Progress bars
appear only on the main process, and only while transformers' progress bars are enabled
(`transformers.utils.logging.disable_progress_bar()` turns hfprune's off too) and the caller asked for them.
"""

from __future__ import annotations

import logging
import os
import sys

_ROOT = "hfprune"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _root() -> logging.Logger:
    root = logging.getLogger(_ROOT)
    if not getattr(root, "_hfprune_configured", False):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[hfprune] %(message)s"))
        root.addHandler(handler)
        root.setLevel(_LEVELS.get(os.environ.get("HFPRUNE_VERBOSITY", "").lower(), logging.WARNING))
        root.propagate = False
        root._hfprune_configured = True  # type: ignore[attr-defined]
    return root


def get_logger(name: str) -> logging.Logger:
    """A logger under the ``hfprune`` root (pass ``__name__``)."""
    _root()
    return logging.getLogger(name if name.startswith(_ROOT) else f"{_ROOT}.{name}")


def set_verbosity(level: int) -> None:
    """Level of every hfprune logger, e.g. ``set_verbosity(logging.INFO)``."""
    _root().setLevel(level)


def get_verbosity() -> int:
    return _root().getEffectiveLevel()


def show_progress(requested: bool = True) -> bool:
    """Whether to draw a progress bar: asked for, on the main process, and transformers' bars are enabled."""
    from transformers.utils import logging as hf_logging

    from .distributed import is_main_process

    return bool(requested) and is_main_process() and hf_logging.is_progress_bar_enabled()
