"""What every command shares: the usage-error type, exit codes and quiet-aware printing.

Exit codes (docs/errors.md): 0 success; 1 the run failed on its input or environment (data, checkpoint, network,
disk); 2 the command must change (bad option, recipe key or value, path, existing output); 3 an unexpected error,
which is a bug in hfprune; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import sys

from ..utils.distributed import is_main_process
from ..errors import ConfigError, OutputExistsError, OutputPathError, PruningError
from ..utils.logging import show_progress

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(PruningError, ValueError):
    """The command line or recipe names something that does not exist; the user must change the command."""


def exit_code(error: PruningError) -> int:
    """2 when the command itself must change (bad option, key, path, existing output), 1 for a failed run."""
    usage = (UsageError, ConfigError, OutputExistsError, OutputPathError)
    return EXIT_USAGE if isinstance(error, usage) else EXIT_FAILURE


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
