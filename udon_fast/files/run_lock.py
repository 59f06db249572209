"""One process per output folder: an exclusive OS lock held for as long as a run (or a grid) writes there.

`lock_folder(folder, what)` creates `folder` if needed, opens `folder/.udon-lock` and takes an
exclusive `fcntl.flock` on it without waiting.  The lock belongs to the open file, so the OS drops it
when the process ends in any way (exit, exception, `kill -9`, a crash): a dead run never blocks the
next one, and no stale-lock heuristics are needed.  The holder writes one JSON line into the lock
file (pid, host, start time, command), which the refused process quotes:

    --out runs/x is in use by another run: pid 4242 on host gpu1, started 2026-12-03T00:41:07Z:
    python -m udon_fast.train --out runs/x

(one line).  `flock` locks are per host on local file systems; on NFS they are forwarded to the
server by Linux (NFSv4), so two hosts sharing a folder also exclude each other.

On release, a folder that the lock created and that holds nothing but the lock file is removed
again, so a run refused for its inputs leaves no empty folder behind.  The path is re-checked after
locking (same inode as the open file), so a file removed by a releasing holder is never locked.
"""

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from .outputs import OutputError, writing

LOCK_FILE = ".udon-lock"
_HOLDER_WAIT_S = 1.0  # how long a refused process waits for a holder that locked but has not described itself


class FolderInUse(OutputError):
    """The folder is locked by another live process; the message names it (pid, host, start, command)."""


def _holder(path: Path) -> str:
    """The lock file's description of its holder, as text (waits briefly for a holder still writing it)."""
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on host {info['host']}, started {info['started']}: {info['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() > deadline:
                return "a process that has not described itself in the lock file"
            time.sleep(0.02)


class FolderLock:
    """An exclusive lock on one folder, held until `release()` (or the end of the `with` block)."""

    def __init__(self, folder: str | os.PathLike, what: str = "--out"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        created = not self.folder.exists()
        with writing(self.folder, what):
            self.folder.mkdir(parents=True, exist_ok=True)
            self._fd = self._lock(what)
        self._created = created
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": shlex.join(getattr(sys, "orig_argv", sys.argv)).replace("\n", "\\n"),
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(record) + "\n").encode("utf-8"), 0)

    def _lock(self, what: str) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderInUse(f"{what} {self.folder} is in use by another run: {_holder(self.path)}") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # locked a file that its releasing holder had just removed: lock the new one

    def release(self) -> None:
        """Drop the lock; remove the lock file (and the folder, if the lock made it and it is otherwise empty)."""
        if self._fd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)
            if self._created:
                try:
                    self.folder.rmdir()
                except OSError:  # not empty: the run wrote its outputs there
                    pass
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def lock_folder(folder: str | os.PathLike, what: str = "--out") -> FolderLock:
    """Lock `folder` (created if missing) for this process; `FolderInUse` (one line naming the holder)
    when another process holds it, `OutputError` when the folder cannot be created or written."""
    return FolderLock(folder, what)
