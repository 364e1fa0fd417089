"""The controller lease: at most one replica controls the endpoints at a time.

On one host the replicas share the SQLite state, and the lease is an exclusive `fcntl.flock` on
a file in the state directory (`CONTROLLER_LOCK_FILE_NAME`). The kernel drops it the moment its
holder dies, however it dies (kill -9 included), so another replica takes over at its next try,
well within the issue's 10 s; no clock and no expiry time are involved, so a paused holder can
never find its lease taken while it still acts on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Protocol

__all__ = ["ControllerLease", "FileLease"]


class ControllerLease(Protocol):
    """A lease one replica holds while it is the controller."""

    def try_acquire(self) -> bool:
        """Take the lease if no one holds it; True when this process holds it now."""
        ...

    def release(self) -> None:
        """Give the lease up (idempotent)."""
        ...


class FileLease:
    """The lease as an exclusive lock on `path` (created mode 0600 when missing)."""

    def __init__(self, path: Path) -> None:
        """A lease on `path`; nothing is locked until `try_acquire`."""
        self._path = path
        self._descriptor: int | None = None

    def try_acquire(self) -> bool:
        """Lock the file without waiting; True when this process holds the lock."""
        if self._descriptor is not None:
            return True
        descriptor = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        except BaseException:
            os.close(descriptor)
            raise
        # Who holds it, for whoever looks at the file: not read by splitserve.
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self._descriptor = descriptor
        return True

    def release(self) -> None:
        """Unlock and close the file (idempotent)."""
        if self._descriptor is not None:
            descriptor, self._descriptor = self._descriptor, None
            with contextlib.suppress(OSError):
                os.close(descriptor)
