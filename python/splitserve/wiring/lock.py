"""One gateway per state directory: an exclusive lock on a file in it, holding the owner's pid.

Two gateways on one state directory would both redeploy its endpoints (duplicate workers on the
same sockets) and write the same SQLite file. `StateDirLock.acquire` takes `fcntl.flock` on
`Settings.lock_file` without waiting and writes this process's pid into it; a second gateway
finds the lock taken and is refused with the pid it reads there. The kernel drops the lock when
the process exits, however it exits (kill -9 included), so a stale file never blocks a restart.
The descriptor is not inherited by workers (Python opens it non-inheritable), so a worker left
behind cannot hold it either.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class StateDirInUse(Exception):
    """Another process holds the state directory's lock."""


class StateDirLock:
    """The held lock of one state directory; released by `release` or by the process exiting."""

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self._descriptor: int | None = descriptor

    @classmethod
    def acquire(cls, path: Path) -> StateDirLock:
        """Lock `path` (created if missing, mode 0600) for this process and write its pid.

        Raises:
            StateDirInUse: another process holds it; the message names its pid.
            OSError: the file cannot be opened.
        """
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(descriptor)
            os.close(descriptor)
            who = f"pid {owner}" if owner is not None else "a process whose pid it has not written"
            raise StateDirInUse(
                f"the state directory {path.parent} is in use by another gateway ({who}); stop "
                "it, or give this one its own --state-dir"
            ) from None
        except BaseException:
            os.close(descriptor)
            raise
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        return cls(path, descriptor)

    def release(self) -> None:
        """Give the lock up (idempotent); the file stays, its pid no longer locked."""
        if self._descriptor is not None:
            descriptor, self._descriptor = self._descriptor, None
            with contextlib.suppress(OSError):
                os.ftruncate(descriptor, 0)
            os.close(descriptor)


def _read_pid(descriptor: int) -> int | None:
    """The pid written in the lock file, or None when it holds none (yet)."""
    try:
        text = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
