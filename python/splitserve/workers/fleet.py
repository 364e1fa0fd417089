"""One variant's instances: start, scale up and down (draining), stop.

One `VariantFleet` runs the instances of one production variant of one endpoint (one generation of
it: during an update the blue and green fleets of an endpoint live side by side). Each instance is a
`WorkerInstance` (see `instance.py`) pinned to its own CPU set (see `catalog.CpuAllocator`),
speaking the SageMaker container contract: `GET /ping`, `POST /invocations`.

Built-in XGBoost instances listen on a Unix socket under `run_dir/s/` (or loopback TCP with
`WorkerSettings.use_tcp`); bring-your-own servers on the loopback port in `SAGEMAKER_BIND_TO_PORT`.
Every instance gets a private directory under `run_dir/w/` as its HOME and TMPDIR. Fleets are made
by `Supervisor.fleet`, which hands each the shared resources in a `FleetResources`.
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
from splitserve.workers.images import BuiltinXGBoostImage, CustomImage, ImageSpec
from splitserve.workers.instance import (
    LOOPBACK,
    InstanceInfo,
    InstanceListener,
    InstanceSetup,
    Launch,
    LoopbackPorts,
    WorkerInstance,
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


class VariantFleet:
    """The instances of one variant deployment. Build one with `Supervisor.fleet`.

    Attributes:
        deployment: what this fleet runs.
        instance_type: the deployment's instance type.
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
        self.deployment = deployment
        self.instance_type = instance_type
        self.image = image
        self._resources = resources
        self.model_dir = model_dir_for(resources.run_dir, deployment)
        self._instances: dict[int, WorkerInstance] = {}
        self._operation = asyncio.Lock()
        self._started = False
        self._stop_task: asyncio.Task[None] | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        """(endpoint, variant, generation): unique among a supervisor's fleets."""
        deployment = self.deployment
        return (deployment.endpoint_name, deployment.variant_name, deployment.generation)

    @property
    def startup_timeout_seconds(self) -> float:
        """How long a new process has to pass its first /ping."""
        if isinstance(self.image, CustomImage) and self.image.startup_timeout_seconds is not None:
            return self.image.startup_timeout_seconds
        return self._resources.settings.startup_timeout_seconds

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
            DeploymentError: the artifact is missing, unsafe, outside the allowed directories or
                over the size limits; the server cannot be started, exits before answering (e.g.
                the model does not load; its last output is in the message), or does not answer
                /ping within the start-up timeout.
        """
        async with self._operation:
            self._check_running()
            if self._started:
                raise DeploymentError(f"{self._label()} is already started")
            self._started = True
            try:
                await asyncio.to_thread(self._resources.prepare_run_dirs)
                await asyncio.to_thread(
                    prepare_model_dir,
                    self.deployment.model_data,
                    self.model_dir,
                    self._resources.artifacts,
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
                await self._stop_instances(retired)

    async def stop(self) -> None:
        """Stop every instance (unhealthy, drain, SIGTERM, SIGKILL) and remove the model directory.

        Idempotent; also interrupts a `start` or `scale` in progress, which then raises.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(), name=f"stop {self._label()}")
        await asyncio.shield(self._stop_task)

    async def detach(self) -> None:
        """The same as `stop`: local instances die with the gateway that started them."""
        await self.stop()

    # --- LaunchPlanner ---------------------------------------------------------------------------

    def plan(self, instance: WorkerInstance) -> Launch:
        """The command, environment and address of `instance`'s next process."""
        if isinstance(self.image, BuiltinXGBoostImage):
            return self._builtin_launch(instance)
        return self._custom_launch(instance, self.image)

    # --- internals -------------------------------------------------------------------------------

    async def _stop(self) -> None:
        try:
            await self._stop_instances(list(self._instances.values()))
            await asyncio.to_thread(remove_model_dir, self.model_dir)
        finally:
            self._resources.forget(self)

    async def _stop_instances(self, instances: list[WorkerInstance]) -> None:
        """Stop `instances`, give back their CPUs and forget them."""
        await asyncio.gather(*(instance.stop() for instance in instances))
        for instance in instances:
            self._resources.cpus.release(instance.name)
            index = next((i for i, known in self._instances.items() if known is instance), None)
            if index is not None:
                del self._instances[index]

    async def _add_instances(self, indices: range) -> None:
        resources = self._resources
        settings = resources.settings
        added = []
        for index in indices:
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
            instance = WorkerInstance(setup, settings, self, resources.listener, resources.ports)
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

    def _builtin_launch(self, instance: WorkerInstance) -> Launch:
        resources = self._resources
        settings = resources.settings
        setup = instance.setup
        argv = [sys.executable, "-m", XGBOOST_SERVER_MODULE, "--model-dir", str(self.model_dir)]
        if setup.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                setup.socket_path.unlink()  # a stale socket of the previous process
            address = UpstreamAddress.unix(str(setup.socket_path))
            argv += ["--unix", str(setup.socket_path)]
        else:
            host = settings.listen_host
            address = UpstreamAddress.tcp(host, resources.ports.take(instance.name))
            argv += ["--host", host, "--port", str(address.port)]
        argv += [
            "--max-batch-rows",
            str(settings.max_batch_rows),
            "--max-batch-wait-us",
            str(settings.max_batch_wait_microseconds),
        ]
        if settings.allow_pickle:
            argv.append("--allow-pickle")
        gateway = minimal_environment(setup.private_dir, len(setup.cpus))
        gateway["SM_MODEL_DIR"] = str(self.model_dir)
        # The worker imports the very splitserve the gateway runs, whatever its cwd.
        gateway["PYTHONPATH"] = str(Path(splitserve.__file__).resolve().parent.parent)
        environment = worker_environment(
            gateway, {}, self.deployment.environment, name=instance.name
        )
        return Launch(argv, environment, resources.run_dir, address)

    def _custom_launch(self, instance: WorkerInstance, image: CustomImage) -> Launch:
        setup = instance.setup
        port = self._resources.ports.take(instance.name)
        gateway = minimal_environment(setup.private_dir, len(setup.cpus))
        gateway["SAGEMAKER_BIND_TO_PORT"] = str(port)
        gateway["SM_MODEL_DIR"] = str(self.model_dir)
        image_environment = {}
        if image.python_path:
            image_environment["PYTHONPATH"] = os.pathsep.join(str(p) for p in image.python_path)
        image_environment.update(image.environment)
        environment = worker_environment(
            gateway, image_environment, self.deployment.environment, name=instance.name
        )
        argv = image.argv(python=sys.executable, model_dir=self.model_dir, port=port)
        return Launch(
            argv, environment, image.working_directory, UpstreamAddress.tcp(LOOPBACK, port)
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
