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
`InstanceBackend` per placement says how a process is started, watched and stopped:
`local_placement.LocalProcess` (a child process here, whose command its owner `VariantFleet`
decides through the `LaunchPlanner` it is given) or `ray_placement.ActorProcess` (a Ray actor on a
cluster node, which may also adopt a process a previous controller left running). The instance
does not know its fleet. Its health checks go through `health.HealthProbe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from splitserve.config import WorkerSettings
from splitserve.contract.upstream import UpstreamAddress
from splitserve.errors import DeploymentError
from splitserve.workers.health import HealthProbe, PingResult

logger = logging.getLogger(__name__)

#: DescribeEndpoint's FailureReason holds at most this many characters.
MAX_FAILURE_REASON_CHARS = 1024

#: How often a starting instance is pinged until its first 200 (a start-up detail, not a policy).
_STARTUP_POLL_SECONDS = 0.05

#: How often a drain checks the listener's in-flight count.
_DRAIN_POLL_SECONDS = 0.02


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
        pipeline_depth: requests the gateway may pipeline on one connection to it (1: none).
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
    pipeline_depth: int = 1


class InstanceListener(Protocol):
    """What the gateway implements to learn which instances may take traffic."""

    def instance_healthy(self, instance: InstanceInfo) -> None:
        """`instance` passed a ping and may take traffic (its address may have changed)."""

    def instance_unhealthy(self, instance: InstanceInfo) -> None:
        """`instance` must get no new traffic (it failed, or is being stopped)."""

    def in_flight(self, instance_name: str) -> int:
        """How many requests the gateway has in flight to the instance (used to drain it)."""


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
    process here (`local_placement.LocalProcess`) or a Ray actor on a node
    (`ray_placement.ActorProcess`). `WorkerInstance` drives it through the life every instance
    shares."""

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
        pipeline_depth: requests the gateway may pipeline on one connection to it (its image's).
    """

    def __init__(
        self,
        name: str,
        variant_name: str,
        backend: InstanceBackend,
        settings: WorkerSettings,
        listener: InstanceListener,
        startup_timeout_seconds: float,
        pipeline_depth: int = 1,
    ) -> None:
        self.name = name
        self.pipeline_depth = pipeline_depth
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
            pipeline_depth=self.pipeline_depth,
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


def describe_status(status: int | None) -> str:
    """An exit status as people read it: `2`, or `-9 (killed by signal 9)`."""
    if status is None:
        return "unknown"
    if status < 0:
        return f"{status} (killed by signal {-status})"
    return str(status)
