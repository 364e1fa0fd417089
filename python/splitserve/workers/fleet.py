"""One variant's instances: start, scale up and down (draining), stop.

One `VariantFleet` runs the instances of one production variant of one endpoint (one generation of
it: during an update the blue and green fleets of an endpoint live side by side). Each instance is a
`WorkerInstance` (see `instance.py`) pinned to its own CPU set (see `catalog.CpuAllocator`),
speaking the SageMaker container contract: `GET /ping`, `POST /invocations`.

Built-in XGBoost instances listen on a Unix socket under `run_dir/s/` (or loopback TCP with
`WorkerSettings.use_tcp`); bring-your-own servers on the loopback port in `SAGEMAKER_BIND_TO_PORT`.
Every instance gets a private directory under `run_dir/w/` as its HOME and TMPDIR. Fleets are made
by `Supervisor.fleet`, which hands each the shared resources in a `FleetResources`.

Start, scale, stop and detach are `InstanceFleet`'s, shared with the Ray placement's `RayFleet`;
so are the server commands (`builtin_server_command`, `custom_server_command`), which a Ray actor
builds on its node exactly as `VariantFleet` builds them here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import splitserve
from splitserve.config import WorkerSettings
from splitserve.contract.upstream import UpstreamAddress
from splitserve.errors import DeploymentError
from splitserve.workers.artifacts import ArtifactLimits, prepare_model_dir, remove_model_dir
from splitserve.workers.catalog import CpuAllocator, InstanceType
from splitserve.workers.images import BuiltinXGBoostImage, CustomImage, ImageSpec, pipeline_depth
from splitserve.workers.instance import InstanceInfo, InstanceListener, WorkerInstance
from splitserve.workers.local_placement import (
    LOOPBACK,
    InstanceSetup,
    Launch,
    LocalProcess,
    LoopbackPorts,
)
from splitserve.workers.process import (
    SpawnLimits,
    WorkerUser,
    minimal_environment,
    worker_environment,
)

#: The module the built-in XGBoost server runs as.
XGBOOST_SERVER_MODULE = "splitserve.workers.xgboost_server"

#: Under the run directory: Unix sockets, model directories, instances' private directories.
SOCKET_DIR = "s"
MODEL_DIR = "m"
PRIVATE_DIR = "w"


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
class FleetResources:
    """What every fleet of a supervisor shares.

    Attributes:
        settings: the worker settings.
        listener: told of health changes, asked for in-flight counts.
        run_dir: the absolute run directory (sockets, model and private directories).
        cpus: hands out CPU sets.
        ports: hands out loopback ports.
        user: the account workers run as, or None for the gateway's own.
        artifacts: where artifacts may come from, and how large they may be.
        prepare_run_dirs: creates the run directory's layout (blocking; idempotent).
        forget: called once a fleet has stopped.
    """

    settings: WorkerSettings
    listener: InstanceListener
    run_dir: Path
    cpus: CpuAllocator
    ports: LoopbackPorts
    user: WorkerUser | None
    artifacts: ArtifactLimits
    prepare_run_dirs: Callable[[], None]
    forget: Callable[[VariantFleet], None]


def model_dir_for(run_dir: Path, deployment: VariantDeployment) -> Path:
    """Where the model directory of `deployment` goes."""
    label = f"{deployment.endpoint_name}.{deployment.variant_name}.g{deployment.generation}"
    safe = re.sub(r"[^A-Za-z0-9.-]", "_", label)
    digest = hashlib.sha256(label.encode()).hexdigest()[:8]
    return run_dir / MODEL_DIR / f"{safe}.{digest}"


def socket_path_in(run_dir: Path, token: str) -> Path:
    """The Unix socket path of a built-in instance whose token is `token` (8 hex digits)."""
    return run_dir / SOCKET_DIR / f"{token}.sock"


class InstanceFleet:
    """The instances of one variant generation, whatever runs them: start, scale (draining on
    the way down), stop, let go. Each placement's fleet (`VariantFleet` here,
    `ray_placement.RayFleet`) supplies how an instance is made and what a start prepares; the
    rest is shared. Implements `placement.PlacedFleet`.

    Attributes:
        deployment: what this fleet runs.
        instance_type: the deployment's instance type.
    """

    #: True when the instances outlive the controller: `detach` then leaves them running.
    instances_outlive_controller = False

    def __init__(self, deployment: VariantDeployment, instance_type: InstanceType) -> None:
        self.deployment = deployment
        self.instance_type = instance_type
        self._instances: dict[int, WorkerInstance] = {}
        self._operation = asyncio.Lock()
        self._started = False
        self._stop_task: asyncio.Task[None] | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        """(endpoint, variant, generation): unique among a placement's fleets."""
        deployment = self.deployment
        return (deployment.endpoint_name, deployment.variant_name, deployment.generation)

    def instance_name(self, index: int) -> str:
        """The unique name of instance `index` (process-wide; for Ray, namespace-wide)."""
        deployment = self.deployment
        return (
            f"{deployment.endpoint_name}/{deployment.variant_name}/g{deployment.generation}/{index}"
        )

    def instances(self) -> list[InstanceInfo]:
        """A snapshot of every instance, by index."""
        return [self._instances[index].info() for index in sorted(self._instances)]

    async def start(self) -> None:
        """Prepare what the instances share (`_prepare`) and start (or adopt)
        `instance_count` instances.

        Returns once every instance passed its first /ping. On any failure, stops everything it
        started.

        Raises:
            DeploymentError: the preparation failed (e.g. the artifact is missing, unsafe or over
                the limits; no node can hold the type); a server cannot be started, exits before
                answering (its last output is in the message), or does not answer /ping within
                the start-up timeout.
        """
        async with self._operation:
            self._check_running()
            if self._started:
                raise DeploymentError(f"{self._label()} is already started")
            self._started = True
            try:
                await self._prepare()
                await self._add_instances(range(self.deployment.instance_count))
                await self._started_all()
            except BaseException:
                await self.stop()
                raise

    async def scale(self, count: int) -> None:
        """Grow or shrink the fleet to `count` instances.

        Growing starts the new instances and returns once each passed its first /ping (a failure
        stops the new ones and raises; the others keep running). Shrinking stops the
        highest-index instances: unhealthy to the listener, drained (up to `stop_grace_seconds`),
        then stopped.

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
                await self._stop_instances(retired)

    async def stop(self) -> None:
        """Stop every instance (unhealthy, drain, stop) and remove what they shared.

        Idempotent; also interrupts a `start` or `scale` in progress, which then raises.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(), name=f"stop {self._label()}")
        await asyncio.shield(self._stop_task)

    async def detach(self) -> None:
        """Stop watching the instances: when they outlive the controller they keep serving for
        the next one; otherwise (local processes die with the gateway) the same as `stop`."""
        if not self.instances_outlive_controller:
            await self.stop()
            return
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._detach(), name=f"detach {self._label()}")
        await asyncio.shield(self._stop_task)

    # --- what each placement supplies -----------------------------------------------------------

    def _new_instance(self, index: int) -> WorkerInstance:
        """Make (and so start) instance `index`."""
        raise NotImplementedError

    async def _prepare(self) -> None:
        """What `start` does before the first instance (nothing by default)."""

    async def _started_all(self) -> None:
        """What `start` does once every instance answered (nothing by default)."""

    def _released(self, instance: WorkerInstance) -> None:
        """`instance` stopped for good: give back what it held (nothing by default)."""

    async def _cleanup(self) -> None:
        """Remove what the stopped instances shared (nothing by default)."""

    def _finished(self) -> None:
        """The fleet is stopped or let go of: its placement forgets it."""
        raise NotImplementedError

    # --- internals -------------------------------------------------------------------------------

    async def _stop(self) -> None:
        try:
            await self._stop_instances(list(self._instances.values()))
            await self._cleanup()
        finally:
            self._finished()

    async def _detach(self) -> None:
        try:
            await asyncio.gather(*(instance.detach() for instance in self._instances.values()))
        finally:
            self._finished()

    async def _stop_instances(self, instances: list[WorkerInstance]) -> None:
        """Stop `instances`, give back what they held and forget them."""
        await asyncio.gather(*(instance.stop() for instance in instances))
        for instance in instances:
            self._released(instance)
            index = next((i for i, known in self._instances.items() if known is instance), None)
            if index is not None:
                del self._instances[index]

    async def _add_instances(self, indices: range) -> None:
        added = []
        for index in indices:
            instance = self._new_instance(index)
            self._instances[index] = instance
            added.append(instance)
        readies = [instance.ready for instance in added]
        try:
            await asyncio.wait(readies, return_when=asyncio.FIRST_EXCEPTION)
            # The first instance that failed (one that started is done too, without one).
            failure = next(
                (
                    ready.exception()
                    for ready in readies
                    if ready.done() and not ready.cancelled() and ready.exception() is not None
                ),
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

    async def _discard(self, instances: list[WorkerInstance]) -> None:
        await self._stop_instances(instances)
        for instance in instances:
            # Read every outcome so none is reported as "never retrieved".
            if instance.ready.done() and not instance.ready.cancelled():
                instance.ready.exception()

    def _check_running(self) -> None:
        if self._stop_task is not None:
            raise DeploymentError(f"{self._label()} was stopped")

    def _label(self) -> str:
        deployment = self.deployment
        return (
            f"variant {deployment.variant_name} of endpoint {deployment.endpoint_name}"
            f" (generation {deployment.generation})"
        )


class VariantFleet(InstanceFleet):
    """The local instances of one variant deployment. Build one with `Supervisor.fleet`.

    Attributes:
        image: what its image resolved to.
        model_dir: the read-only model directory its instances get (made by `start`).
    """

    def __init__(
        self,
        resources: FleetResources,
        deployment: VariantDeployment,
        instance_type: InstanceType,
        image: ImageSpec,
    ) -> None:
        super().__init__(deployment, instance_type)
        self.image = image
        self._resources = resources
        self.model_dir = model_dir_for(resources.run_dir, deployment)

    @property
    def startup_timeout_seconds(self) -> float:
        """How long a new process has to pass its first /ping."""
        if isinstance(self.image, CustomImage) and self.image.startup_timeout_seconds is not None:
            return self.image.startup_timeout_seconds
        return self._resources.settings.startup_timeout_seconds

    # --- LaunchPlanner ---------------------------------------------------------------------------

    def plan(self, instance: LocalProcess) -> Launch:
        """The command, environment and address of `instance`'s next process."""
        if isinstance(self.image, BuiltinXGBoostImage):
            return self._builtin_launch(instance)
        return self._custom_launch(instance, self.image)

    # --- what the fleet supplies ----------------------------------------------------------------

    async def _prepare(self) -> None:
        """Create the run directory's layout and unpack the model directory."""
        await asyncio.to_thread(self._resources.prepare_run_dirs)
        await asyncio.to_thread(
            prepare_model_dir,
            self.deployment.model_data,
            self.model_dir,
            self._resources.artifacts,
        )

    async def _cleanup(self) -> None:
        await asyncio.to_thread(remove_model_dir, self.model_dir)

    def _finished(self) -> None:
        self._resources.forget(self)

    def _released(self, instance: WorkerInstance) -> None:
        self._resources.cpus.release(instance.name)

    def _new_instance(self, index: int) -> WorkerInstance:
        resources = self._resources
        settings = resources.settings
        name = self.instance_name(index)
        cpus = resources.cpus.allocate(name, self.instance_type.vcpus)
        token = secrets.token_hex(4)
        builtin = isinstance(self.image, BuiltinXGBoostImage)
        setup = InstanceSetup(
            name=name,
            variant_name=self.deployment.variant_name,
            cpus=cpus,
            # Built-in servers keep one socket path across restarts; others listen on TCP.
            socket_path=(
                socket_path_in(resources.run_dir, token)
                if builtin and not settings.use_tcp
                else None
            ),
            private_dir=resources.run_dir / PRIVATE_DIR / token,
            limits=SpawnLimits(
                cpus=cpus,
                memory_limit_bytes=(
                    self.instance_type.memory_bytes if settings.memory_cap else None
                ),
                user=resources.user,
                log_lines_per_second=settings.output_log_lines_per_second,
            ),
            startup_timeout_seconds=self.startup_timeout_seconds,
            # README, "When something fails": the ModelError's LogStreamArn names this file.
            log_file=(None if settings.log_dir is None else settings.log_dir / f"{name}.log"),
        )
        return WorkerInstance(
            name,
            self.deployment.variant_name,
            LocalProcess(setup, settings, self, resources.ports),
            settings,
            resources.listener,
            setup.startup_timeout_seconds,
            pipeline_depth(self.image, settings.pipeline_depth),
        )

    def _builtin_launch(self, instance: LocalProcess) -> Launch:
        resources = self._resources
        settings = resources.settings
        setup = instance.setup
        if setup.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                setup.socket_path.unlink()  # a stale socket of the previous process
            address = UpstreamAddress.unix(str(setup.socket_path))
            listen = ["--unix", str(setup.socket_path)]
        else:
            host = settings.listen_host
            address = UpstreamAddress.tcp(host, resources.ports.take(instance.name))
            listen = ["--host", host, "--port", str(address.port)]
        command = builtin_server_command(
            settings,
            listen,
            ServerContext(self.model_dir, setup.private_dir, len(setup.cpus), instance.name),
            self.deployment.environment,
        )
        return Launch(command.argv, command.environment, resources.run_dir, address)

    def _custom_launch(self, instance: LocalProcess, image: CustomImage) -> Launch:
        setup = instance.setup
        port = self._resources.ports.take(instance.name)
        command = custom_server_command(
            image,
            LOOPBACK,
            port,
            ServerContext(self.model_dir, setup.private_dir, len(setup.cpus), instance.name),
            self.deployment.environment,
        )
        return Launch(
            command.argv, command.environment, command.cwd, UpstreamAddress.tcp(LOOPBACK, port)
        )


@dataclass(frozen=True)
class ServerContext:
    """Where one instance's server process runs.

    Attributes:
        model_dir: its read-only model directory (SM_MODEL_DIR).
        private_dir: its HOME and TMPDIR.
        cpu_count: how many CPUs it has (OMP_NUM_THREADS).
        name: the instance's name, for the log.
    """

    model_dir: Path
    private_dir: Path
    cpu_count: int
    name: str


@dataclass(frozen=True)
class ServerCommand:
    """How to start an instance's server: its argv, complete environment and directory."""

    argv: list[str]
    environment: dict[str, str]
    cwd: Path


def builtin_server_command(
    settings: WorkerSettings,
    listen: list[str],
    context: ServerContext,
    model_environment: Mapping[str, str],
) -> ServerCommand:
    """The built-in XGBoost server's command, wherever it runs (here, or on a Ray node).

    Args:
        settings: batching and pickle settings.
        listen: `--unix PATH` or `--host HOST --port PORT`.
        context: its model and private directories and CPU count.
        model_environment: the model's Environment from CreateModel.
    """
    argv = [sys.executable, "-m", XGBOOST_SERVER_MODULE, "--model-dir", str(context.model_dir)]
    argv += listen
    argv += ["--max-batch-rows", str(settings.max_batch_rows)]
    argv += ["--max-batch-wait-us", str(settings.max_batch_wait_microseconds)]
    if settings.allow_pickle:
        argv.append("--allow-pickle")
    gateway = minimal_environment(context.private_dir, context.cpu_count)
    gateway["SM_MODEL_DIR"] = str(context.model_dir)
    # The worker imports the very splitserve the gateway runs, whatever its cwd.
    gateway["PYTHONPATH"] = str(Path(splitserve.__file__).resolve().parent.parent)
    environment = worker_environment(gateway, {}, model_environment, name=context.name)
    return ServerCommand(argv, environment, context.private_dir)


def custom_server_command(
    image: CustomImage,
    host: str,
    port: int,
    context: ServerContext,
    model_environment: Mapping[str, str],
) -> ServerCommand:
    """A bring-your-own image's command (images.py), wherever it runs: its placeholders
    replaced, its port in SAGEMAKER_BIND_TO_PORT, the same environment allow-list.

    Args:
        image: the registry entry.
        host: the address it is to listen on (the `{host}` placeholder).
        port: the port it is to listen on.
        context: its model and private directories and CPU count.
        model_environment: the model's Environment from CreateModel.
    """
    gateway = minimal_environment(context.private_dir, context.cpu_count)
    gateway["SAGEMAKER_BIND_TO_PORT"] = str(port)
    gateway["SM_MODEL_DIR"] = str(context.model_dir)
    image_environment = {}
    if image.python_path:
        image_environment["PYTHONPATH"] = os.pathsep.join(str(p) for p in image.python_path)
    image_environment.update(image.environment)
    environment = worker_environment(
        gateway, image_environment, model_environment, name=context.name
    )
    argv = image.argv(python=sys.executable, model_dir=context.model_dir, host=host, port=port)
    return ServerCommand(argv, environment, image.working_directory)
