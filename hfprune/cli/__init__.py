"""The `hfprune` command line: `hfprune prune | run | report | push | evaluate | demo` (see docs/cli.md).

`main(argv)` returns the exit code (0 ok, 1 failure, 2 usage error) so tests run it in-process. User mistakes
print one line with the fix; `--debug` shows the traceback.
"""

from __future__ import annotations

import sys

from ..distributed import launched_with_processes, process_state
from ..errors import PruningError
from .common import EXIT_FAILURE, Console, exit_code


def main(argv: list[str] | None = None) -> int:
    from .parser import build_parser

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help, --version (0) and usage errors (2)
        return int(e.code or 0)
    args.argv = argv
    if launched_with_processes():
        process_state()  # one process-group set-up, before any output, so only the main process prints
    console = Console(args.quiet)
    if args.quiet:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    try:
        return args.handler(args, console)
    except PruningError as e:
        if args.debug:
            raise
        print(f"hfprune: error: {e}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        print("hfprune: interrupted", file=sys.stderr)
        return EXIT_FAILURE


__all__ = ["main"]
