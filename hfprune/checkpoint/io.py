"""Writing output folders safely: checked before any work, written into a temporary sibling folder, then moved into
place.

An existing output is never half-overwritten: a process killed while saving leaves either the previous folder or
the complete new one, plus a hidden ``.<name>.tmp-<pid>-*`` sibling that the next save to the same path removes.
A disk that fills up, a read-only folder or a parent that is a file become an `OutputPathError` naming the path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

from ..errors import OutputExistsError, OutputPathError, shown

# errno values that mean "this output path cannot be written", as opposed to a bug.
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                 errno.ENAMETOOLONG, errno.EFBIG}
_STALE_KINDS = ("tmp", "old")


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _writable(folder: str) -> str | None:
    """None when a file can be created in ``folder``; else the reason (probed, because ``os.access`` says yes to
    root on a read-only folder)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".hfprune-probe-", dir=folder)
    except OSError as e:
        return e.strerror or type(e).__name__
    os.close(fd)
    os.remove(probe)
    return None


def check_output_dir(path: str | os.PathLike, overwrite: bool = False, need_bytes: int | None = None) -> str:
    """Refuse, before any work, an output path that cannot end well; return it as an absolute path.

    Refused: an empty path; a folder that holds the working directory (overwriting it would delete the files being
    worked on); a path under a file; a folder that cannot be written; less free space than ``need_bytes``; an
    existing file; and an existing non-empty folder unless ``overwrite``.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip():
        raise OutputPathError(f"Output path {shown(path)} is empty; pass the folder to save to, e.g. "
                              "'./pruned-model'.")
    absolute = os.path.abspath(os.path.expanduser(os.fspath(path)))
    cwd = os.path.abspath(os.getcwd())
    if absolute in (cwd, os.path.expanduser("~"), os.path.dirname(absolute)) or cwd.startswith(absolute + os.sep):
        raise OutputPathError(f"Output path {shown(os.fspath(path))} is {absolute}, which holds the working "
                              "directory (or is the home or root folder); saving there would replace it. Pass a new "
                              "sub-folder, e.g. './pruned-model'.")
    if os.path.exists(absolute) and not os.path.isdir(absolute):
        raise OutputExistsError(f"Output path {absolute} exists and is a file; choose a folder path.")
    if os.path.isdir(absolute) and os.listdir(absolute) and not overwrite:
        raise OutputExistsError(f"Output folder {absolute} exists and is not empty; choose another folder or pass "
                                "overwrite=True (--overwrite on the command line).")
    existing = _nearest_existing(os.path.dirname(absolute))
    if not os.path.isdir(existing):
        raise OutputPathError(f"Cannot create output folder {absolute}: {existing} is a file, not a folder. Choose "
                              "a path whose parents are folders.")
    reason = _writable(existing)
    if reason is not None:
        raise OutputPathError(f"Cannot write output folder {absolute}: {existing} is not writable ({reason}). "
                              "Choose a folder you can write to.")
    if need_bytes is not None:
        free = shutil.disk_usage(existing).free
        if free < need_bytes:
            raise OutputPathError(f"Not enough disk space for {absolute}: about {need_bytes / 2**20:,.0f} MiB "
                                  f"needed, {free / 2**20:,.0f} MiB free on {existing}. Free space or choose "
                                  "another disk.")
    return absolute


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale(path: str | os.PathLike) -> list[str]:
    """Delete the temporary siblings of ``path`` left by saves that were killed (their process is gone); return
    them. Siblings of a save still running (its process alive) are left alone."""
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.dirname(path), os.path.basename(path)
    removed = []
    for kind in _STALE_KINDS:
        for sibling in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.{kind}-*")):
            pid = os.path.basename(sibling)[len(name) + len(kind) + 3:].split("-", 1)[0]
            if pid.isdigit() and _pid_alive(int(pid)):
                continue
            shutil.rmtree(sibling, ignore_errors=True)
            removed.append(sibling)
    return removed


def _write_error(path: str, error: OSError) -> OutputPathError:
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only"}.get(error.errno, error.strerror or type(error).__name__)
    return OutputPathError(f"Saving to {path} failed: {what} ({error.filename or path}). Nothing was replaced; free "
                           "space or choose another folder, then save again.")


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary folder beside ``path``; on success swap it into place, on failure delete it.

    An existing folder is swapped with the new one in a single atomic exchange (Linux ``renameat2``), then deleted,
    so at every instant ``path`` is either the old complete folder or the new complete one. A write that fails for
    lack of space or permission raises `OutputPathError`; the old folder is untouched.
    """
    path = check_output_dir(path, overwrite)
    parent, name = os.path.dirname(path), os.path.basename(path)
    remove_stale(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=parent)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        yield tmp
        _move_into_place(tmp, path, parent, name)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        code = _os_error_code(e)
        if code in _WRITE_ERRORS:
            raise _write_error(path, e if isinstance(e, OSError) else OSError(code, os.strerror(code))) from e
        raise


def _os_error_code(error: BaseException) -> int | None:
    """The errno of a failed write: an `OSError`'s own, or the one a writer quotes in its message (safetensors
    raises ``SafetensorError("... IoError(Os { code: 28, ... })")``, which is not an OSError)."""
    if isinstance(error, OSError):
        return error.errno
    found = re.search(r"\bcode: (\d+)|os error (\d+)", str(error))
    return int(found.group(1) or found.group(2)) if found else None


def _move_into_place(tmp: str, path: str, parent: str, name: str) -> None:
    if not os.path.exists(path):
        os.rename(tmp, path)
    elif _exchange(tmp, path):  # tmp now holds the old folder
        shutil.rmtree(tmp, ignore_errors=True)
    else:  # no atomic exchange (not Linux): a short window where the old folder sits beside the path
        old = tempfile.mkdtemp(prefix=f".{name}.old-{os.getpid()}-", dir=parent)
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
