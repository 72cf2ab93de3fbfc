"""What every command shares: the usage-error type, exit codes and quiet-aware printing."""

from __future__ import annotations

import sys

from ..distributed import is_main_process
from ..errors import ConfigError, OutputExistsError, PruningError
from ..logging import show_progress

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(PruningError, ValueError):
    """The command line or recipe names something that does not exist; the user must change the command."""


def exit_code(error: PruningError) -> int:
    """2 when the command itself must change (bad option, key, path, existing output), 1 for a failed run."""
    return EXIT_USAGE if isinstance(error, (UsageError, ConfigError, OutputExistsError)) else EXIT_FAILURE


class Console:
    """Prints progress lines unless ``quiet``; results (reports) always go to stdout."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    @property
    def progress(self) -> bool:
        """Progress bars only for a person watching a terminal (and only on the main process)."""
        return show_progress(not self.quiet and sys.stderr.isatty())

    def info(self, message: str) -> None:
        if not self.quiet and is_main_process():
            print(message, file=sys.stderr, flush=True)

    def result(self, message: str) -> None:
        """Printed once, by the main process, under a multi-process launch."""
        if is_main_process():
            print(message, flush=True)
