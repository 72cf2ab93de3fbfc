"""Writing output folders safely: into a temporary sibling folder, then moved into place.

An existing output is never half-overwritten: a process killed while saving leaves either the previous folder or
the complete new one.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
from collections.abc import Iterator

from .errors import OutputExistsError


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse an output folder that exists and is not empty, unless ``overwrite``. Call before any work."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputExistsError(f"Output path {path} exists and is a file; choose a folder path.")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise OutputExistsError(f"Output folder {path} exists and is not empty; choose another folder or pass "
                                "overwrite=True (--overwrite on the command line).")


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary folder beside ``path``; on success swap it into place, on failure delete it.

    An existing folder is swapped with the new one in a single atomic exchange (Linux ``renameat2``), then deleted,
    so at every instant ``path`` is either the old complete folder or the new complete one.
    """
    path = os.path.abspath(os.fspath(path))
    check_output_dir(path, overwrite)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not os.path.exists(path):
        os.rename(tmp, path)
    elif _exchange(tmp, path):  # tmp now holds the old folder
        shutil.rmtree(tmp, ignore_errors=True)
    else:  # no atomic exchange (not Linux): a short window where the old folder sits beside the path
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
        os.rmdir(old)
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step with Linux's ``renameat2(RENAME_EXCHANGE)``; False where unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
