"""One exception family, so callers can catch every hfprune mistake with one ``except``.

Messages say what was given, what is allowed, and what to do: they are read by people, not parsed. Values a user
gave are quoted with `shown`, so a 5 MB string or a huge list never floods a terminal.
"""

from __future__ import annotations

import re
from typing import Any

MAX_SHOWN = 120


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters, with the full length noted when cut (one helper for every
    message that echoes user input)."""
    try:
        text = repr(value)
    except Exception:  # a user object whose __repr__ fails must not hide the real error
        text = f"<{type(value).__name__}>"
    return shorten(text, limit)


def shorten(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters, keeping both ends."""
    if len(text) <= limit:
        return text
    keep = max(limit - 30, 10)
    return f"{text[: keep * 2 // 3]}...[{len(text):,} chars]...{text[-(keep // 3):]}"


def shorten_values(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` with every long run of non-space characters (a value quoted in a message: a 5 MB model name, a
    path, a repr, also inside a library's message that quotes it) shortened to ``limit`` characters."""
    return re.sub(r"\S{%d,}" % (limit + 1), lambda m: shorten(m.group(0), limit), text)


def reason(error: BaseException, limit: int = MAX_SHOWN) -> str:
    """The first line of an exception's message (or its type name), shortened: for wrapping library errors."""
    text = str(error).strip()
    return shorten(shorten_values(text.splitlines()[0]) if text else type(error).__name__, limit)


class PruningError(Exception):
    """Base class of every error hfprune raises on purpose."""


class ConfigError(PruningError, ValueError):
    """A `PruningConfig` field (or recipe key) has a value that is not allowed."""


class CalibrationError(PruningError, ValueError):
    """Calibration data is missing, empty, too short, of the wrong kind for the model, or non-finite."""


class EvaluationError(PruningError, ValueError):
    """Evaluation data is empty or too short to measure anything (no score is better than a made-up one)."""


class StructureError(PruningError, ValueError):
    """The model does not have the prunable units the config asks for."""


class OutputExistsError(PruningError, FileExistsError):
    """An output folder exists and is not empty, and overwriting was not asked for."""


class OutputPathError(PruningError, OSError):
    """An output path cannot be written: empty, under a file, read-only, a folder that holds the working
    directory, or the disk filled up while saving."""


class CheckpointError(PruningError, OSError):
    """A checkpoint folder is missing a file, holds a corrupt one, or disagrees with itself."""


class TrainingError(PruningError, RuntimeError):
    """Training went wrong in a way that would hand back a broken model (a non-finite loss)."""


class PublishError(PruningError, RuntimeError):
    """Pushing to the Hub failed; the local folder is left as it was."""
