"""`serve --processes N`'s parts without a gateway: the flag, the port reservation, a replica
dying with its supervisor, and the supervisor's replica commands, restarts and drain."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from splitserve.cli import build_parser, process_count
from splitserve.config import MAX_REPLICA_PROCESSES, ReplicaSettings, Settings
from splitserve.wiring import processes
from splitserve.wiring.processes import ReplicaSupervisor, reserve_port

# --- --processes ----------------------------------------------------------------------------------


def test_processes_auto_leaves_half_the_usable_cpus_to_the_instances() -> None:
    usable = len(os.sched_getaffinity(0))
    assert process_count("auto") == max(1, usable - usable // 2)
    assert process_count(" AUTO ") == process_count("auto")


@pytest.mark.parametrize(
    ("text", "count"), [("1", 1), ("2", 2), (" 4 ", 4), (str(MAX_REPLICA_PROCESSES), 256)]
)
def test_processes_takes_a_whole_number(text: str, count: int) -> None:
    assert process_count(text) == count


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0", "must be a whole number of at least 1: '0'"),
        ("-2", "must be a whole number of at least 1: '-2'"),
        ("x", "must be a whole number of at least 1: 'x'"),
        ("1.5", "must be a whole number of at least 1: '1.5'"),
        ("", "must be a whole number of at least 1: ''"),
        (
            str(MAX_REPLICA_PROCESSES + 1),
            f"at most {MAX_REPLICA_PROCESSES} replica processes on one host: '257'",
        ),
    ],
)
def test_processes_refuses_anything_else_naming_it(text: str, problem: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        process_count(text)
    assert str(refused.value) == problem


@pytest.mark.parametrize("text", ["0", "257", "x"])
def test_serve_refuses_a_bad_processes_with_a_usage_error(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "--processes", text])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "argument --processes: " in error
    assert repr(text) in error


def test_serve_processes_default_and_auto() -> None:
    assert build_parser().parse_args(["serve"]).processes == ReplicaSettings().processes == 1
    assert build_parser().parse_args(["serve", "--processes", "auto"]).processes >= 1


# --- reserve_port ---------------------------------------------------------------------------------


@pytest.fixture
def listener(request: pytest.FixtureRequest) -> Iterator[socket.socket]:
    """A socket listening on a loopback port; with SO_REUSEPORT when the test's param says so,
    as another gateway's replicas listen."""
    sock = socket.socket()
    if getattr(request, "param", False):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock
    finally:
        sock.close()


@pytest.mark.parametrize("listener", [False, True], ids=["plain", "reuseport"], indirect=True)
def test_reserve_port_refuses_a_port_another_socket_listens_on(
    listener: socket.socket,
) -> None:
    port = listener.getsockname()[1]
    with pytest.raises(OSError, match="Address already in use"):
        reserve_port("127.0.0.1", port)


def test_a_reserved_port_is_shared_by_the_replicas_only(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    listener.close()  # the port is free now
    reserved = reserve_port("127.0.0.1", port)
    try:
        assert reserved.getsockname() == ("127.0.0.1", port)
        # A replica's listener (SO_REUSEPORT, as edge.py opens it) binds next to it...
        replica = socket.socket()
        replica.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        replica.bind(("127.0.0.1", port))
        replica.listen()
        try:
            # ...and nothing else does.
            with socket.socket() as other, pytest.raises(OSError, match="in use"):
                other.bind(("127.0.0.1", port))
        finally:
            replica.close()
    finally:
        reserved.close()


def test_reserve_port_on_an_address_that_is_not_this_hosts_raises() -> None:
    with pytest.raises(OSError, match="Cannot assign requested address"):
        reserve_port("192.0.2.1", 8080)  # TEST-NET-1: never a local address


def _serve(state_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "splitserve.cli",
            "serve",
            "--state-dir",
            str(state_dir),
            "--model-store",
            str(state_dir / "models"),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("listener", [False, True], ids=["plain", "reuseport"], indirect=True)
def test_serve_processes_on_a_taken_port_exits_2_naming_the_address(
    listener: socket.socket, tmp_path: Path
) -> None:
    port = listener.getsockname()[1]
    done = _serve(tmp_path / "state", "--processes", "2", "--port", str(port))
    assert done.returncode == 2, done.stderr
    assert f"splitserve: 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr
    assert "replicas on http" not in done.stdout  # no replica was started


# --- die_with_supervisor --------------------------------------------------------------------------

# PR_SET_PDEATHSIG applies to the process that calls it: these run in a child of their own,
# never in the test runner.
_GONE = """
import sys
from splitserve.wiring.processes import SupervisorGone, die_with_supervisor

try:
    die_with_supervisor(int(sys.argv[1]))
except SupervisorGone as error:
    print(f"gone: {error}")
else:
    print("supervised")
"""


def test_die_with_supervisor_refuses_a_supervisor_that_is_not_the_parent() -> None:
    for supervisor, expected in (
        (1, "gone: the supervising process 1 is gone"),
        (os.getpid(), "supervised"),
    ):
        done = subprocess.run(
            [sys.executable, "-c", _GONE, str(supervisor)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert done.stdout.strip() == expected


# The supervisor starts a replica that calls die_with_supervisor, says it is ready, and waits;
# the replica's stdout is the test's pipe, which reaches EOF only once the replica is gone.
_SUPERVISOR = """
import os, subprocess, sys

replica = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())])
replica.wait()
"""
_REPLICA = """
import sys, time
from splitserve.wiring.processes import die_with_supervisor

die_with_supervisor(int(sys.argv[1]))
print("ready", flush=True)
time.sleep(600)
"""


def test_a_replica_dies_with_its_supervisor_killed_with_sigkill() -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-c", _SUPERVISOR, _REPLICA], stdout=subprocess.PIPE, text=True
    )
    try:
        assert supervisor.stdout is not None
        assert supervisor.stdout.readline() == "ready\n"
        supervisor.send_signal(signal.SIGKILL)
        assert supervisor.wait() == -signal.SIGKILL
        # EOF: the replica, the pipe's last writer, got SIGTERM and exited.
        assert supervisor.stdout.read() == ""
    finally:
        supervisor.kill()
        supervisor.wait()
        if supervisor.stdout is not None:
            supervisor.stdout.close()


# --- ReplicaSupervisor ----------------------------------------------------------------------------


def _settings(**replicas: object) -> Settings:
    return dataclasses.replace(
        Settings(),
        replicas=dataclasses.replace(ReplicaSettings(processes=2), **replicas),  # type: ignore[arg-type]
    )


def test_a_replicas_command_is_the_serve_command_with_the_replica_flags_last() -> None:
    argv = ["serve", "--port", "8090", "--processes", "2", "--log-level", "debug"]
    supervisor = ReplicaSupervisor(_settings(), argv)
    command = supervisor.command(1)
    assert command[:3] == [sys.executable, "-m", "splitserve.cli"]
    assert command[3:] == [
        *argv,
        "--processes",
        "1",
        "--supervisor-pid",
        str(os.getpid()),
        "--replica-index",
        "1",
    ]
    # argparse keeps the last value of a repeated option: the replica runs one process.
    args = build_parser().parse_args(command[3:])
    assert (args.processes, args.supervisor_pid, args.replica_index, args.port) == (
        1,
        os.getpid(),
        1,
        8090,
    )


class ScriptedSupervisor(ReplicaSupervisor):
    """A supervisor whose replicas run `script` (with the replica index as argument)."""

    def __init__(self, settings: Settings, script: str) -> None:
        super().__init__(settings, [])
        self._script = script

    def command(self, index: int) -> list[str]:
        """The scripted replica's command line."""
        return [sys.executable, "-c", self._script, str(index)]


def _processes(supervisor: ReplicaSupervisor) -> Sequence[subprocess.Popen[bytes] | None]:
    return [replica.process for replica in supervisor._replicas]


def test_a_replica_that_exits_is_started_again(caplog: pytest.LogCaptureFixture) -> None:
    supervisor = ScriptedSupervisor(
        _settings(processes=1, restart_backoff_seconds=0.0), "raise SystemExit(3)"
    )
    try:
        (replica,) = supervisor._replicas
        supervisor._start(replica)
        first = replica.process
        assert first is not None
        first.wait()
        with caplog.at_level("WARNING", "splitserve.wiring.processes"):
            supervisor._look_after()
        assert replica.process is not None
        assert replica.process is not first
        assert replica.quick_deaths == 1
        assert "replica 0 (pid" in caplog.text
        assert "exited with code 3" in caplog.text
    finally:
        supervisor._drain()


def test_quick_deaths_double_the_backoff_up_to_its_maximum() -> None:
    supervisor = ScriptedSupervisor(
        _settings(processes=1, restart_backoff_seconds=100.0, restart_backoff_max_seconds=300.0),
        "raise SystemExit(1)",
    )
    (replica,) = supervisor._replicas
    for expected in (100.0, 200.0, 300.0, 300.0):
        supervisor._start(replica)
        assert replica.process is not None
        replica.process.wait()
        before = time.monotonic()
        supervisor._look_after()
        after = time.monotonic()
        assert _processes(supervisor) == [None]  # not yet: it waits out the backoff
        assert before + expected <= replica.restart_at <= after + expected


def test_drain_stops_every_replica_and_kills_one_that_does_not_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Replica 0 stops on SIGTERM; replica 1 ignores it.
    script = """
import signal, sys, time
if sys.argv[1] == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(600)
"""
    supervisor = ScriptedSupervisor(_settings(drain_timeout_seconds=0.5), script)
    for replica in supervisor._replicas:
        replica.process = subprocess.Popen(
            supervisor.command(replica.index), stdout=subprocess.PIPE
        )
        assert replica.process.stdout is not None
        assert replica.process.stdout.readline() == b"ready\n"  # its handler is in place
    with caplog.at_level("WARNING", "splitserve.wiring.processes"):
        supervisor._drain()
    first, second = _processes(supervisor)
    assert first is not None
    assert second is not None
    assert first.returncode == -signal.SIGTERM
    assert second.returncode == -signal.SIGKILL
    assert f"replica pid {second.pid} did not drain in time; killing it" in caplog.text
    for process in (first, second):
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.parametrize(
    ("returncode", "description"),
    [
        (0, "code 0"),
        (2, "code 2"),
        (-9, "signal SIGKILL"),
        (-15, "signal SIGTERM"),
        (-99, "signal 99"),
    ],
)
def test_an_exit_is_described_by_its_code_or_signal(returncode: int, description: str) -> None:
    assert processes._exit_description(returncode) == description


def test_serve_processes_over_a_damaged_state_file_exits_2_naming_it(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "state.sqlite3").write_bytes(b"not a database, " * 512)
    done = _serve(state_dir, "--processes", "2", "--port", "0")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("splitserve: ")
    assert "state.sqlite3" in done.stderr
    assert "Traceback" not in done.stderr
    assert "replicas on http" not in done.stdout
