"""`serve --processes N`: N replica processes on one host, started, restarted and drained here.

The supervising process serves nothing itself. It holds the state directory's lock (so a second
`serve` on the same directory is still refused), reserves the port, and starts N copies of its own
`serve` command as replicas (`--processes 1 --supervisor-pid PID --replica-index I`). Each
replica listens on the shared port with SO_REUSEPORT, so the kernel spreads connections over
them, and competes for the controller lease (`wiring.replicas`). A replica that dies is started
again after a backoff that doubles while deaths come quickly; SIGTERM or SIGINT is passed to every
replica, which drains its connections, and the supervisor waits for them (killing stragglers after
`ReplicaSettings.drain_timeout_seconds`).

A replica dies with its supervisor (PR_SET_PDEATHSIG, `die_with_supervisor`), so a supervisor
killed with -9 leaves no replicas serving a state nobody supervises.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from splitserve.cluster.state import ClusterState
from splitserve.config import ReplicaSettings, Settings
from splitserve.control.store import Store
from splitserve.database import open_database

__all__ = ["ReplicaSupervisor", "die_with_supervisor", "prepare_state", "reserve_port"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
#: How long the supervisor sleeps between looks at its replicas (it wakes at once on a signal).
_POLL_SECONDS = 0.2
#: A replica that lived this long before dying starts the backoff afresh.
_STABLE_SECONDS = 30.0


class SupervisorGone(Exception):
    """This replica's supervisor is no longer its parent (it died before the replica started)."""


def die_with_supervisor(supervisor_pid: int) -> None:
    """In a replica: receive SIGTERM when the supervisor dies, and refuse to start without it.

    Raises:
        SupervisorGone: the parent is already another process (the supervisor died first).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # Checked after the prctl: a supervisor dying between the two is still caught.
    if os.getppid() != supervisor_pid:
        raise SupervisorGone(f"the supervising process {supervisor_pid} is gone")


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind `host:port` with SO_REUSEPORT (without listening) so the replicas can share it and
    nothing else can take it meanwhile; a port already in use fails here, with one clear error.

    Raises:
        OSError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # SO_REUSEPORT alone would join the port of another gateway's replicas run by the same user
    # (the kernel would spread this gateway's clients over both): a bind without it fails while
    # anything listens on the address.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    reserved = socket.socket(family, socket.SOCK_STREAM)
    try:
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind((host, port))
    except BaseException:
        reserved.close()
        raise
    return reserved


def prepare_state(settings: Settings) -> None:
    """Create (or check and migrate) the state and the replicas' tables once, here, before any
    replica starts: N replicas creating a new state file at once would race to link it.

    Raises:
        StateFileError: the state file is damaged or not splitserve's.
    """
    Store.open(settings.state_url, settings.database).close()  # creates a missing SQLite file
    database = open_database(settings.state_url, settings.database)
    try:
        ClusterState.open(database)
    finally:
        database.close()


@dataclass
class _Replica:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_deaths: int = 0
    restart_at: float = 0.0


class ReplicaSupervisor:
    """Runs `settings.replicas.processes` replicas of the `serve` command `argv` until a signal."""

    def __init__(self, settings: Settings, argv: Sequence[str]) -> None:
        """Supervise replicas of `splitserve` `argv` (the serve command as it was given)."""
        self._settings: ReplicaSettings = settings.replicas
        self._argv = list(argv)
        self._replicas = [_Replica(index) for index in range(self._settings.processes)]
        self._stopping = False

    def command(self, index: int) -> list[str]:
        """The command line of replica `index`: the serve command with the replica flags last
        (argparse keeps the last value of a repeated option)."""
        return [
            sys.executable, "-m", "splitserve.cli", *self._argv,
            "--processes", "1",
            "--supervisor-pid", str(os.getpid()),
            "--replica-index", str(index),
        ]  # fmt: skip

    def run(self) -> int:
        """Start the replicas, keep them running until SIGTERM or SIGINT, then drain them."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for replica in self._replicas:
                self._start(replica)
            while not self._stopping:
                self._look_after()
                time.sleep(_POLL_SECONDS)
        finally:
            self._drain()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def _start(self, replica: _Replica) -> None:
        # Replicas write to the supervisor's own stdout and stderr: one log for the host.
        replica.process = subprocess.Popen(self.command(replica.index))
        replica.started = time.monotonic()
        log.info("replica %d started (pid %d)", replica.index, replica.process.pid)

    def _look_after(self) -> None:
        now = time.monotonic()
        for replica in self._replicas:
            process = replica.process
            if process is not None and process.poll() is not None:
                lived = now - replica.started
                replica.quick_deaths = 0 if lived >= _STABLE_SECONDS else replica.quick_deaths + 1
                backoff = min(
                    self._settings.restart_backoff_seconds * 2 ** max(replica.quick_deaths - 1, 0),
                    self._settings.restart_backoff_max_seconds,
                )
                log.warning(
                    "replica %d (pid %d) exited with %s after %.1f s; starting it again in %.1f s",
                    replica.index,
                    process.pid,
                    _exit_description(process.returncode),
                    lived,
                    backoff,
                )
                replica.process = None
                replica.restart_at = now + backoff
            if replica.process is None and now >= replica.restart_at and not self._stopping:
                self._start(replica)

    def _drain(self) -> None:
        running = [r.process for r in self._replicas if r.process and r.process.poll() is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._settings.drain_timeout_seconds
        for process in running:
            try:
                process.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                log.warning("replica pid %d did not drain in time; killing it", process.pid)
                process.kill()
                process.wait()


def _exit_description(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-returncode).name}"
        return f"signal {-returncode}"
    return f"code {returncode}"
