"""The worker supervisor: starts, health-checks, restarts, scales and stops model-server instances.

One `VariantFleet` runs the instances of one production variant of one endpoint (one generation of
it: during an update the blue and green fleets of an endpoint live side by side). Each instance is a
process (see `process.py`) pinned to its own CPU set (see `catalog.CpuAllocator`), speaking the
SageMaker container contract: `GET /ping`, `POST /invocations`.

The life of an instance, as the listener (the gateway, which tells the router) sees it:

1. started -> polled on /ping until the first 200 -> `instance_healthy`: only now may it take
   traffic;
2. pinged every `health_interval_seconds`; `unhealthy_after_failures` failed pings in a row, or the
   process exiting -> `instance_unhealthy`, the process group is killed, and after an exponential
   backoff a new process starts (the instance keeps its name, CPUs and socket path; a TCP port may
   change, so use the address of each `instance_healthy`) -> `instance_healthy` after its first 200;
3. stopped (scale-in, update, delete, shutdown) -> `instance_unhealthy`, drain until the listener's
   `in_flight` is 0, SIGTERM to its process group, SIGKILL `stop_grace_seconds` later.

Built-in XGBoost instances listen on a Unix socket under `run_dir/s/` (or loopback TCP with
`WorkerSettings.use_tcp`); bring-your-own servers on the loopback port in `SAGEMAKER_BIND_TO_PORT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

import splitserve
from splitserve.config import WorkerSettings
from splitserve.errors import DeploymentError
from splitserve.contract.upstream import UpstreamAddress
from splitserve.workers.artifacts import prepare_model_dir, remove_model_dir
from splitserve.workers.catalog import (
    CpuAllocator,
    InstanceCatalog,
    InstanceType,
    UnknownInstanceType,
)
from splitserve.workers.images import BuiltinXGBoostImage, CustomImage, ImageRegistry, ImageSpec
from splitserve.workers.process import WorkerProcess, minimal_environment, spawn_worker

logger = logging.getLogger(__name__)

#: The longest AF_UNIX socket path Linux accepts (sun_path is 108 bytes with the NUL).
MAX_UNIX_PATH_BYTES = 107

#: The module the built-in XGBoost server runs as.
XGBOOST_SERVER_MODULE = "splitserve.workers.xgboost_server"

#: DescribeEndpoint's FailureReason holds at most this many characters.
MAX_FAILURE_REASON_CHARS = 1024

#: How often a starting instance is pinged until its first 200 (a start-up detail, not a policy).
_STARTUP_POLL_SECONDS = 0.05

#: How often a drain checks the listener's in-flight count.
_DRAIN_POLL_SECONDS = 0.02

_LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class VariantDeployment:
    """What one variant of one endpoint runs.

    Attributes:
        endpoint_name: the endpoint.
        variant_name: the production variant.
        generation: distinguishes the blue and green fleets of one endpoint during an update.
        image: the model's container image.
        model_data: the resolved local model artifact (tar.gz, bare file or directory), or None.
        environment: the model's Environment from CreateModel.
        instance_type: e.g. `ml.m5.large`.
        instance_count: how many instances `start` brings up.
    """

    endpoint_name: str
    variant_name: str
    generation: int
    image: str
    model_data: Path | None
    environment: Mapping[str, str]
    instance_type: str
    instance_count: int


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
    """

    name: str
    variant_name: str
    address: UpstreamAddress
    cpus: tuple[int, ...]
    pid: int | None
    state: str
    restarts: int


class InstanceListener(Protocol):
    """What the gateway implements to learn which instances may take traffic."""

    def instance_healthy(self, instance: InstanceInfo) -> None:
        """`instance` passed a ping and may take traffic (its address may have changed)."""

    def instance_unhealthy(self, instance: InstanceInfo) -> None:
        """`instance` must get no new traffic (it failed, or is being stopped)."""

    def in_flight(self, instance_name: str) -> int:
        """How many requests the gateway has in flight to the instance (used to drain it)."""


@dataclass(frozen=True)
class _Launch:
    """How to start one process of an instance."""

    argv: list[str]
    environment: dict[str, str]
    cwd: Path
    address: UpstreamAddress


class _HealthProbe:
    """GET /ping against one address (a fresh connection each time: this is not the hot path)."""

    def __init__(self, address: UpstreamAddress, timeout_seconds: float) -> None:
        connector: aiohttp.BaseConnector
        if address.unix_path is not None:
            connector = aiohttp.UnixConnector(path=address.unix_path, force_close=True)
            self._url = "http://localhost/ping"
        else:
            connector = aiohttp.TCPConnector(force_close=True)
            self._url = f"http://{address.host}:{address.port}/ping"
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_seconds)
        )

    async def ping(self) -> bool:
        """Whether /ping answered 200 in time."""
        try:
            async with self._session.get(self._url) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def close(self) -> None:
        """Close the session."""
        await self._session.close()


class _Instance:
    """One instance of a fleet, and the task that keeps it running."""

    def __init__(self, fleet: VariantFleet, index: int, cpus: tuple[int, ...]) -> None:
        self.fleet = fleet
        self.index = index
        self.name = fleet.instance_name(index)
        self.cpus = cpus
        self.state = "starting"
        self.restarts = 0
        self.worker: WorkerProcess | None = None
        self.address: UpstreamAddress | None = None
        #: Built-in servers keep one socket path across restarts; others listen on TCP.
        self.socket_path = (
            fleet.supervisor._new_socket_path()
            if isinstance(fleet.image, BuiltinXGBoostImage)
            else None
        )
        self.port: int | None = None
        #: Whether the listener was last told this instance is healthy.
        self.announced = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._run(), name=f"instance {self.name}")
        self.stop_task: asyncio.Task[None] | None = None

    def info(self) -> InstanceInfo:
        """A snapshot for the listener and `VariantFleet.instances`."""
        worker = self.worker
        address = self.address
        if address is None:
            address = (
                UpstreamAddress.unix(str(self.socket_path))
                if self.socket_path is not None
                else UpstreamAddress.tcp(_LOOPBACK, self.port or 0)
            )
        return InstanceInfo(
            name=self.name,
            variant_name=self.fleet.deployment.variant_name,
            address=address,
            cpus=self.cpus,
            pid=worker.pid if worker is not None and worker.returncode is None else None,
            state=self.state,
            restarts=self.restarts,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._launch()
            self.ready.set_result(None)
            self._become_healthy()
            await self._supervise()
        except asyncio.CancelledError:
            if not self.ready.done():
                self.ready.cancel()
            raise
        except DeploymentError as error:
            if not self.ready.done():
                self.ready.set_exception(error)
        except Exception:
            logger.exception("supervision of %s failed", self.name)
            if not self.ready.done():
                self.ready.set_exception(
                    DeploymentError(f"instance {self.name}: an internal error stopped its start-up")
                )

    async def _supervise(self) -> None:
        settings = self.fleet.supervisor.settings
        failures_in_a_row = 0
        while True:
            healthy_seconds, reason = await self._watch()
            logger.warning("%s is unhealthy: %s", self.name, reason)
            self.state = "unhealthy"
            self.fleet.supervisor._notify_unhealthy(self)
            await self._retire_worker()
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
                self.restarts += 1
                try:
                    await self._launch()
                    break
                except DeploymentError as error:
                    logger.warning("restart of %s failed: %s", self.name, error.message)
                    self.state = "unhealthy"
                    await self._retire_worker()
            self._become_healthy()

    def _become_healthy(self) -> None:
        self.state = "healthy"
        logger.info("%s is healthy at %s (pid %s)", self.name, self.address, self.info().pid)
        self.fleet.supervisor._notify_healthy(self)

    async def _launch(self) -> None:
        """Start a process and wait for its first good ping; DeploymentError if it never comes."""
        fleet = self.fleet
        supervisor = fleet.supervisor
        self.state = "starting"
        launch = fleet._launch_for(self)
        self.address = launch.address
        try:
            self.worker = await spawn_worker(
                launch.argv,
                name=self.name,
                environment=launch.environment,
                cwd=launch.cwd,
                cpus=self.cpus,
                memory_limit_bytes=(
                    fleet.instance_type.memory_bytes if supervisor.settings.memory_cap else None
                ),
            )
        except (OSError, subprocess.SubprocessError) as error:
            cause = error.__cause__ or error
            raise DeploymentError(
                f"instance {self.name}: could not start the model server"
                f" {launch.argv[0]!r}: {cause}"
            ) from error
        await self._wait_first_ping(self.worker, launch.address)

    async def _wait_first_ping(self, worker: WorkerProcess, address: UpstreamAddress) -> None:
        settings = self.fleet.supervisor.settings
        timeout = self.fleet.startup_timeout_seconds
        deadline = time.monotonic() + timeout
        exited = asyncio.ensure_future(worker.wait())
        probe = _HealthProbe(address, settings.ping_timeout_seconds)
        try:
            while True:
                if exited.done():
                    await worker.kill()  # collects the output still in the pipe
                    raise DeploymentError(
                        self._with_output(
                            worker,
                            f"instance {self.name}: the model server exited with status"
                            f" {_describe_status(exited.result())} before answering GET /ping",
                        )
                    )
                if await probe.ping():
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeploymentError(
                        self._with_output(
                            worker,
                            f"instance {self.name}: the model server did not answer GET /ping"
                            f" with 200 within {timeout:g} s (health check timeout)",
                        )
                    )
                await asyncio.wait({exited}, timeout=min(_STARTUP_POLL_SECONDS, remaining))
        finally:
            exited.cancel()
            await probe.close()

    async def _watch(self) -> tuple[float, str]:
        """Ping until the instance fails; how long it was healthy, and why it failed."""
        worker = self.worker
        address = self.address
        if worker is None or address is None:
            raise RuntimeError(f"{self.name} has no process to watch")
        settings = self.fleet.supervisor.settings
        healthy_since = time.monotonic()
        exited = asyncio.ensure_future(worker.wait())
        probe = _HealthProbe(address, settings.ping_timeout_seconds)
        failures = 0
        try:
            while True:
                await asyncio.wait({exited}, timeout=settings.health_interval_seconds)
                if exited.done():
                    reason = f"the process exited with status {_describe_status(exited.result())}"
                    return time.monotonic() - healthy_since, reason
                if await probe.ping():
                    failures = 0
                    continue
                failures += 1
                if failures >= settings.unhealthy_after_failures:
                    reason = f"{failures} health checks in a row failed"
                    return time.monotonic() - healthy_since, reason
        finally:
            exited.cancel()
            await probe.close()

    async def _retire_worker(self) -> None:
        worker = self.worker
        if worker is not None:
            # It failed: no grace. SIGKILL also reaches a hung server's whole process group.
            await worker.kill()
            self.fleet.supervisor._release_port(self)

    def _with_output(self, worker: WorkerProcess, message: str) -> str:
        room = MAX_FAILURE_REASON_CHARS - len(message) - len("; last output:\n")
        tail = worker.output.tail(room)
        return f"{message}; last output:\n{tail}" if tail else f"{message} (it printed nothing)"

    # --- stopping ------------------------------------------------------------------------------

    def stop(self) -> asyncio.Task[None]:
        """Drain and stop this instance (idempotent: every call gets the same task)."""
        if self.stop_task is None:
            self.stop_task = asyncio.create_task(self._stop(), name=f"stop {self.name}")
        return self.stop_task

    async def _stop(self) -> None:
        supervisor = self.fleet.supervisor
        settings = supervisor.settings
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if not self.ready.done():
            # Cancelled before it ever ran: its coroutine had no chance to settle this.
            self.ready.cancel()
        self.state = "stopping"
        if self.announced:
            supervisor._notify_unhealthy(self)
            await self._drain(settings.stop_grace_seconds)
        worker = self.worker
        if worker is not None:
            status = await worker.stop(settings.stop_grace_seconds)
            logger.info("%s stopped (status %s)", self.name, _describe_status(status))
        self.state = "stopped"
        supervisor._release_port(self)
        supervisor.cpu_allocator.release(self.name)
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    async def _drain(self, limit_seconds: float) -> None:
        listener = self.fleet.supervisor.listener
        deadline = time.monotonic() + limit_seconds
        while time.monotonic() < deadline:
            try:
                if listener.in_flight(self.name) <= 0:
                    return
            except Exception:
                logger.exception("the listener's in_flight(%s) failed", self.name)
                return
            await asyncio.sleep(_DRAIN_POLL_SECONDS)
        logger.warning("%s still had requests in flight after %.1f s", self.name, limit_seconds)


class VariantFleet:
    """The instances of one variant deployment. Build one with `Supervisor.fleet`.

    Attributes:
        deployment: what this fleet runs.
        supervisor: the supervisor that made it.
        instance_type: the deployment's instance type.
        image: what its image resolved to.
        model_dir: the read-only model directory its instances get (made by `start`).
    """

    def __init__(
        self,
        supervisor: Supervisor,
        deployment: VariantDeployment,
        instance_type: InstanceType,
        image: ImageSpec,
    ) -> None:
        self.deployment = deployment
        self.supervisor = supervisor
        self.instance_type = instance_type
        self.image = image
        self.model_dir = supervisor._model_dir_for(deployment)
        self._instances: dict[int, _Instance] = {}
        self._operation = asyncio.Lock()
        self._started = False
        self._stop_task: asyncio.Task[None] | None = None

    @property
    def startup_timeout_seconds(self) -> float:
        """How long a new process has to pass its first /ping."""
        if isinstance(self.image, CustomImage) and self.image.startup_timeout_seconds is not None:
            return self.image.startup_timeout_seconds
        return self.supervisor.settings.startup_timeout_seconds

    def instance_name(self, index: int) -> str:
        """The process-wide unique name of instance `index`."""
        deployment = self.deployment
        return (
            f"{deployment.endpoint_name}/{deployment.variant_name}/g{deployment.generation}/{index}"
        )

    def instances(self) -> list[InstanceInfo]:
        """A snapshot of every instance, by index."""
        return [self._instances[index].info() for index in sorted(self._instances)]

    async def start(self) -> None:
        """Prepare the model directory and start `instance_count` instances.

        Returns once every instance passed its first /ping. On any failure, stops everything it
        started and removes the model directory.

        Raises:
            DeploymentError: the artifact is missing or unsafe, the server cannot be started,
                exits before answering (e.g. the model does not load; its last output is in the
                message), or does not answer /ping within the start-up timeout.
        """
        async with self._operation:
            self._check_running()
            if self._started:
                raise DeploymentError(f"{self._label()} is already started")
            self._started = True
            try:
                await asyncio.to_thread(self.supervisor._prepare_run_dirs)
                await asyncio.to_thread(
                    prepare_model_dir, self.deployment.model_data, self.model_dir
                )
                await self._add_instances(range(self.deployment.instance_count))
            except BaseException:
                await self.stop()
                raise

    async def scale(self, count: int) -> None:
        """Grow or shrink the fleet to `count` instances.

        Growing starts the new instances and returns once each passed its first /ping (a failure
        stops the new ones and raises; the others keep running). Shrinking stops the
        highest-index instances: unhealthy to the listener, drained (up to `stop_grace_seconds`),
        then SIGTERM and SIGKILL.

        Raises:
            DeploymentError: `count` is below 1, the fleet is stopped, or a new instance failed.
        """
        if count < 1:
            raise DeploymentError(f"{self._label()}: the instance count must be at least 1")
        async with self._operation:
            self._check_running()
            current = len(self._instances)
            if count > current:
                await self._add_instances(range(current, count))
            elif count < current:
                retired = [self._instances[index] for index in sorted(self._instances)[count:]]
                await asyncio.gather(*(instance.stop() for instance in retired))
                for instance in retired:
                    del self._instances[instance.index]

    async def stop(self) -> None:
        """Stop every instance (unhealthy, drain, SIGTERM, SIGKILL) and remove the model directory.

        Idempotent; also interrupts a `start` or `scale` in progress, which then raises.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(), name=f"stop {self._label()}")
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        try:
            await asyncio.gather(*(instance.stop() for instance in self._instances.values()))
            await asyncio.to_thread(remove_model_dir, self.model_dir)
        finally:
            self.supervisor._forget(self)

    async def _add_instances(self, indices: range) -> None:
        added = []
        for index in indices:
            cpus = self.supervisor.cpu_allocator.allocate(
                self.instance_name(index), self.instance_type.vcpus
            )
            instance = _Instance(self, index, cpus)
            self._instances[index] = instance
            added.append(instance)
        readies = [instance.ready for instance in added]
        try:
            await asyncio.wait(readies, return_when=asyncio.FIRST_EXCEPTION)
            failure = next(
                (ready.exception() for ready in readies if ready.done() and not ready.cancelled()),
                None,
            )
            if failure is None and any(ready.cancelled() for ready in readies):
                failure = DeploymentError(f"{self._label()} was stopped while starting")
        except BaseException:
            await self._discard(added)
            raise
        if failure is not None:
            await self._discard(added)
            raise failure

    async def _discard(self, instances: list[_Instance]) -> None:
        await asyncio.gather(*(instance.stop() for instance in instances))
        for instance in instances:
            self._instances.pop(instance.index, None)
            # Read every outcome so none is reported as "never retrieved".
            if instance.ready.done() and not instance.ready.cancelled():
                instance.ready.exception()

    def _launch_for(self, instance: _Instance) -> _Launch:
        """The command, environment and address of `instance`'s next process."""
        if isinstance(self.image, BuiltinXGBoostImage):
            return self._builtin_launch(instance)
        return self._custom_launch(instance, self.image)

    def _builtin_launch(self, instance: _Instance) -> _Launch:
        supervisor = self.supervisor
        settings = supervisor.settings
        argv = [
            sys.executable,
            "-m",
            XGBOOST_SERVER_MODULE,
            "--model-dir",
            str(self.model_dir),
        ]
        if instance.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                instance.socket_path.unlink()  # a stale socket of the previous process
            address = UpstreamAddress.unix(str(instance.socket_path))
            argv += ["--unix", str(instance.socket_path)]
        else:
            address = UpstreamAddress.tcp(_LOOPBACK, supervisor._take_port(instance))
            argv += ["--host", _LOOPBACK, "--port", str(address.port)]
        argv += [
            "--max-batch-rows",
            str(settings.max_batch_rows),
            "--max-batch-wait-us",
            str(settings.max_batch_wait_microseconds),
        ]
        if settings.allow_pickle:
            argv.append("--allow-pickle")
        environment = minimal_environment(supervisor.run_dir, len(instance.cpus))
        environment.update(self.deployment.environment)
        environment["SM_MODEL_DIR"] = str(self.model_dir)
        # The worker imports the very splitserve the gateway runs, whatever its cwd.
        environment["PYTHONPATH"] = str(Path(splitserve.__file__).resolve().parent.parent)
        return _Launch(argv, environment, supervisor.run_dir, address)

    def _custom_launch(self, instance: _Instance, image: CustomImage) -> _Launch:
        supervisor = self.supervisor
        port = supervisor._take_port(instance)
        environment = minimal_environment(supervisor.run_dir, len(instance.cpus))
        if image.python_path:
            environment["PYTHONPATH"] = os.pathsep.join(str(path) for path in image.python_path)
        environment.update(image.environment)
        environment.update(self.deployment.environment)
        environment["SAGEMAKER_BIND_TO_PORT"] = str(port)
        environment["SM_MODEL_DIR"] = str(self.model_dir)
        argv = image.argv(python=sys.executable, model_dir=self.model_dir, port=port)
        return _Launch(
            argv, environment, image.working_directory, UpstreamAddress.tcp(_LOOPBACK, port)
        )

    def _check_running(self) -> None:
        if self._stop_task is not None:
            raise DeploymentError(f"{self._label()} was stopped")

    def _label(self) -> str:
        deployment = self.deployment
        return (
            f"variant {deployment.variant_name} of endpoint {deployment.endpoint_name}"
            f" (generation {deployment.generation})"
        )


class Supervisor:
    """Makes and tracks the fleets of every variant the gateway serves.

    Args:
        settings: the worker settings (run directory, timeouts, CPU pool, ...).
        images: the image registry (bring-your-own images; XGBoost images are built in).
        catalog: the instance types.
        listener: told when instances become healthy or unhealthy; asked for in-flight counts.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        images: ImageRegistry,
        catalog: InstanceCatalog,
        listener: InstanceListener,
    ) -> None:
        self.settings = settings
        self.images = images
        self.catalog = catalog
        self.listener = listener
        # Workers run with another cwd: every path handed to them is absolute.
        self.run_dir = settings.run_dir.resolve()
        self.cpu_allocator = CpuAllocator(settings.host_cpus())
        self._fleets: dict[tuple[str, str, int], VariantFleet] = {}
        #: Loopback ports handed out, by instance name, so no two instances get the same one.
        self._ports: dict[str, int] = {}
        self._closed = False

    def fleet(self, deployment: VariantDeployment) -> VariantFleet:
        """A new, not yet started fleet for `deployment`.

        Raises:
            DeploymentError: unknown instance type or image, an XGBoost image without a model
                artifact, an instance count below 1, a Unix socket path that would be too long,
                or a fleet for the same endpoint, variant and generation already exists.
        """
        if self._closed:
            raise DeploymentError("the worker supervisor is shut down")
        if deployment.instance_count < 1:
            raise DeploymentError(
                f"variant {deployment.variant_name}: the instance count must be at least 1"
            )
        try:
            instance_type = self.catalog.get(deployment.instance_type)
        except UnknownInstanceType as error:
            raise DeploymentError(str(error)) from None
        image = self.images.resolve(deployment.image)
        if isinstance(image, BuiltinXGBoostImage):
            if deployment.model_data is None:
                raise DeploymentError(
                    f"variant {deployment.variant_name}: the SageMaker XGBoost image needs a"
                    " model artifact (ModelDataUrl)"
                )
            if not self.settings.use_tcp:
                self._check_socket_path_length()
        key = (deployment.endpoint_name, deployment.variant_name, deployment.generation)
        if key in self._fleets:
            raise DeploymentError(
                f"variant {deployment.variant_name} of endpoint {deployment.endpoint_name}"
                f" generation {deployment.generation} is already deployed"
            )
        fleet = VariantFleet(self, deployment, instance_type, image)
        self._fleets[key] = fleet
        return fleet

    def fleets(self) -> list[VariantFleet]:
        """Every fleet not yet stopped."""
        return list(self._fleets.values())

    async def close(self) -> None:
        """Stop every fleet (gateway shutdown); no fleet can be made afterwards."""
        self._closed = True
        await asyncio.gather(*(fleet.stop() for fleet in list(self._fleets.values())))

    # --- used by fleets and instances ------------------------------------------------------------

    def _forget(self, fleet: VariantFleet) -> None:
        """Drop a stopped fleet."""
        deployment = fleet.deployment
        key = (deployment.endpoint_name, deployment.variant_name, deployment.generation)
        if self._fleets.get(key) is fleet:
            del self._fleets[key]

    def _prepare_run_dirs(self) -> None:
        """Create the run directory and its socket directory (owner-only: sockets are not
        authenticated, so only this user may connect). Blocking."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        socket_dir = self.run_dir / "s"
        socket_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(socket_dir, 0o700)

    def _model_dir_for(self, deployment: VariantDeployment) -> Path:
        """Where the model directory of `deployment` goes."""
        label = f"{deployment.endpoint_name}.{deployment.variant_name}.g{deployment.generation}"
        safe = re.sub(r"[^A-Za-z0-9.-]", "_", label)
        digest = hashlib.sha256(label.encode()).hexdigest()[:8]
        return self.run_dir / "m" / f"{safe}.{digest}"

    def _new_socket_path(self) -> Path | None:
        """A fresh Unix socket path for a built-in instance, or None when workers use TCP."""
        if self.settings.use_tcp:
            return None
        return self.run_dir / "s" / f"{secrets.token_hex(4)}.sock"

    def _take_port(self, instance: _Instance) -> int:
        """A free loopback port for `instance`'s next process (its previous one is released)."""
        self._release_port(instance)
        taken = set(self._ports.values())
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((_LOOPBACK, 0))
                port: int = probe.getsockname()[1]
            if port not in taken:
                self._ports[instance.name] = port
                instance.port = port
                return port
        raise DeploymentError("could not find a free loopback port")

    def _release_port(self, instance: _Instance) -> None:
        """Give `instance`'s port back."""
        self._ports.pop(instance.name, None)

    def _notify_healthy(self, instance: _Instance) -> None:
        """Tell the listener `instance` may take traffic."""
        instance.announced = True
        try:
            self.listener.instance_healthy(instance.info())
        except Exception:
            logger.exception("the listener failed on instance_healthy(%s)", instance.name)

    def _notify_unhealthy(self, instance: _Instance) -> None:
        """Tell the listener `instance` must get no new traffic (only if it was told healthy)."""
        if not instance.announced:
            return
        instance.announced = False
        try:
            self.listener.instance_unhealthy(instance.info())
        except Exception:
            logger.exception("the listener failed on instance_unhealthy(%s)", instance.name)

    def _check_socket_path_length(self) -> None:
        example = self.run_dir / "s" / f"{'0' * 8}.sock"
        length = len(os.fsencode(example))
        if length > MAX_UNIX_PATH_BYTES:
            raise DeploymentError(
                f"the worker socket path {example} is {length} bytes, over the"
                f" {MAX_UNIX_PATH_BYTES}-byte limit of Unix sockets: use a shorter run directory"
                " or TCP workers"
            )


def _describe_status(status: int) -> str:
    if status < 0:
        return f"{status} (killed by signal {-status})"
    return str(status)
