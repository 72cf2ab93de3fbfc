"""One exception family, so callers can catch every hfprune mistake with one ``except``.

Messages say what was given, what is allowed, and what to do: they are read by people, not parsed.
"""


class PruningError(Exception):
    """Base class of every error hfprune raises on purpose."""


class ConfigError(PruningError, ValueError):
    """A `PruningConfig` field (or recipe key) has a value that is not allowed."""


class CalibrationError(PruningError, ValueError):
    """Calibration data is missing, empty, too short or produces non-finite values."""


class StructureError(PruningError, ValueError):
    """The model does not have the prunable units the config asks for."""


class OutputExistsError(PruningError, FileExistsError):
    """An output folder exists and is not empty, and overwriting was not asked for."""


class CheckpointError(PruningError, OSError):
    """A pruned checkpoint is missing a file or holds a corrupt one."""


class PublishError(PruningError, RuntimeError):
    """Pushing to the Hub failed; the local folder is left as it was."""
