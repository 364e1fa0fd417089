"""The worker supervisor with real processes: the example BYO server, the fault server and, when it
exists, the built-in XGBoost server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from splitserve.config import WorkerSettings
from splitserve.contract.upstream import UpstreamAddress
from splitserve.errors import DeploymentError
from splitserve.workers.catalog import InstanceCatalog, InstanceType
from splitserve.workers.fleet import VariantDeployment, VariantFleet
from splitserve.workers.images import ImageRegistry
from splitserve.workers.instance import InstanceInfo
from splitserve.workers.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[2]
FAULT_SERVER = Path(__file__).resolve().parent / "fault_server.py"
BYO_IMAGES = ROOT / "examples" / "byo_server" / "images.toml"
BYO_IMAGE = "example.com/numpy-logistic:1"
FAULT_IMAGE = "test.local/fault-server:1"
XGBOOST_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"

#: Where the tests' model artifacts may come from (pytest's temporary directories).
ARTIFACT_ROOTS = (Path(tempfile.gettempdir()).resolve(),)

#: The environment variable every test's workers carry, so leftovers can be found in /proc.
MARKER_VARIABLE = "SPLITSERVE_TEST_MARKER"


@dataclass
class Event:
    """One call the supervisor made on the listener."""

    kind: str
    instance: InstanceInfo
    at: float


@dataclass
class RecordingListener:
    """An InstanceListener that records every call; tests set `in_flight_counts` themselves.

    Attributes:
        events: every instance_healthy/instance_unhealthy call, in order.
        in_flight_counts: what `in_flight` answers, by instance name.
        on_healthy: called inside `instance_healthy` (to observe the instance at that moment).
    """

    events: list[Event] = field(default_factory=list)
    in_flight_counts: Counter[str] = field(default_factory=Counter)
    on_healthy: Callable[[InstanceInfo], None] | None = None

    def instance_healthy(self, instance: InstanceInfo) -> None:
        """Record; run the hook."""
        self.events.append(Event("healthy", instance, time.monotonic()))
        if self.on_healthy is not None:
            self.on_healthy(instance)

    def instance_unhealthy(self, instance: InstanceInfo) -> None:
        """Record."""
        self.events.append(Event("unhealthy", instance, time.monotonic()))

    def in_flight(self, instance_name: str) -> int:
        """What the test set."""
        return self.in_flight_counts[instance_name]

    def kinds(self, instance_name: str) -> list[str]:
        """The event kinds of one instance, in order."""
        return [event.kind for event in self.events if event.instance.name == instance_name]

    async def wait_for_kinds(
        self, instance_name: str, kinds: list[str], within: float = 10.0
    ) -> None:
        """Wait until the instance's event kinds are exactly `kinds`."""
        await wait_until(lambda: self.kinds(instance_name) == kinds, within)


async def wait_until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Poll `condition` every 20 ms; fail the test after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "Z" not in state.split()[1]


def exists(path: Path) -> bool:
    """`path.exists()`, callable from a coroutine (a test may block; ruff's ASYNC rules apply)."""
    return path.exists()


def proc_file(pid: int, name: str) -> str:
    """The text of /proc/<pid>/<name>, NULs turned into newlines."""
    return Path(f"/proc/{pid}/{name}").read_bytes().decode().replace("\0", "\n")


def processes_with_marker(marker: str) -> list[int]:
    """The live processes whose environment carries `marker` (see MARKER_VARIABLE)."""
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def fast_settings(run_dir: Path, **overrides: Any) -> WorkerSettings:
    """WorkerSettings with timeouts small enough for tests."""
    fast = WorkerSettings(
        run_dir=run_dir,
        ping_timeout_seconds=0.5,
        health_interval_seconds=0.1,
        unhealthy_after_failures=3,
        startup_timeout_seconds=15.0,
        restart_backoff_initial_seconds=0.2,
        restart_backoff_max_seconds=1.0,
        stop_grace_seconds=3.0,
        # The tests' interpreter may be root's own (e.g. under /root): keep workers root here;
        # the switch to an unprivileged user has tests of its own, with the system's Python.
        worker_user="root",
    )
    return dataclasses.replace(fast, **overrides)


@pytest.fixture
def settings(run_dir: Path) -> WorkerSettings:
    """Fast settings over the test's run directory."""
    return fast_settings(run_dir)


@pytest.fixture
def images(tmp_path: Path) -> ImageRegistry:
    """The example BYO server plus the fault server (`FAULT_IMAGE`)."""
    registry = tmp_path / "images.toml"
    registry.write_text(
        f"""
[images."{FAULT_IMAGE}"]
command = ["{{python}}", "{FAULT_SERVER}"]

[images."{BYO_IMAGE}"]
command = ["{{python}}", "{BYO_IMAGES.parent / "server.py"}"]
"""
    )
    return ImageRegistry.load(registry)


@pytest.fixture
def listener() -> RecordingListener:
    """A fresh recording listener."""
    return RecordingListener()


@pytest.fixture
async def supervisor(
    settings: WorkerSettings,
    images: ImageRegistry,
    listener: RecordingListener,
    marker: str,
) -> AsyncIterator[Supervisor]:
    """A supervisor over the fast settings; closed after the test, which leaves no worker."""
    supervisor = Supervisor(
        settings, images, InstanceCatalog(), listener, artifact_roots=ARTIFACT_ROOTS
    )
    try:
        yield supervisor
    finally:
        await supervisor.close()
        leftovers = processes_with_marker(marker)
        assert leftovers == [], f"workers left behind: {leftovers}"


XGBOOST_SERVER = ROOT / "python" / "splitserve" / "workers" / "xgboost_server.py"


def deployment(
    marker: str,
    *,
    image: str = FAULT_IMAGE,
    model_data: Path | None = None,
    environment: Mapping[str, str] | None = None,
    instance_type: str = "ml.m5.large",
    count: int = 1,
    variant: str = "A",
    generation: int = 1,
) -> VariantDeployment:
    """A deployment whose workers carry the test's marker in their environment."""
    return VariantDeployment(
        endpoint_name="ep",
        variant_name=variant,
        generation=generation,
        image=image,
        model_data=model_data,
        environment={MARKER_VARIABLE: marker, **(environment or {})},
        instance_type=instance_type,
        instance_count=count,
    )


def _url(address: UpstreamAddress, path: str) -> str:
    return f"http://{address.host}:{address.port}{path}"


def _session(address: UpstreamAddress) -> tuple[aiohttp.ClientSession, str]:
    """A client session reaching `address` (TCP or Unix socket), and the URL base to use."""
    if address.unix_path is not None:
        connector = aiohttp.UnixConnector(path=address.unix_path)
        return aiohttp.ClientSession(connector=connector), "http://localhost"
    return aiohttp.ClientSession(), f"http://{address.host}:{address.port}"


async def get_info(address: UpstreamAddress) -> dict[str, Any]:
    """GET /info from a fault server or the built-in server."""
    session, base = _session(address)
    async with session, session.get(f"{base}/info") as response:
        document: dict[str, Any] = await response.json()
        return document


async def invoke(address: UpstreamAddress, body: bytes) -> tuple[int, bytes]:
    """POST /invocations with a CSV body; status and body."""
    session, base = _session(address)
    headers = {"Content-Type": "text/csv", "Accept": "text/csv"}
    async with (
        session,
        session.post(f"{base}/invocations", data=body, headers=headers) as response,
    ):
        return response.status, await response.read()


def environ_of(pid: int) -> dict[str, str]:
    """The environment a process started with."""
    pairs = (item.partition("=") for item in proc_file(pid, "environ").splitlines() if item)
    return {key: value for key, _, value in pairs}


def live_pids(fleet: VariantFleet) -> list[int]:
    """The pids of a fleet's running processes."""
    return [info.pid for info in fleet.instances() if info.pid is not None]


# --- start, traffic, pinning, environment ------------------------------------------------------


async def test_byo_fleet_is_healthy_only_after_a_ping_pinned_and_isolated(
    supervisor: Supervisor,
    listener: RecordingListener,
    marker: str,
    byo_model: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPLITSERVE_TEST_GATEWAY_SECRET", "do-not-leak")
    fleet = supervisor.fleet(
        deployment(
            marker,
            image=BYO_IMAGE,
            model_data=byo_model,
            environment={"MODEL_SETTING": "from-create-model"},
            count=2,
        )
    )
    pinged_when_healthy: dict[str, int] = {}

    def check_ping(instance: InstanceInfo) -> None:
        # Blocking on purpose: the instance must already answer when it is announced.
        with urllib.request.urlopen(_url(instance.address, "/ping"), timeout=2) as response:
            pinged_when_healthy[instance.name] = response.status

    listener.on_healthy = check_ping
    assert fleet.instances() == []
    await fleet.start()

    infos = fleet.instances()
    assert [info.name for info in infos] == ["ep/A/g1/0", "ep/A/g1/1"]
    assert all(info.state == "healthy" and info.restarts == 0 for info in infos)
    assert all(info.pipeline_depth == 1 for info in infos)  # its entry does not say it can
    assert [event.kind for event in listener.events] == ["healthy", "healthy"]
    assert pinged_when_healthy == {"ep/A/g1/0": 200, "ep/A/g1/1": 200}
    assert {event.instance.name for event in listener.events} == {info.name for info in infos}

    for info in infos:
        assert info.pid is not None
        assert info.address.host == "127.0.0.1"
        assert os.sched_getaffinity(info.pid) == set(info.cpus)
        status, body = await invoke(info.address, b"1,2,3\n0,0,0\n")
        assert status == 200
        assert len(body.decode().splitlines()) == 2
        environment = environ_of(info.pid)
        assert "SPLITSERVE_TEST_GATEWAY_SECRET" not in environment
        assert environment["MODEL_SETTING"] == "from-create-model"
        assert environment["SAGEMAKER_BIND_TO_PORT"] == str(info.address.port)
        private_dir = Path(environment["HOME"])
        assert environment["TMPDIR"] == str(private_dir)
        assert private_dir.parent == supervisor.run_dir / "w"
        assert stat.S_IMODE(os.stat(private_dir).st_mode) == 0o700
        model_dir = Path(environment["SM_MODEL_DIR"])
        assert exists(model_dir / "model.json")
        assert not os.access(model_dir, os.W_OK) or os.geteuid() == 0
        assert set(environment) <= {
            "PATH",
            "LANG",
            "LC_ALL",
            "HOME",
            "TMPDIR",
            "OMP_NUM_THREADS",
            "PYTHONUNBUFFERED",
            "MODEL_SETTING",
            MARKER_VARIABLE,
            "SAGEMAKER_BIND_TO_PORT",
            "SM_MODEL_DIR",
        }
    await fleet.stop()
    assert [event.kind for event in listener.events[2:]] == ["unhealthy", "unhealthy"]
    assert all(info.state == "stopped" and info.pid is None for info in fleet.instances())
    assert not exists(model_dir)
    assert supervisor.cpu_allocator.allocations() == {}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
async def test_instances_are_spread_over_cpus(
    settings: WorkerSettings, images: ImageRegistry, listener: RecordingListener, marker: str
) -> None:
    tiny = InstanceType("ml.test.tiny", 1, 1.0)
    cpus = tuple(sorted(os.sched_getaffinity(0)))[:2]
    supervisor = Supervisor(
        fast_settings(settings.run_dir, cpu_pool=cpus),
        images,
        InstanceCatalog([tiny]),
        listener,
        artifact_roots=ARTIFACT_ROOTS,
    )
    try:
        fleet = supervisor.fleet(deployment(marker, instance_type="ml.test.tiny", count=2))
        await fleet.start()
        pinned = [(info.cpus, os.sched_getaffinity(info.pid or 0)) for info in fleet.instances()]
        assert pinned == [((cpus[0],), {cpus[0]}), ((cpus[1],), {cpus[1]})]
        info = await get_info(fleet.instances()[0].address)
        assert info["cpus"] == [cpus[0]]
    finally:
        await supervisor.close()
    assert processes_with_marker(marker) == []


async def test_built_in_workers_listen_on_unix_sockets(
    supervisor: Supervisor,
    marker: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Runs the fault server in place of the built-in server: the same command line, on a socket.
    real_launch = VariantFleet._builtin_launch

    def fault_server_launch(fleet: VariantFleet, instance: Any) -> Any:
        launch = real_launch(fleet, instance)
        launch.argv[1:3] = [str(FAULT_SERVER)]
        return launch

    monkeypatch.setattr(VariantFleet, "_builtin_launch", fault_server_launch)
    model = tmp_path / "xgboost-model"
    model.write_bytes(b"not read by the fault server")
    fleet = supervisor.fleet(deployment(marker, image=XGBOOST_IMAGE, model_data=model))
    await fleet.start()
    (info,) = fleet.instances()
    assert info.address.unix_path is not None
    socket_path = Path(info.address.unix_path)
    assert socket_path.parent == supervisor.run_dir / "s"
    assert len(socket_path.name) == len("01234567.sock")
    assert (await get_info(info.address))["cpus"] == list(info.cpus)
    assert info.pid is not None
    argv = proc_file(info.pid, "cmdline").split("\n")
    assert argv[argv.index("--unix") + 1] == str(socket_path)
    assert argv[argv.index("--max-batch-rows") + 1] == "64"
    await fleet.stop()
    assert not exists(socket_path)


async def test_a_run_dir_too_long_for_a_socket_is_refused(
    images: ImageRegistry, listener: RecordingListener, marker: str, tmp_path: Path
) -> None:
    settings = fast_settings(Path("/tmp") / ("x" * 100))
    supervisor = Supervisor(
        settings, images, InstanceCatalog(), listener, artifact_roots=ARTIFACT_ROOTS
    )
    model = tmp_path / "xgboost-model"
    model.write_bytes(b"m")
    with pytest.raises(DeploymentError, match="over the 107-byte limit"):
        supervisor.fleet(deployment(marker, image=XGBOOST_IMAGE, model_data=model))
    # TCP workers have no such limit.
    tcp = Supervisor(
        fast_settings(settings.run_dir, use_tcp=True),
        images,
        InstanceCatalog(),
        listener,
        artifact_roots=ARTIFACT_ROOTS,
    )
    assert tcp.fleet(deployment(marker, image=XGBOOST_IMAGE, model_data=model)) is not None


async def test_memory_cap_sets_rlimit_as(
    settings: WorkerSettings, images: ImageRegistry, listener: RecordingListener, marker: str
) -> None:
    supervisor = Supervisor(
        fast_settings(settings.run_dir, memory_cap=True),
        images,
        InstanceCatalog(),
        listener,
        artifact_roots=ARTIFACT_ROOTS,
    )
    try:
        fleet = supervisor.fleet(deployment(marker, instance_type="ml.t2.medium"))
        await fleet.start()
        (info,) = fleet.instances()
        assert info.pid is not None
        limits = proc_file(info.pid, "limits")
        line = next(line for line in limits.splitlines() if line.startswith("Max address space"))
        assert line.split()[3] == str(4 * 1024**3)
    finally:
        await supervisor.close()


# --- failures and restarts ----------------------------------------------------------------------


async def test_a_killed_instance_is_restarted_after_a_backoff(
    supervisor: Supervisor, listener: RecordingListener, marker: str
) -> None:
    fleet = supervisor.fleet(deployment(marker, count=2))
    await fleet.start()
    first, second = fleet.instances()
    assert first.pid is not None
    killed_at = time.monotonic()
    os.kill(first.pid, signal.SIGKILL)
    await listener.wait_for_kinds(first.name, ["healthy", "unhealthy", "healthy"])

    unhealthy, healthy = listener.events[-2:]
    assert unhealthy.instance.name == first.name
    assert healthy.at - killed_at >= supervisor.settings.restart_backoff_initial_seconds
    restarted = fleet.instances()[0]
    assert restarted.restarts == 1
    assert restarted.state == "healthy"
    assert restarted.pid not in (None, first.pid)
    assert restarted.cpus == first.cpus
    assert not process_alive(first.pid)
    assert healthy.instance.address == restarted.address
    # The other instance was not touched.
    assert listener.kinds(second.name) == ["healthy"]
    assert fleet.instances()[1].pid == second.pid


async def test_a_crash_during_a_request_is_restarted(
    supervisor: Supervisor, listener: RecordingListener, marker: str
) -> None:
    fleet = supervisor.fleet(deployment(marker, environment={"FAULT_CRASH_ON_REQUEST": "1"}))
    await fleet.start()
    (info,) = fleet.instances()
    with pytest.raises(aiohttp.ClientError):
        await invoke(info.address, b"1")
    await listener.wait_for_kinds(info.name, ["healthy", "unhealthy", "healthy"])
    assert fleet.instances()[0].restarts == 1


async def test_restarts_back_off_exponentially_until_the_instance_recovers(
    supervisor: Supervisor, listener: RecordingListener, marker: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    fleet = supervisor.fleet(
        deployment(marker, environment={"FAULT_EXIT_IF_FILE_EXISTS": str(broken)})
    )
    await fleet.start()
    (info,) = fleet.instances()
    assert info.pid is not None
    broken.touch()  # every new process now exits at once
    os.kill(info.pid, signal.SIGKILL)
    killed_at = time.monotonic()

    restart_times: list[float] = []
    while len(restart_times) < 3:
        restarts = fleet.instances()[0].restarts
        if restarts > len(restart_times):
            restart_times.append(time.monotonic())
        await asyncio.sleep(0.01)  # restarts that never come end in the test's timeout
    gaps = [b - a for a, b in zip([killed_at, *restart_times], restart_times, strict=False)]
    # Each wait is at least the backoff (0.2, 0.4, 0.8 s), whatever the start-up time adds.
    for gap, backoff in zip(gaps, [0.2, 0.4, 0.8], strict=True):
        assert gap >= backoff - 0.03, gaps
    assert listener.kinds(info.name) == ["healthy", "unhealthy"]
    assert fleet.instances()[0].state in ("unhealthy", "starting")

    broken.unlink()
    await listener.wait_for_kinds(info.name, ["healthy", "unhealthy", "healthy"])
    assert fleet.instances()[0].restarts >= 3


async def test_a_hung_instance_is_replaced(
    supervisor: Supervisor, listener: RecordingListener, marker: str
) -> None:
    fleet = supervisor.fleet(deployment(marker, environment={"FAULT_PING_HANG_AFTER": "3"}))
    await fleet.start()
    (info,) = fleet.instances()
    await listener.wait_for_kinds(info.name, ["healthy", "unhealthy", "healthy"], within=15)
    replaced = fleet.instances()[0]
    assert replaced.restarts == 1
    assert replaced.pid != info.pid
    assert info.pid is not None
    assert not process_alive(info.pid)


# --- scaling and stopping -----------------------------------------------------------------------


async def test_scale_up_and_down_drains_a_request_in_flight(
    supervisor: Supervisor, listener: RecordingListener, marker: str
) -> None:
    # The server dies at SIGTERM, dropping what is in flight: only the drain saves the request.
    fleet = supervisor.fleet(
        deployment(
            marker,
            environment={"FAULT_INVOCATION_DELAY_SECONDS": "1.0", "FAULT_DIE_ON_SIGTERM": "1"},
        )
    )
    await fleet.start()
    await fleet.scale(3)
    infos = fleet.instances()
    assert [info.state for info in infos] == ["healthy"] * 3
    assert [event.kind for event in listener.events] == ["healthy"] * 3
    last = infos[2]
    assert last.pid is not None

    async def tracked_request() -> tuple[int, bytes, float]:
        listener.in_flight_counts[last.name] += 1
        try:
            status, body = await invoke(last.address, b"slow")
            return status, body, time.monotonic()
        finally:
            listener.in_flight_counts[last.name] -= 1

    request = asyncio.create_task(tracked_request())
    await wait_until(lambda: listener.in_flight_counts[last.name] == 1)
    await asyncio.sleep(0.2)  # the request has reached the server
    await fleet.scale(1)
    stopped_at = time.monotonic()
    status, body, answered_at = await request
    assert (status, body) == (200, b"slow")
    assert answered_at <= stopped_at
    unhealthy_at = next(
        event.at
        for event in listener.events
        if event.kind == "unhealthy" and event.instance.name == last.name
    )
    assert unhealthy_at < answered_at  # no new traffic while it drained
    assert not process_alive(last.pid)
    assert [info.name for info in fleet.instances()] == ["ep/A/g1/0"]
    assert listener.kinds("ep/A/g1/1") == ["healthy", "unhealthy"]
    assert listener.kinds("ep/A/g1/2") == ["healthy", "unhealthy"]
    assert listener.kinds("ep/A/g1/0") == ["healthy"]
    assert set(supervisor.cpu_allocator.allocations()) == {"ep/A/g1/0"}
    # Growing again reuses the freed indices.
    await fleet.scale(2)
    assert [info.name for info in fleet.instances()] == ["ep/A/g1/0", "ep/A/g1/1"]


async def test_stop_sends_sigkill_to_a_server_ignoring_sigterm(
    images: ImageRegistry,
    listener: RecordingListener,
    marker: str,
    run_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor(
        fast_settings(run_dir, stop_grace_seconds=1.0),
        images,
        InstanceCatalog(),
        listener,
        artifact_roots=ARTIFACT_ROOTS,
    )
    try:
        stubborn = supervisor.fleet(
            deployment(marker, environment={"FAULT_IGNORE_SIGTERM": "1"}, variant="stubborn")
        )
        polite = supervisor.fleet(deployment(marker, variant="polite"))
        await asyncio.gather(stubborn.start(), polite.start())
        pids = live_pids(stubborn) + live_pids(polite)

        caplog.set_level(logging.WARNING, logger="splitserve.workers.output")
        await polite.stop()
        sigkills = [r.getMessage() for r in caplog.records if "sending SIGKILL" in r.getMessage()]
        assert sigkills == []  # SIGTERM was enough

        started = time.monotonic()
        await stubborn.stop()
        assert time.monotonic() - started >= 1.0  # it was given its grace first
        sigkills = [r.getMessage() for r in caplog.records if "sending SIGKILL" in r.getMessage()]
        assert len(sigkills) == 1
        assert "/stubborn/" in sigkills[0]
        assert not any(process_alive(pid) for pid in pids)
        await stubborn.stop()  # idempotent
        assert supervisor.fleets() == []
    finally:
        await supervisor.close()


async def test_a_fleet_cannot_be_reused_or_scaled_to_zero(
    supervisor: Supervisor, marker: str
) -> None:
    fleet = supervisor.fleet(deployment(marker))
    with pytest.raises(DeploymentError, match="already deployed"):
        supervisor.fleet(deployment(marker))
    await fleet.start()
    with pytest.raises(DeploymentError, match="already started"):
        await fleet.start()
    with pytest.raises(DeploymentError, match="at least 1"):
        await fleet.scale(0)
    # Another generation of the same variant (a blue/green update) is fine.
    green = supervisor.fleet(deployment(marker, generation=2))
    assert green.model_dir != fleet.model_dir
    await fleet.stop()
    with pytest.raises(DeploymentError, match="was stopped"):
        await fleet.scale(2)
    await supervisor.close()
    with pytest.raises(DeploymentError, match="shut down"):
        supervisor.fleet(deployment(marker, generation=3))


async def test_stop_interrupts_a_start_in_progress(
    supervisor: Supervisor, listener: RecordingListener, marker: str
) -> None:
    fleet = supervisor.fleet(deployment(marker, environment={"FAULT_NEVER_LISTEN": "1"}, count=2))
    starting = asyncio.create_task(fleet.start())
    await wait_until(lambda: len(live_pids(fleet)) == 2)
    await fleet.stop()
    with pytest.raises(DeploymentError, match="stopped while starting"):
        await starting
    assert listener.events == []


# --- failure reasons ----------------------------------------------------------------------------


async def test_failure_reason_missing_artifact(
    supervisor: Supervisor, marker: str, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "model.tar.gz"
    fleet = supervisor.fleet(deployment(marker, model_data=missing))
    with pytest.raises(DeploymentError, match=f"model artifact not found: {missing}"):
        await fleet.start()
    assert supervisor.fleets() == []


async def test_failure_reason_unknown_image_and_instance_type(
    supervisor: Supervisor, marker: str
) -> None:
    with pytest.raises(DeploymentError, match="unknown image 'acme/model:1'") as raised:
        supervisor.fleet(deployment(marker, image="acme/model:1"))
    assert "images.toml" in raised.value.message
    with pytest.raises(DeploymentError, match=r"unknown instance type 'ml\.t3\.medium'"):
        supervisor.fleet(deployment(marker, instance_type="ml.t3.medium"))
    with pytest.raises(DeploymentError, match="needs a model artifact"):
        supervisor.fleet(deployment(marker, image=XGBOOST_IMAGE))
    assert supervisor.fleets() == []


async def test_failure_reason_model_does_not_load(
    supervisor: Supervisor, listener: RecordingListener, marker: str, tmp_path: Path
) -> None:
    fleet = supervisor.fleet(
        deployment(
            marker,
            count=2,
            environment={
                "FAULT_EXIT_AT_START": "2",
                "FAULT_EXIT_MESSAGE": "error: the model file is corrupt",
            },
        )
    )
    with pytest.raises(DeploymentError) as raised:
        await fleet.start()
    message = raised.value.message
    assert "exited with status 2 before answering GET /ping" in message
    assert "the model file is corrupt" in message
    assert len(message) <= 1024
    assert processes_with_marker(marker) == []
    assert listener.events == []
    assert supervisor.cpu_allocator.allocations() == {}
    assert not fleet.model_dir.exists()

    # The example BYO server with no model in its directory says so.
    empty = tmp_path / "empty"
    empty.mkdir()
    byo = supervisor.fleet(deployment(marker, image=BYO_IMAGE, model_data=empty, variant="B"))
    with pytest.raises(DeploymentError, match=r"no model\.json or model\.npy"):
        await byo.start()


async def test_failure_reason_health_check_timeout(
    images: ImageRegistry, listener: RecordingListener, marker: str, run_dir: Path
) -> None:
    settings = fast_settings(run_dir, startup_timeout_seconds=1.0, stop_grace_seconds=0.5)
    supervisor = Supervisor(
        settings, images, InstanceCatalog(), listener, artifact_roots=ARTIFACT_ROOTS
    )
    try:
        fleet = supervisor.fleet(deployment(marker, environment={"FAULT_NEVER_LISTEN": "1"}))
        started = time.monotonic()
        with pytest.raises(DeploymentError, match=r"GET /ping with 200 within 1 s") as raised:
            await fleet.start()
        assert time.monotonic() - started >= 1.0  # the start-up timeout ran out, no sooner
        assert "health check timeout" in raised.value.message
        assert processes_with_marker(marker) == []
    finally:
        await supervisor.close()


async def test_failure_reason_command_not_found(
    listener: RecordingListener, marker: str, run_dir: Path, tmp_path: Path
) -> None:
    registry = tmp_path / "images.toml"
    registry.write_text('[images."a/b:1"]\ncommand = ["/nonexistent/server"]\n')
    supervisor = Supervisor(
        fast_settings(run_dir),
        ImageRegistry.load(registry),
        InstanceCatalog(),
        listener,
        artifact_roots=ARTIFACT_ROOTS,
    )
    fleet = supervisor.fleet(deployment(marker, image="a/b:1"))
    with pytest.raises(DeploymentError, match="could not start the model server"):
        await fleet.start()
    await supervisor.close()


# --- no orphans ---------------------------------------------------------------------------------

_PARENT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    import uvloop
    from splitserve.config import WorkerSettings
    from splitserve.workers.catalog import InstanceCatalog
    from splitserve.workers.images import ImageRegistry
    from splitserve.workers.supervisor import Supervisor, VariantDeployment

    class Listener:
        def instance_healthy(self, instance): pass
        def instance_unhealthy(self, instance): pass
        def in_flight(self, name): return 0

    async def main():
        run_dir, registry, marker = sys.argv[1:4]
        supervisor = Supervisor(
            WorkerSettings(run_dir=Path(run_dir), worker_user="root"),
            ImageRegistry.load(Path(registry)),
            InstanceCatalog(),
            Listener(),
            artifact_roots=(),
        )
        fleet = supervisor.fleet(VariantDeployment(
            "ep", "A", 1, "test.local/fault-server:1", None,
            {"SPLITSERVE_TEST_MARKER": marker}, "ml.m5.large", 2,
        ))
        await fleet.start()
        print(json.dumps([info.pid for info in fleet.instances()]), flush=True)
        await asyncio.sleep(3600)

    uvloop.run(main())  # the gateway's loop
    """
)


def test_no_orphans_after_the_gateway_is_killed(
    images: ImageRegistry, marker: str, run_dir: Path
) -> None:
    assert images.source is not None
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(run_dir), str(images.source), marker],
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        pids = json.loads(parent.stdout.readline())
        assert len(pids) == 2
        assert all(process_alive(pid) for pid in pids)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(process_alive(pid) for pid in pids)
        assert processes_with_marker(marker) == []
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        for pid in processes_with_marker(marker):
            os.kill(pid, signal.SIGKILL)


# --- the built-in XGBoost server ----------------------------------------------------------------

needs_xgboost_server = pytest.mark.skipif(
    not XGBOOST_SERVER.exists(), reason="the built-in XGBoost server is not written yet"
)


@needs_xgboost_server
@pytest.mark.parametrize("use_tcp", [False, True], ids=["unix", "tcp"])
async def test_built_in_xgboost_fleet(
    images: ImageRegistry,
    listener: RecordingListener,
    marker: str,
    run_dir: Path,
    tmp_path: Path,
    use_tcp: bool,
) -> None:
    supervisor = Supervisor(
        fast_settings(run_dir, use_tcp=use_tcp, startup_timeout_seconds=30.0),
        images,
        InstanceCatalog(),
        listener,
        artifact_roots=ARTIFACT_ROOTS,
    )
    from tests.support.models import NUM_FEATURES, train_binary_model, write_model_tarball

    booster = train_binary_model(seed=3, rounds=3)
    artifact = write_model_tarball(booster, tmp_path / "model.tar.gz")
    try:
        fleet = supervisor.fleet(deployment(marker, image=XGBOOST_IMAGE, model_data=artifact))
        await fleet.start()
        (info,) = fleet.instances()
        assert listener.kinds(info.name) == ["healthy"]
        assert (info.address.unix_path is None) == use_tcp
        # The built-in server answers pipelined requests concurrently: the gateway may pipeline.
        assert info.pipeline_depth == WorkerSettings().pipeline_depth > 1
        document = await get_info(info.address)
        assert sorted(document["cpus"]) == list(info.cpus)
        assert document["nthread"] == len(info.cpus)
        row = ",".join(["0.5"] * NUM_FEATURES)
        status, body = await invoke(info.address, f"{row}\n{row}\n".encode())
        assert status == 200
        assert len(body.decode().splitlines()) == 2
        await fleet.stop()
    finally:
        await supervisor.close()
    assert processes_with_marker(marker) == []


@needs_xgboost_server
async def test_built_in_xgboost_model_that_does_not_load(
    supervisor: Supervisor, marker: str, tmp_path: Path
) -> None:
    corrupt = tmp_path / "xgboost-model"
    corrupt.write_bytes(b"this is not a model")
    fleet = supervisor.fleet(deployment(marker, image=XGBOOST_IMAGE, model_data=corrupt))
    with pytest.raises(DeploymentError, match="exited with status 2") as raised:
        await fleet.start()
    assert "last output" in raised.value.message
    assert processes_with_marker(marker) == []


# --- the output ring behind failure reasons -----------------------------------------------------


def test_output_ring_keeps_the_last_lines_within_bounds() -> None:
    from splitserve.workers.output import OutputRing

    ring = OutputRing(max_lines=3, max_line_chars=10)
    for index in range(5):
        ring.append(f"line {index}")
    ring.append("x" * 50)
    assert ring.lines() == ["line 3", "line 4", "x" * 10 + "…"]
    assert ring.tail(1000) == "line 3\nline 4\n" + "x" * 10 + "…"
    assert ring.tail(20) == "line 4\n" + "x" * 10 + "…"
    tail = ring.tail(6)
    assert tail.startswith("…")
    assert len(tail) <= 6
