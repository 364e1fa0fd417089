"""The controller lease: `FileLease` (a lock on a file, freed by the kernel when its holder dies)
and `RowLease` (a row renewed every heartbeat, taken only from a holder seen silent for the TTL),
the latter with a clock under the test's control."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from splitserve.cluster.lease import FileLease, RowLease
from splitserve.cluster.state import ClusterState
from splitserve.database import DatabaseUnavailable, Transaction, open_database
from tests.cluster.conftest import QUICK
from tests.support.clock import FakeClock
from tests.support.postgres import PostgresServer

TTL = 5.0


# --- FileLease ------------------------------------------------------------------------------------


def test_only_one_of_two_file_leases_holds_and_release_hands_it_over(tmp_path: Path) -> None:
    path = tmp_path / "controller.lock"
    first, second = FileLease(path), FileLease(path)
    assert first.try_acquire()
    assert first.try_acquire()  # holding it already
    assert first.renew()
    assert not second.try_acquire()
    assert not second.renew()  # never held
    assert path.read_text() == f"{os.getpid()}\n"
    first.release()
    first.release()  # idempotent
    assert not first.renew()
    assert second.try_acquire()
    assert not first.try_acquire()
    second.release()


def test_a_file_lease_in_a_missing_directory_raises(tmp_path: Path) -> None:
    lease = FileLease(tmp_path / "missing" / "controller.lock")
    with pytest.raises(FileNotFoundError):
        lease.try_acquire()
    assert not lease.renew()


_HOLDER = """
import sys
from pathlib import Path
from splitserve.cluster.lease import FileLease

lease = FileLease(Path(sys.argv[1]))
print("held" if lease.try_acquire() else "refused", flush=True)
sys.stdin.read()  # until the test kills it
"""


def test_a_holder_killed_with_sigkill_frees_the_file_lease(tmp_path: Path) -> None:
    path = tmp_path / "controller.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        lease = FileLease(path)
        assert not lease.try_acquire()
        holder.send_signal(signal.SIGKILL)
        assert holder.wait() == -signal.SIGKILL
        # No clock and no cleanup by the dead holder: the kernel dropped its lock.
        assert lease.try_acquire()
        lease.release()
    finally:
        holder.kill()
        holder.wait()
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()


# --- RowLease -------------------------------------------------------------------------------------


def row(cluster: ClusterState) -> tuple[str, int] | None:
    """The controller lease row as (holder, renewals), None when there is none."""
    rows = cluster.database.query("SELECT holder, renewals FROM cluster_lease")
    assert len(rows) <= 1
    return None if not rows else (str(rows[0][0]), int(rows[0][1]))  # type: ignore[call-overload]


def leases(cluster: ClusterState, clock: FakeClock) -> tuple[RowLease, RowLease]:
    """Replicas a and b competing for the lease, on one clock."""
    return (
        RowLease(cluster, "a", TTL, clock=clock),
        RowLease(cluster, "b", TTL, clock=clock),
    )


def test_a_missing_row_is_taken_at_once(cluster: ClusterState) -> None:
    a, b = leases(cluster, FakeClock())
    assert a.try_acquire()
    assert row(cluster) == ("a", 0)
    assert not b.try_acquire()
    assert a.try_acquire()  # its own row: a renewal
    assert row(cluster) == ("a", 1)


def test_a_silent_holder_is_taken_over_only_after_the_ttl_as_the_candidate_saw_it(
    cluster: ClusterState,
) -> None:
    clock = FakeClock()
    a, b = leases(cluster, clock)
    assert a.try_acquire()
    clock.advance(100.0)  # a's age before b ever looked does not count: clocks are b's own
    assert not b.try_acquire()
    clock.advance(TTL - 0.5)
    assert not b.try_acquire()
    assert row(cluster) == ("a", 0)
    clock.advance(0.5)
    assert b.try_acquire()
    assert row(cluster) == ("b", 1)
    assert b.renew()
    # a wakes up: it lost the lease and must stop; it takes nothing back.
    assert not a.renew()
    assert row(cluster) == ("b", 2)


def test_a_renewing_holder_is_never_taken_over(cluster: ClusterState) -> None:
    clock = FakeClock()
    a, b = leases(cluster, clock)
    assert a.try_acquire()
    for _ in range(10):
        assert not b.try_acquire()
        clock.advance(TTL - 1.0)
        assert a.renew()
        clock.advance(1.0)
    assert not b.try_acquire()
    assert row(cluster) == ("a", 10)


def test_two_candidates_that_waited_out_the_ttl_take_it_once(cluster: ClusterState) -> None:
    clock = FakeClock()
    a, b = leases(cluster, clock)
    c = RowLease(cluster, "c", TTL, clock=clock)
    assert a.try_acquire()
    assert not b.try_acquire()
    assert not c.try_acquire()
    clock.advance(TTL)
    assert b.try_acquire()
    # c saw (a, 0) for the TTL too, but the row it finds now is b's, just renewed.
    assert not c.try_acquire()
    assert row(cluster) == ("b", 1)


def test_release_deletes_the_row_so_another_takes_it_at_once(cluster: ClusterState) -> None:
    a, b = leases(cluster, FakeClock())
    b.release()  # holds nothing: deletes nothing
    assert a.try_acquire()
    b.release()
    assert row(cluster) == ("a", 0)
    a.release()
    assert row(cluster) is None
    assert not a.renew()
    assert b.try_acquire()
    a.release()  # no longer its row: left alone
    assert row(cluster) == ("b", 0)


class UnreachableState(ClusterState):
    """A `ClusterState` whose database goes away when `down` is set."""

    down = False

    def lease(
        self, name: str, change: Callable[[Transaction, tuple[str, int] | None], bool]
    ) -> bool:
        """As ClusterState's, or DatabaseUnavailable while `down`."""
        if self.down:
            raise DatabaseUnavailable("the state database cannot be reached")
        return super().lease(name, change)


def test_a_database_that_cannot_be_reached_moves_no_lease(cluster: ClusterState) -> None:
    clock = FakeClock()
    state = UnreachableState(cluster.database)
    a = RowLease(state, "a", TTL, clock=clock)
    b = RowLease(state, "b", TTL, clock=clock)
    state.down = True
    assert not b.try_acquire()  # a missing row is not taken while it cannot be read
    state.down = False
    assert a.try_acquire()
    assert not b.try_acquire()
    state.down = True
    clock.advance(TTL * 10)
    assert a.renew()  # held: nobody can take it meanwhile
    assert not b.try_acquire()
    a.release()  # a failed release leaves the row for the TTL, raising nothing
    state.down = False
    assert row(cluster) == ("a", 0)


def test_a_stopped_postgresql_keeps_the_holder_holding(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    database = open_database(postgres_url, QUICK)
    try:
        cluster = ClusterState.open(database)
        clock = FakeClock()
        a, b = leases(cluster, clock)
        assert a.try_acquire()
        assert not b.try_acquire()
        postgres_server.stop()
        try:
            clock.advance(TTL * 10)
            assert a.renew()
            assert not b.try_acquire()
        finally:
            postgres_server.start()
        # Back: b saw a's row unchanged for the TTL only before the restart; a renews first.
        assert a.renew()
        assert not b.try_acquire()
        assert row(cluster) == ("a", 1)
    finally:
        database.close()


def test_a_heartbeat_that_failed_restarts_the_candidates_watch(
    cluster: ClusterState,
) -> None:
    # The database was down for longer than the TTL: the holder could not renew, and neither
    # could the candidate read. Once it is back, the holder gets a whole TTL again.
    clock = FakeClock()
    a, b = leases(cluster, clock)
    assert a.try_acquire()
    assert not b.try_acquire()
    b.lost_sight()  # what ReplicaNode does when a heartbeat finds the database unavailable
    clock.advance(TTL * 3)
    assert not b.try_acquire()
    clock.advance(TTL - 0.5)
    assert a.renew()
    clock.advance(1.0)
    assert not b.try_acquire()
