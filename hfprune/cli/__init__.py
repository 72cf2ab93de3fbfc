"""The `hfprune` command line: `hfprune prune | run | report | push | evaluate | demo` (see docs/cli.md).

`main(argv)` returns the exit code (see `common` and docs/errors.md) so tests run it in-process. This is the one
error boundary: an error hfprune expects prints one line with the fix; anything else is reported as a bug with how
to report it; `--debug` shows the traceback. Every line the process prints (messages, logs, warnings) is scrubbed
of Hub tokens, and long values are shortened.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from typing import Any, TextIO

from ..utils.distributed import launched_with_processes, process_state
from ..errors import PruningError, shorten, shorten_values
from ..utils.redact import register_secret, scrub, scrub_logs
from .common import EXIT_BUG, EXIT_FAILURE, EXIT_INTERRUPTED, Console, exit_code

MAX_MESSAGE = 2000  # characters of an error message printed; the rest of a long value is elided


class _Scrubbed:
    """A text stream that scrubs secrets from what is written to it (line by line: tokens never straddle)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(scrub(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _scrubbed_output() -> Iterator[None]:
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Scrubbed(out), _Scrubbed(err)
    scrub_logs()
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return scrub(shorten(shorten_values(text), MAX_MESSAGE))


def main(argv: list[str] | None = None) -> int:
    from .parser import build_parser

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help, --version (0) and usage errors (2)
        return int(e.code or 0)
    args.argv = argv
    register_secret(getattr(args, "token", None))
    if launched_with_processes():
        process_state()  # one process-group set-up, before any output, so only the main process prints
    console = Console(args.quiet)
    if args.quiet:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    with _scrubbed_output():
        try:
            return args.handler(args, console)
        except PruningError as e:
            if args.debug:
                _print_traceback()
            print(f"hfprune: error: {_one_line(e)}", file=sys.stderr)
            return exit_code(e)
        except KeyboardInterrupt:
            print("hfprune: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except MemoryError:
            print("hfprune: error: out of memory; lower batch_size / num_samples / seq_len, or use "
                  "calibration.mode='sequential' (docs/scaling.md).", file=sys.stderr)
            return EXIT_FAILURE
        except Exception as e:
            if args.debug:
                _print_traceback()
            print(f"hfprune: internal error (a bug in hfprune, not in your input): {type(e).__name__}: "
                  f"{_one_line(e)}. Rerun the same command with --debug and report the command and the traceback "
                  "to the hfprune maintainers.", file=sys.stderr)
            return EXIT_BUG


def _print_traceback() -> None:
    """``--debug``: the traceback of the error being handled, scrubbed of tokens like every other line (users paste
    it into bug reports)."""
    print(scrub(traceback.format_exc()), file=sys.stderr, end="")


__all__ = ["main"]
