"""Writing run outputs safely: atomic replacement, one-line errors, no stale temporary files.

`atomic_write(path)` yields a binary file that replaces `path` only once it is completely written
and on disk (temporary file in the same folder, fsync, `os.replace`, fsync of the folder), so a
crash, a kill or a full disk leaves the previous file intact.  The temporary file is named
`.<name>.udon-<pid>-<random>.tmp`, created with mode 0666 & ~umask like any other file, and holds an
exclusive `flock` while it is written: `remove_stale_temp_files` deletes exactly those temporary
files whose writer is gone (killed during a write: lock released, process gone), never one a live
process is writing.

Any OSError while writing becomes an `OutputError` whose message names the path and the cause
(e.g. "No space left on device"), also when the OSError was wrapped by another library (torch.save
reports a full disk as "RuntimeError: [enforce fail at inline_container.cc...] unexpected pos").
"""

import errno
import fcntl
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import UdonFastError

TEMP_MARK = ".udon-"
TEMP_SUFFIX = ".tmp"


class OutputError(UdonFastError, OSError):
    """An output file or folder that cannot be written: the message names the path and the cause."""


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError at the root of `exc` (itself, or along its __cause__ / __context__ chain), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _reason(exc: BaseException) -> str:
    cause = os_error_in(exc)
    if cause is not None and cause.strerror:
        return cause.strerror
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def writing(path: str | Path, what: str = "") -> Iterator[None]:
    """Turn an OSError raised inside the block into `OutputError("cannot write [what ]PATH: cause")`."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write {what + ' ' if what else ''}{path}: {_reason(exc)}") from exc


def check_writable_folder(path: str | Path, what: str = "") -> Path:
    """Check, without creating anything, that folder `path` exists and takes new files or could be
    created: its nearest existing ancestor must be a folder that takes new files.  Raise `OutputError`
    naming `path` and the cause otherwise (a run refuses a bad --out before any work, and a run that
    fails on its inputs leaves no empty --out behind)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    with writing(path, what):
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        tempfile.TemporaryFile(dir=existing).close()
    return path


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


@contextmanager
def atomic_write(path: str | Path, what: str = "") -> Iterator[BinaryIO]:
    """Yield a binary file whose content atomically replaces `path` when the block ends without error.

    On any error the temporary file is removed and `path` is untouched; OSErrors (also wrapped ones,
    see the module docstring) are raised as `OutputError` naming `path` (and `what` it is), except an
    `OutputError` from the block (e.g. another file written inside it), which keeps its own message.
    """
    path = Path(path)
    label = f"{what + ' ' if what else ''}{path}"
    with writing(path.parent, "folder"):
        path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_name(path)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            yield f
            f.flush()
            os.fsync(f.fileno())
            os.replace(temp, path)
        _fsync_directory(path.parent)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, OutputError) and os_error_in(exc) is not None:
            raise OutputError(f"cannot write {label}: {_reason(exc)}") from exc
        raise


def atomic_write_text(path: str | Path, text: str, what: str = "") -> None:
    """Write `text` (UTF-8) to `path` atomically (see `atomic_write`)."""
    with atomic_write(path, what) as f:
        f.write(text.encode("utf-8"))


def _writer_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not: it can write nothing more)."""
    if pid == os.getpid():
        return False  # a leftover of an earlier process that had this pid: this one is not writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files `atomic_write` left in `directory` when its writer died mid-write.

    A file is removed only when no process holds its lock and the process named in it is gone, so a
    file that a live process is creating or writing is kept.  Returns the paths removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for temp in directory.glob(f".*{TEMP_MARK}*{TEMP_SUFFIX}"):
        pid = temp.name[: -len(TEMP_SUFFIX)].rsplit(TEMP_MARK, 1)[1].split("-", 1)[0]
        if not pid.isdigit() or _writer_alive(int(pid)):
            continue
        try:
            fd = os.open(temp, os.O_RDONLY)
        except FileNotFoundError:  # replaced or removed meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            temp.unlink(missing_ok=True)
            removed.append(temp)
        except BlockingIOError:  # still being written
            continue
        finally:
            os.close(fd)
    return removed
