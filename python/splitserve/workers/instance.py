"""One worker instance: its process, state, health checks and restarts with backoff.

The life of an instance, as the listener (the gateway, which tells the router) sees it:

1. started -> polled on /ping until the first 200 -> `instance_healthy`: only now may it take
   traffic;
2. pinged every `health_interval_seconds`; `unhealthy_after_failures` failed pings in a row, or the
   process exiting -> `instance_unhealthy`, the process group is killed, and after an exponential
   backoff a new process starts (the instance keeps its name, CPUs, private directory and socket
   path; a TCP port may change, so use the address of each `instance_healthy`) ->
   `instance_healthy` after its first 200;
3. stopped (scale-in, update, delete, shutdown) -> `instance_unhealthy`, drain until the listener's
   `in_flight` is 0, SIGTERM to its process group, SIGKILL `stop_grace_seconds` later; its private
   directory is removed.

A ping the gateway could not even send because it is out of file descriptors (EMFILE, ENFILE) says
nothing about the instance: it is logged and counts neither as a failure nor as a success, so a
gateway short of descriptors never replaces healthy instances (which would make things worse).

This life is the same wherever an instance runs: `WorkerInstance` lives it, and a small
`InstanceBackend` per placement says how a process is started, watched and stopped: `LocalProcess`
(a child process here, whose command its owner `VariantFleet` decides through the `LaunchPlanner`
it is given) or `ray_placement.ActorProcess` (a Ray actor on a cluster node, which may also adopt
a process a previous controller left running). The instance does not know its fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from splitserve.config import WorkerSettings
from splitserve.contract.upstream import UpstreamAddress, UpstreamError, UpstreamPool
from splitserve.errors import DeploymentError
from splitserve.workers.process import (
    OutputFile,
    SpawnLimits,
    WorkerProcess,
    WorkerUser,
    spawn_worker,
)

logger = logging.getLogger(__name__)

#: DescribeEndpoint's FailureReason holds at most this many characters.
MAX_FAILURE_REASON_CHARS = 1024

#: How often a starting instance is pinged until its first 200 (a start-up detail, not a policy).
_STARTUP_POLL_SECONDS = 0.05

#: How often a drain checks the listener's in-flight count.
_DRAIN_POLL_SECONDS = 0.02

#: A /ping answer is a status line and a few bytes; a larger one is not an answer.
_PING_MAX_RESPONSE_BYTES = 64 * 1024

#: The errors of a gateway out of file descriptors (its own, or the system's).
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class InstanceInfo:
    """A read-only snapshot of one instance.

    Attributes:
        name: unique across the process: `{endpoint}/{variant}/g{generation}/{index}`.
        variant_name: the variant it serves.
        address: where it listens.
        cpus: the CPUs it is pinned to.
        pid: its current process, or None when none runs.
        state: "starting" | "healthy" | "unhealthy" | "stopping" | "stopped".
        restarts: how many times its process was replaced.
        node: the address of the node it runs on when placed on a cluster (Ray), else None.
        node_id: the cluster's id of that node, else None.
        vcpus: the vCPUs its instance type reserves on that node, else None.
    """

    name: str
    variant_name: str
    address: UpstreamAddress
    cpus: tuple[int, ...]
    pid: int | None
    state: str
    restarts: int
    node: str | None = None
    node_id: str | None = None
    vcpus: int | None = None


class InstanceListener(Protocol):
    """What the gateway implements to learn which instances may take traffic."""

    def instance_healthy(self, instance: InstanceInfo) -> None:
        """`instance` passed a ping and may take traffic (its address may have changed)."""

    def instance_unhealthy(self, instance: InstanceInfo) -> None:
        """`instance` must get no new traffic (it failed, or is being stopped)."""

    def in_flight(self, instance_name: str) -> int:
        """How many requests the gateway has in flight to the instance (used to drain it)."""


@dataclass(frozen=True)
class Launch:
    """How to start one process of an instance.

    Attributes:
        argv: the server's program and arguments.
        environment: its complete environment.
        cwd: its working directory.
        address: where it will listen.
    """

    argv: list[str]
    environment: dict[str, str]
    cwd: Path
    address: UpstreamAddress


class LaunchPlanner(Protocol):
    """What an instance asks its owner before each start of a process."""

    def plan(self, instance: LocalProcess) -> Launch:
        """The command, environment and address of `instance`'s next process.

        Raises:
            DeploymentError: no address could be found for it.
        """


class LoopbackPorts:
    """TCP ports of `host` (loopback by default) handed out to instances, so no two instances
    get the same one."""

    def __init__(self, host: str = LOOPBACK) -> None:
        self.host = host
        self._ports: dict[str, int] = {}

    def take(self, owner: str) -> int:
        """A free loopback port for `owner` (replacing the one it had).

        Raises:
            DeploymentError: no free port was found.
        """
        self.release(owner)
        taken = set(self._ports.values())
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((self.host, 0))
                port: int = probe.getsockname()[1]
            if port not in taken:
                self._ports[owner] = port
                return port
        raise DeploymentError("could not find a free loopback port")

    def release(self, owner: str) -> None:
        """Give `owner`'s port back (nothing if it has none)."""
        self._ports.pop(owner, None)


class PingResult(enum.Enum):
    """What one health check found."""

    #: /ping answered 200 in time.
    OK = "ok"
    #: No answer, another status, or too late.
    FAILED = "failed"
    #: The gateway is out of file descriptors: the instance was not checked at all.
    NOT_CHECKED = "not checked"


def _out_of_descriptors(error: BaseException) -> bool:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in _OUT_OF_DESCRIPTORS:
            return True
        cause = cause.__cause__
    return False


class HealthProbe:
    """GET /ping against one address, through the forwarding client (a fresh connection each
    time: this is not the hot path, and a hung connection must not outlive its check)."""

    def __init__(self, address: UpstreamAddress, timeout_seconds: float) -> None:
        """Probe `address`, giving each ping `timeout_seconds` (connecting included)."""
        self._address = address
        self._timeout = timeout_seconds
        self._pool = UpstreamPool(
            address,
            max_idle=0,
            max_connections=1,
            connect_timeout=timeout_seconds,
            max_response_bytes=_PING_MAX_RESPONSE_BYTES,
        )

    async def ping(self) -> PingResult:
        """Check once; see `PingResult`."""
        try:
            response = await self._pool.request(b"GET", b"/ping", (), b"", self._timeout)
        except (UpstreamError, OSError) as error:
            if _out_of_descriptors(error):
                logger.warning(
                    "could not check %s: the gateway is out of file descriptors (%s); not"
                    " counted as a failed health check",
                    self._address,
                    error,
                )
                return PingResult.NOT_CHECKED
            return PingResult.FAILED
        return PingResult.OK if response.status == 200 else PingResult.FAILED

    async def close(self) -> None:
        """Close the probe's connection, if one is open."""
        await self._pool.close()


@dataclass(frozen=True)
class ProcessExit:
    """How the process of an instance ended.

    Attributes:
        status: its exit status, or None when it is not known.
        cause: set when what ran it was lost with it (a Ray actor, or its node), in place of a
            status: the reason as people read it.
    """

    status: int | None
    cause: str | None = None

    def describe(self) -> str:
        """Why the instance stopped, for the log and a FailureReason."""
        if self.cause is not None:
            return self.cause
        return f"the process exited with status {describe_status(self.status)}"


@dataclass(frozen=True)
class ProcessDetails:
    """What a backend knows of the process it runs, for `InstanceInfo`.

    Attributes:
        cpus: the CPUs it is pinned to (or may run on).
        pid: its process id on this host, or None (none runs, or it runs on another host).
        node: the address of its cluster node, or None.
        node_id: the cluster's id of that node, or None.
        vcpus: the vCPUs its instance type reserves on that node, or None.
    """

    cpus: tuple[int, ...]
    pid: int | None = None
    node: str | None = None
    node_id: str | None = None
    vcpus: int | None = None


class InstanceBackend(Protocol):
    """How one placement starts, watches and stops the process of one instance: a child
    process here (`LocalProcess`) or a Ray actor on a node (`ray_placement.ActorProcess`).
    `WorkerInstance` drives it through the life every instance shares."""

    def placeholder_address(self) -> UpstreamAddress:
        """The address to show before the first process told its own."""
        ...

    def details(self) -> ProcessDetails:
        """The current process's CPUs, pid and node."""
        ...

    async def adopt(self) -> UpstreamAddress | None:
        """Take over a process a previous controller left running and that answers /ping;
        its address, or None when there is none (a new one is then launched)."""
        ...

    async def launch(self) -> UpstreamAddress:
        """Start a new process; where it will listen (it may still be loading).

        Raises:
            DeploymentError: it could not be started.
        """
        ...

    async def wait_exit(self) -> ProcessExit:
        """Return once the current process ended (or was lost)."""
        ...

    async def output_tail(self, max_chars: int) -> str:
        """The last output of the current process, at most `max_chars` characters ("" if none
        can be had)."""
        ...

    async def retire(self) -> None:
        """Kill the current process at once: it failed (no grace)."""
        ...

    async def stop(self, grace_seconds: float) -> None:
        """Stop the current process (SIGTERM, SIGKILL `grace_seconds` later) and remove what
        the instance kept: it is being stopped for good."""
        ...


class WorkerInstance:
    """One instance, and the task that keeps it running; it starts as soon as it is made.

    The life is the same wherever the process runs (the module docstring); what differs, how a
    process is started, watched and stopped, is the `backend`'s.

    Args:
        name: its unique name, `{endpoint}/{variant}/g{generation}/{index}`.
        variant_name: the variant it serves.
        backend: starts, watches and stops its processes.
        settings: health-check, backoff and stop timing.
        listener: told of health changes, asked for in-flight counts.
        startup_timeout_seconds: how long a new process has to pass its first /ping.
    """

    def __init__(
        self,
        name: str,
        variant_name: str,
        backend: InstanceBackend,
        settings: WorkerSettings,
        listener: InstanceListener,
        startup_timeout_seconds: float,
    ) -> None:
        self.name = name
        self.variant_name = variant_name
        self.backend = backend
        self._settings = settings
        self._listener = listener
        self._startup_timeout = startup_timeout_seconds
        self._state = "starting"
        self._restarts = 0
        self._address: UpstreamAddress | None = None
        #: Whether the listener was last told this instance is healthy.
        self._announced = False
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name=f"instance {self.name}")
        self._stop_task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> asyncio.Future[None]:
        """Done once the first process passed its first /ping; failed with DeploymentError if
        it never did; cancelled if the instance was stopped first."""
        return self._ready

    def info(self) -> InstanceInfo:
        """A snapshot for the listener and the fleet's `instances`."""
        details = self.backend.details()
        return InstanceInfo(
            name=self.name,
            variant_name=self.variant_name,
            address=self._address or self.backend.placeholder_address(),
            cpus=details.cpus,
            pid=details.pid,
            state=self._state,
            restarts=self._restarts,
            node=details.node,
            node_id=details.node_id,
            vcpus=details.vcpus,
        )

    def stop(self) -> asyncio.Task[None]:
        """Drain and stop this instance (idempotent: every call gets the same task)."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(), name=f"stop {self.name}")
        return self._stop_task

    async def detach(self) -> None:
        """Stop watching the instance and leave its process running (for a controller going
        away whose instances outlive it)."""
        await self._end_supervision()

    # --- lifecycle ---------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            address = await self.backend.adopt()
            if address is None:
                await self._launch()
            else:
                self._address = address
            self._ready.set_result(None)
            self._become_healthy()
            await self._supervise()
        except asyncio.CancelledError:
            if not self._ready.done():
                self._ready.cancel()
            raise
        except DeploymentError as error:
            if not self._ready.done():
                self._ready.set_exception(error)
        except Exception:
            logger.exception("supervision of %s failed", self.name)
            if not self._ready.done():
                self._ready.set_exception(
                    DeploymentError(f"instance {self.name}: an internal error stopped its start-up")
                )

    async def _supervise(self) -> None:
        settings = self._settings
        failures_in_a_row = 0
        while True:
            healthy_seconds, reason = await self._watch()
            logger.warning("%s is unhealthy: %s", self.name, reason)
            self._state = "unhealthy"
            self._notify_unhealthy()
            await self.backend.retire()
            if healthy_seconds >= settings.restart_backoff_max_seconds:
                failures_in_a_row = 0
            while True:
                failures_in_a_row += 1
                delay = min(
                    settings.restart_backoff_initial_seconds * 2 ** (failures_in_a_row - 1),
                    settings.restart_backoff_max_seconds,
                )
                logger.info("restarting %s in %.2f s", self.name, delay)
                await asyncio.sleep(delay)
                self._restarts += 1
                try:
                    await self._launch()
                    break
                except DeploymentError as error:
                    logger.warning("restart of %s failed: %s", self.name, error.message)
                    self._state = "unhealthy"
                    await self.backend.retire()
            self._become_healthy()

    def _become_healthy(self) -> None:
        self._state = "healthy"
        logger.info("%s is healthy at %s (pid %s)", self.name, self._address, self.info().pid)
        self._announced = True
        try:
            self._listener.instance_healthy(self.info())
        except Exception:
            logger.exception("the listener failed on instance_healthy(%s)", self.name)

    def _notify_unhealthy(self) -> None:
        """Tell the listener no new traffic (only if it was told healthy)."""
        if not self._announced:
            return
        self._announced = False
        try:
            self._listener.instance_unhealthy(self.info())
        except Exception:
            logger.exception("the listener failed on instance_unhealthy(%s)", self.name)

    async def _launch(self) -> None:
        """Start a process and wait for its first good ping; DeploymentError if it never comes."""
        self._state = "starting"
        self._address = await self.backend.launch()
        await self._wait_first_ping(self._address)

    async def _wait_first_ping(self, address: UpstreamAddress) -> None:
        timeout = self._startup_timeout
        deadline = time.monotonic() + timeout
        exited = asyncio.ensure_future(self.backend.wait_exit())
        probe = HealthProbe(address, self._settings.ping_timeout_seconds)
        try:
            while True:
                if exited.done():
                    end = exited.result()
                    if end.cause is not None:
                        raise DeploymentError(
                            f"instance {self.name}: {end.cause} before it answered GET /ping"
                        )
                    raise DeploymentError(
                        await self._with_output(
                            f"instance {self.name}: the model server exited with status"
                            f" {describe_status(end.status)} before answering GET /ping"
                        )
                    )
                if await probe.ping() is PingResult.OK:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeploymentError(
                        await self._with_output(
                            f"instance {self.name}: the model server did not answer GET /ping"
                            f" with 200 within {timeout:g} s (health check timeout)"
                        )
                    )
                await asyncio.wait({exited}, timeout=min(_STARTUP_POLL_SECONDS, remaining))
        finally:
            exited.cancel()
            await probe.close()

    async def _watch(self) -> tuple[float, str]:
        """Ping until the instance fails; how long it was healthy, and why it failed."""
        address = self._address
        if address is None:
            raise RuntimeError(f"{self.name} has no process to watch")
        settings = self._settings
        healthy_since = time.monotonic()
        exited = asyncio.ensure_future(self.backend.wait_exit())
        probe = HealthProbe(address, settings.ping_timeout_seconds)
        failures = 0
        try:
            while True:
                await asyncio.wait({exited}, timeout=settings.health_interval_seconds)
                if exited.done():
                    return time.monotonic() - healthy_since, exited.result().describe()
                result = await probe.ping()
                if result is PingResult.OK:
                    failures = 0
                elif result is PingResult.FAILED:
                    failures += 1
                    if failures >= settings.unhealthy_after_failures:
                        reason = f"{failures} health checks in a row failed"
                        return time.monotonic() - healthy_since, reason
        finally:
            exited.cancel()
            await probe.close()

    async def _with_output(self, message: str) -> str:
        room = MAX_FAILURE_REASON_CHARS - len(message) - len("; last output:\n")
        tail = await self.backend.output_tail(max(room, 0))
        return f"{message}; last output:\n{tail}" if tail else f"{message} (it printed nothing)"

    # --- stopping ------------------------------------------------------------------------------

    async def _end_supervision(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if not self._ready.done():
            # Cancelled before it ever ran: its coroutine had no chance to settle this.
            self._ready.cancel()

    async def _stop(self) -> None:
        settings = self._settings
        await self._end_supervision()
        self._state = "stopping"
        if self._announced:
            self._notify_unhealthy()
            await self._drain(settings.stop_grace_seconds)
        await self.backend.stop(settings.stop_grace_seconds)
        self._state = "stopped"

    async def _drain(self, limit_seconds: float) -> None:
        deadline = time.monotonic() + limit_seconds
        while time.monotonic() < deadline:
            try:
                if self._listener.in_flight(self.name) <= 0:
                    return
            except Exception:
                logger.exception("the listener's in_flight(%s) failed", self.name)
                return
            await asyncio.sleep(_DRAIN_POLL_SECONDS)
        logger.warning("%s still had requests in flight after %.1f s", self.name, limit_seconds)


@dataclass(frozen=True)
class InstanceSetup:
    """Everything a local instance is given by its fleet.

    Attributes:
        name: its process-wide unique name.
        variant_name: the variant it serves.
        cpus: the CPUs it is pinned to.
        socket_path: the Unix socket it keeps across restarts, or None (it listens on TCP).
        private_dir: its HOME and TMPDIR, created before each start (mode 0700, owned by the
            worker user) and removed when it stops.
        limits: how its processes are confined.
        startup_timeout_seconds: how long a new process has to pass its first /ping.
        log_file: where every line its processes print is kept (rotated; kept after it stops,
            for the ModelError's LogStreamArn), or None for no file.
    """

    name: str
    variant_name: str
    cpus: tuple[int, ...]
    socket_path: Path | None
    private_dir: Path
    limits: SpawnLimits
    startup_timeout_seconds: float
    log_file: Path | None = None


class LocalProcess:
    """The `InstanceBackend` of a local instance: a child process of the gateway, spawned
    through the confining shim, pinned to its CPUs, restarted under the same name, private
    directory and socket path.

    Args:
        setup: what it is and how it runs.
        settings: the worker settings (listen host, log file rotation).
        planner: decides each process's command, environment and address.
        ports: where its TCP port, if any, is given back.
    """

    def __init__(
        self,
        setup: InstanceSetup,
        settings: WorkerSettings,
        planner: LaunchPlanner,
        ports: LoopbackPorts,
    ) -> None:
        self.setup = setup
        self.name = setup.name
        self._settings = settings
        self._planner = planner
        self._ports = ports
        self._worker: WorkerProcess | None = None
        self._log_file: OutputFile | None = None

    def placeholder_address(self) -> UpstreamAddress:
        """Its socket path, or the listen host until it has a port."""
        socket_path = self.setup.socket_path
        if socket_path is not None:
            return UpstreamAddress.unix(str(socket_path))
        return UpstreamAddress.tcp(self._settings.listen_host, 0)

    def details(self) -> ProcessDetails:
        """Its CPU set, and the pid of its process while one runs."""
        worker = self._worker
        pid = worker.pid if worker is not None and worker.returncode is None else None
        return ProcessDetails(cpus=self.setup.cpus, pid=pid)

    async def adopt(self) -> UpstreamAddress | None:
        """None: local processes die with the gateway that started them."""
        return None

    async def launch(self) -> UpstreamAddress:
        """Prepare the private directory and log file, plan the command and spawn it."""
        setup = self.setup
        try:
            await asyncio.to_thread(make_private_dir, setup.private_dir, setup.limits.user)
            if setup.log_file is not None and self._log_file is None:
                self._log_file = await asyncio.to_thread(
                    OutputFile,
                    setup.log_file,
                    self._settings.log_file_bytes,
                    self._settings.log_file_backups,
                )
            launch = self._planner.plan(self)
        except OSError as error:
            # E.g. the gateway out of descriptors or disk: a failed start, retried with backoff.
            raise DeploymentError(
                f"instance {self.name}: could not prepare its start: {error.strerror or error}"
            ) from error
        try:
            self._worker = await spawn_worker(
                launch.argv,
                name=self.name,
                environment=launch.environment,
                cwd=launch.cwd,
                limits=setup.limits,
                log_file=self._log_file,
            )
        except OSError as error:
            raise DeploymentError(
                f"instance {self.name}: could not start the model server"
                f" {launch.argv[0]!r}: {error.strerror or error}"
            ) from error
        return launch.address

    async def wait_exit(self) -> ProcessExit:
        """The exit status of the current process, once it exits."""
        worker = self._worker
        if worker is None:
            return ProcessExit(status=-1)
        return ProcessExit(status=await worker.wait())

    async def output_tail(self, max_chars: int) -> str:
        """The last lines the current process printed (all of them, once it exited)."""
        worker = self._worker
        if worker is None:
            return ""
        if worker.returncode is not None:
            await worker.kill()  # collects the output still in the pipe
        return worker.output.tail(max_chars)

    async def retire(self) -> None:
        """SIGKILL the process group (a hung server's whole group), give its port back."""
        worker = self._worker
        if worker is not None:
            await worker.kill()
            self._ports.release(self.name)

    async def stop(self, grace_seconds: float) -> None:
        """Stop the process, close its log file, remove its socket and private directory."""
        worker = self._worker
        if worker is not None:
            status = await worker.stop(grace_seconds)
            logger.info("%s stopped (status %s)", self.name, describe_status(status))
        if self._log_file is not None:
            self._log_file.close()
        self._ports.release(self.name)
        await asyncio.to_thread(
            _remove_instance_files, self.setup.socket_path, self.setup.private_dir
        )


def make_private_dir(path: Path, user: WorkerUser | None) -> None:
    """Create an instance's private directory (kept across restarts): 0700, the worker's own
    (here, or on a Ray node). Blocking."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if user is not None:
        os.chown(path, user.uid, user.gid)
    os.chmod(path, 0o700)


def _remove_instance_files(socket_path: Path | None, private_dir: Path) -> None:
    """Remove a stopped instance's socket and private directory. Blocking."""
    if socket_path is not None:
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
    shutil.rmtree(private_dir, ignore_errors=True)


def describe_status(status: int | None) -> str:
    """An exit status as people read it: `2`, or `-9 (killed by signal 9)`."""
    if status is None:
        return "unknown"
    if status < 0:
        return f"{status} (killed by signal {-status})"
    return str(status)
