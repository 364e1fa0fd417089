"""The controller lease: at most one replica controls the endpoints at a time.

- `FileLease`, for replicas on one host over an SQLite state: an exclusive `fcntl.flock` on a
  file in the state directory (`CONTROLLER_LOCK_FILE_NAME`). The kernel drops it the moment its
  holder dies, however it dies (kill -9 included), so another replica takes over at its next
  try; no clock is involved, and a holder never loses it while it lives.
- `RowLease`, for replicas on several hosts over a PostgreSQL state: a row (holder, renewals)
  that the holder renews every heartbeat. A candidate takes it only after it saw the row
  unchanged for `ttl_seconds` by its own monotonic clock (no clocks are compared across hosts),
  with a compare-and-set on the renewals it saw. While the database is down nobody renews and
  nobody takes it, so a database restart never moves control. A holder that finds the row taken
  (it was cut off from the database for longer than the TTL while the others were not) has lost
  control and must stop (`renew` returns False; docs/architecture.md, "Replicas").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from splitserve.cluster.state import ClusterState
from splitserve.database import DatabaseUnavailable, Transaction

__all__ = ["ControllerLease", "FileLease", "RowLease"]

#: The one lease row's name.
_CONTROLLER = "controller"


class ControllerLease(Protocol):
    """A lease one replica holds while it is the controller."""

    def try_acquire(self) -> bool:
        """Take the lease if no one holds it; True when this process holds it now."""
        ...

    def renew(self) -> bool:
        """Renew a held lease (each heartbeat); False when it was lost to another replica."""
        ...

    def lost_sight(self) -> None:
        """The state database could not be read (a heartbeat failed): the time until it can be
        again does not count towards taking the lease from its holder."""
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

    def renew(self) -> bool:
        """Always True: a lock is held until its holder releases it or dies."""
        return self._descriptor is not None

    def lost_sight(self) -> None:
        """Nothing to do: the kernel, not the database, keeps the lock."""

    def release(self) -> None:
        """Unlock and close the file (idempotent)."""
        if self._descriptor is not None:
            descriptor, self._descriptor = self._descriptor, None
            with contextlib.suppress(OSError):
                os.close(descriptor)


class RowLease:
    """The lease as the `cluster_lease` row of a shared state database."""

    def __init__(
        self,
        state: ClusterState,
        holder: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """A lease `holder` (a replica id) takes from a holder silent for `ttl_seconds`."""
        self._state = state
        self._holder = holder
        self._ttl = ttl_seconds
        self._clock = clock
        self._seen: tuple[str, int] | None = None
        self._seen_at = 0.0
        self._held = False

    def try_acquire(self) -> bool:
        """Take the row when it is missing, or when its holder has not renewed it for the TTL
        (as this replica saw it); True when this replica holds it now."""
        try:
            self._held = self._state.lease(_CONTROLLER, self._take)
        except DatabaseUnavailable:
            self.lost_sight()
            return self._held
        return self._held

    def lost_sight(self) -> None:
        """Time without the database does not count: once it is back, the holder gets a whole
        TTL to renew before this candidate may take the lease."""
        self._seen = None

    def renew(self) -> bool:
        """Count one more renewal; False when another replica holds the row now. While the
        database cannot be reached the lease counts as held (nobody else can take it)."""
        try:
            self._held = self._state.lease(_CONTROLLER, self._renew)
        except DatabaseUnavailable:
            return self._held
        return self._held

    def release(self) -> None:
        """Delete the row if this replica holds it, so another takes over at once."""
        if not self._held:
            return
        self._held = False
        with contextlib.suppress(Exception):
            self._state.lease(_CONTROLLER, self._delete)

    def _take(self, transaction: Transaction, current: tuple[str, int] | None) -> bool:
        now = self._clock()
        if current is None:
            transaction.execute(
                "INSERT INTO cluster_lease (name, holder, renewals) VALUES (?, ?, 0)",
                (_CONTROLLER, self._holder),
            )
            return True
        holder, renewals = current
        if holder == self._holder:
            return self._renew(transaction, current)
        if current != self._seen:
            self._seen, self._seen_at = current, now
            return False
        if now - self._seen_at < self._ttl:
            return False
        transaction.execute(
            "UPDATE cluster_lease SET holder = ?, renewals = renewals + 1 "
            "WHERE name = ? AND renewals = ?",
            (self._holder, _CONTROLLER, renewals),
        )
        return True

    def _renew(self, transaction: Transaction, current: tuple[str, int] | None) -> bool:
        if current is None or current[0] != self._holder:
            return False
        transaction.execute(
            "UPDATE cluster_lease SET renewals = renewals + 1 WHERE name = ?", (_CONTROLLER,)
        )
        return True

    def _delete(self, transaction: Transaction, current: tuple[str, int] | None) -> bool:
        if current is not None and current[0] == self._holder:
            transaction.execute("DELETE FROM cluster_lease WHERE name = ?", (_CONTROLLER,))
        return False
