"""Instances placed on a Ray cluster: the `Placement` of `serve --placement ray`.

Each instance is a detached, named actor (`ray_node.InstanceActor`) in the configured namespace,
named `{endpoint}/{variant}/g{generation}/{index}`, reserving its instance type's vCPUs
(`num_cpus`) and memory (`memory`) from the catalog, and, when its type matches one of
`PlacementSettings.type_resources`, a little of that custom resource: Ray packs instances onto
nodes as SageMaker packs them onto machines. The actor starts the built-in XGBoost server on its
node, on the node's address; the controller pings that address as it pings a local instance
(`instance.HealthProbe`) and tells the same `InstanceListener`, and the gateways forward requests
there directly: Ray is never on the data path.

Faults: a server that fails its health checks, exits, or whose actor or node is lost is replaced
by a new actor of the same name, with the same backoff as a local instance (Ray places it on a
node with room). A type that no node could hold fails the deployment at once, one that no node
has room for fails it after `placement_timeout_seconds`; never a hang.

Detached actors outlive the controller: a new one (a takeover among replicas, or a gateway
restarted after kill -9) redeploys the endpoints under their live generation numbers, and
`RayFleet.start` adopts the actors it finds by name instead of starting new ones
(docs/architecture.md, "Placement"). Stopping a gateway lets go of its actors; DeleteEndpoint,
scale-in and the end of a blue/green update kill them.

The module imports `ray`; `app.py` imports it only when `--placement ray` asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import signal
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from splitserve.config import PlacementSettings, WorkerSettings
from splitserve.contract.upstream import UpstreamAddress
from splitserve.errors import DeploymentError, SplitserveError
from splitserve.workers.catalog import GIB, InstanceCatalog, InstanceType, UnknownInstanceType
from splitserve.workers.fleet import VariantDeployment
from splitserve.workers.images import BuiltinXGBoostImage, ImageRegistry
from splitserve.workers.instance import (
    HealthProbe,
    InstanceInfo,
    InstanceListener,
    PingResult,
    describe_status,
)
from splitserve.workers.ray_node import ActorAddress, ActorSpec, InstanceActor

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: How often a starting instance is pinged until its first 200 (as `instance.py`).
_STARTUP_POLL_SECONDS = 0.05

#: How often a drain checks the listener's in-flight count (as `instance.py`).
_DRAIN_POLL_SECONDS = 0.02

#: How often a freed actor name is checked before a replacement takes it.
_NAME_POLL_SECONDS = 0.1


def connect(settings: PlacementSettings) -> None:
    """Join the Ray cluster as a driver in the configured namespace. Blocking.

    Raises:
        DeploymentError: the cluster cannot be reached.
    """
    if ray.is_initialized():
        return
    _check_reachable(settings)
    try:
        ray.init(
            address=settings.ray_address,
            namespace=settings.ray_namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise DeploymentError(
            f"could not join the Ray cluster at {settings.ray_address}: {error}"
        ) from error


def _check_reachable(settings: PlacementSettings) -> None:
    """Refuse a HOST:PORT nothing answers on within the connect timeout (`ray.init` would wait
    for it without end)."""
    address = settings.ray_address
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or "://" in address:
        return  # "auto", or a client URL: ray.init reports those itself
    try:
        with socket.create_connection(
            (host.strip("[]"), int(port)), timeout=settings.connect_timeout_seconds
        ):
            pass
    except OSError as error:
        raise DeploymentError(
            f"could not join the Ray cluster at {address}: nothing answers there within "
            f"{settings.connect_timeout_seconds:g} s ({error.strerror or error}); start its head "
            "(ray start --head) or give --ray-address HOST:PORT of a running one"
        ) from None


async def join(settings: PlacementSettings) -> None:
    """`connect` (from a thread), then give the gateway its own SIGTERM and SIGINT handling
    back: Ray's core installs a handler that ends the process at once, which would skip the
    gateway's drain and orderly stop.

    Raises:
        DeploymentError: the cluster cannot be reached.
    """
    signals = (signal.SIGTERM, signal.SIGINT)
    saved = {number: signal.getsignal(number) for number in signals}
    await asyncio.to_thread(connect, settings)
    if threading.current_thread() is threading.main_thread():
        for number, handler in saved.items():
            if handler is not None:
                signal.signal(number, handler)


def instance_resources(
    settings: PlacementSettings, instance_type: InstanceType
) -> dict[str, float]:
    """What one actor of `instance_type` reserves: CPU, memory, and its custom resource."""
    resources: dict[str, float] = {"CPU": float(instance_type.vcpus)}
    if settings.reserve_memory:
        resources["memory"] = float(instance_type.memory_bytes)
    custom = custom_resource(settings, instance_type.name)
    if custom is not None:
        resources[custom] = settings.custom_resource_amount
    return resources


def custom_resource(settings: PlacementSettings, type_name: str) -> str | None:
    """The custom resource of `type_name`'s first matching pattern, or None."""
    for pattern, resource in settings.type_resources:
        if fnmatch.fnmatchcase(type_name, pattern):
            return resource
    return None


def unplaceable_reason(
    type_name: str, wanted: Mapping[str, float], nodes: Sequence[Mapping[str, float]]
) -> str | None:
    """Why no node of `nodes` (each node's total resources) could ever hold an actor asking
    for `wanted`; None when one could."""
    for node in nodes:
        if all(node.get(name, 0.0) >= amount for name, amount in wanted.items()):
            return None
    asked = [f"{wanted['CPU']:g} CPUs"]
    if "memory" in wanted:
        asked.append(f"{wanted['memory'] / GIB:g} GiB of memory")
    asked += [f"the custom resource {name!r}" for name in wanted if name not in ("CPU", "memory")]
    largest = (
        "the cluster has no live node"
        if not nodes
        else "its largest node has "
        + f"{max(node.get('CPU', 0.0) for node in nodes):g} CPUs and "
        + f"{max(node.get('memory', 0.0) for node in nodes) / GIB:.1f} GiB"
    )
    return (
        f"No node of the Ray cluster can hold an instance of {type_name}, which asks for "
        f"{', '.join(asked)}: {largest}. Add a node that large, or choose a smaller instance type."
    )


def parse_instance_name(name: str) -> tuple[str, str, int, int] | None:
    """(endpoint, variant, generation, index) of an actor name, or None if it is not one."""
    parts = name.split("/")
    if len(parts) != 4 or not parts[2].startswith("g"):
        return None
    try:
        return parts[0], parts[1], int(parts[2][1:]), int(parts[3])
    except ValueError:
        return None


async def _call(ref: Any, limit_seconds: float | None) -> Any:
    """Await an actor call's ObjectRef, at most `limit_seconds` (None: no limit); TimeoutError
    past it."""
    if limit_seconds is None:
        return await ref
    return await asyncio.wait_for(asyncio.wrap_future(ref.future()), limit_seconds)


def _cause(error: BaseException) -> str:
    """The message of what an actor's method raised (its own exception when it was ours)."""
    if isinstance(error, RayTaskError):
        cause = error.cause
        if isinstance(cause, SplitserveError):
            return cause.message
        if cause is not None:
            return str(cause)
    if isinstance(error, RayActorError):
        return "its Ray actor died (its node, or its process, was lost)"
    return str(error) or type(error).__name__


async def _blocking(function: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.to_thread(function, *args)


class RayPlacement:
    """Makes `RayFleet`s on the cluster `connect` joined (see the module docstring).

    Args:
        settings: the placement settings (namespace, resources, timeouts).
        workers: the worker settings (health checks, backoff, batching, artifact limits).
        images: the image registry (only the built-in XGBoost server is placed on Ray).
        catalog: the instance types.
        listener: told of health changes, asked for in-flight counts.
    """

    outlives_controller = True

    def __init__(
        self,
        settings: PlacementSettings,
        workers: WorkerSettings,
        images: ImageRegistry,
        catalog: InstanceCatalog,
        listener: InstanceListener,
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.images = images
        self.catalog = catalog
        self.listener = listener
        self._fleets: dict[tuple[str, str, int], RayFleet] = {}
        self._closed = False

    def fleet(self, deployment: VariantDeployment) -> RayFleet:
        """A new, not yet started fleet for `deployment`.

        Raises:
            DeploymentError: unknown instance type, an image other than the built-in server, no
                model artifact, an instance count below 1, or the fleet exists already.
        """
        if self._closed:
            raise DeploymentError("the Ray placement is shut down")
        if deployment.instance_count < 1:
            raise DeploymentError(
                f"variant {deployment.variant_name}: the instance count must be at least 1"
            )
        try:
            instance_type = self.catalog.get(deployment.instance_type)
        except UnknownInstanceType as error:
            raise DeploymentError(str(error)) from None
        image = self.images.resolve(deployment.image)
        if not isinstance(image, BuiltinXGBoostImage):
            raise DeploymentError(
                f"variant {deployment.variant_name}: image {deployment.image} is a bring-your-own "
                "server, which --placement ray does not place yet; only the built-in XGBoost "
                "server runs on Ray"
            )
        if deployment.model_data is None:
            raise DeploymentError(
                f"variant {deployment.variant_name}: the SageMaker XGBoost image needs a model"
                " artifact (ModelDataUrl)"
            )
        key = (deployment.endpoint_name, deployment.variant_name, deployment.generation)
        if key in self._fleets:
            raise DeploymentError(
                f"variant {deployment.variant_name} of endpoint {deployment.endpoint_name}"
                f" generation {deployment.generation} is already deployed"
            )
        fleet = RayFleet(self, deployment, instance_type)
        self._fleets[key] = fleet
        return fleet

    def fleets(self) -> list[RayFleet]:
        """Every fleet not yet stopped or let go of."""
        return list(self._fleets.values())

    def cpu_usage(self) -> dict[int, int]:
        """Nothing: instances run on the cluster's nodes, not on this host's CPUs."""
        return {}

    async def keep_only(self, generations: Mapping[str, int]) -> None:
        """Kill every actor of the namespace whose endpoint is not in `generations`, or whose
        generation is not the one recovered (what a previous controller left behind)."""
        for name in await self.actor_names():
            parsed = parse_instance_name(name)
            if parsed is None:
                continue
            endpoint, _, generation, _ = parsed
            if generations.get(endpoint) != generation:
                logger.info("stopping actor %s, left by a previous controller", name)
                await self.kill(name)

    async def actor_names(self) -> list[str]:
        """The names of every named actor alive in this namespace."""
        listed = await _blocking(ray.util.list_named_actors, True)
        namespace = self.settings.ray_namespace
        return sorted(entry["name"] for entry in listed if entry.get("namespace") == namespace)

    async def find(self, name: str) -> Any:
        """The actor named `name` in this namespace, or None."""
        try:
            return await _blocking(ray.get_actor, name, self.settings.ray_namespace)
        except ValueError:
            return None

    async def kill(self, name: str) -> None:
        """Kill the actor named `name` (its server dies with it) if it exists."""
        actor = await self.find(name)
        if actor is not None:
            with contextlib.suppress(RayError, ValueError):
                await _blocking(ray.kill, actor)

    async def node_resources(self) -> list[dict[str, float]]:
        """Each live node's total resources."""
        nodes = await _blocking(ray.nodes)
        return [dict(node.get("Resources", {})) for node in nodes if node.get("Alive")]

    async def close(self) -> None:
        """Let go of every fleet: their actors keep serving for the next controller."""
        self._closed = True
        await asyncio.gather(*(fleet.detach() for fleet in list(self._fleets.values())))

    def forget(self, fleet: RayFleet) -> None:
        """Drop a stopped fleet."""
        if self._fleets.get(fleet.key) is fleet:
            del self._fleets[fleet.key]


class RayFleet:
    """The actors of one variant generation (see the module docstring); `PlacedFleet`."""

    def __init__(
        self, placement: RayPlacement, deployment: VariantDeployment, instance_type: InstanceType
    ) -> None:
        self.placement = placement
        self.deployment = deployment
        self.instance_type = instance_type
        self.resources = instance_resources(placement.settings, instance_type)
        self._instances: dict[int, RayInstance] = {}
        self._artifact: list[ray.ObjectRef[bytes]] = []
        self._artifact_name: str | None = None
        self._operation = asyncio.Lock()
        self._started = False
        self._stop_task: asyncio.Task[None] | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        """(endpoint, variant, generation)."""
        deployment = self.deployment
        return (deployment.endpoint_name, deployment.variant_name, deployment.generation)

    def instance_name(self, index: int) -> str:
        """The actor name of instance `index` (unique in the namespace)."""
        deployment = self.deployment
        return (
            f"{deployment.endpoint_name}/{deployment.variant_name}/g{deployment.generation}/{index}"
        )

    def instances(self) -> list[InstanceInfo]:
        """A snapshot of every instance, by index."""
        return [self._instances[index].info() for index in sorted(self._instances)]

    def spec(self, name: str) -> ActorSpec:
        """What the actor of instance `name` is given."""
        return ActorSpec(
            name=name,
            artifact_name=self._artifact_name,
            environment=dict(self.deployment.environment),
            workers=self.placement.workers,
            node_dir=self.placement.settings.node_model_dir,
        )

    def artifact(self) -> list[ray.ObjectRef[bytes]]:
        """The model artifact's bytes in the object store (in a list: fetched on the node)."""
        return self._artifact

    async def start(self) -> None:
        """Adopt or start `instance_count` actors; return once each answered its first /ping.

        Raises:
            DeploymentError: no node can hold the type, or none had room in time; the artifact
                cannot be read or is refused on the node; the server exits or does not answer.
                Everything this call started is stopped first.
        """
        async with self._operation:
            self._check_running()
            if self._started:
                raise DeploymentError(f"{self._label()} is already started")
            self._started = True
            try:
                reason = unplaceable_reason(
                    self.instance_type.name,
                    self.resources,
                    await self.placement.node_resources(),
                )
                if reason is not None:
                    raise DeploymentError(reason)
                await self._ship_artifact()
                await self._add_instances(range(self.deployment.instance_count))
                await self._kill_extra_actors()
            except BaseException:
                await self.stop()
                raise

    async def scale(self, count: int) -> None:
        """Grow or shrink to `count` actors (shrinking drains, then kills, the highest indices).

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
        """Drain and kill every actor (idempotent)."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(), name=f"stop {self._label()}")
        await asyncio.shield(self._stop_task)

    async def detach(self) -> None:
        """Stop watching the actors, which keep serving (the controller is going away)."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._detach(), name=f"detach {self._label()}")
        await asyncio.shield(self._stop_task)

    # --- internals -------------------------------------------------------------------------------

    async def _stop(self) -> None:
        try:
            await self._stop_instances(list(self._instances.values()))
        finally:
            self._artifact = []
            self.placement.forget(self)

    async def _detach(self) -> None:
        try:
            await asyncio.gather(*(instance.detach() for instance in self._instances.values()))
        finally:
            self._artifact = []
            self.placement.forget(self)

    async def _ship_artifact(self) -> None:
        """Put the model artifact's bytes in the object store, once for every actor."""
        source = self.deployment.model_data
        if source is None:
            return
        try:
            if source.is_dir():
                payload, name = await asyncio.to_thread(_tar_directory, source), "model.tar.gz"
            else:
                payload, name = await asyncio.to_thread(source.read_bytes), source.name
        except OSError as error:
            raise DeploymentError(
                f"model artifact {source} could not be read: {error.strerror or error}"
            ) from error
        limit = self.placement.workers.max_artifact_bytes
        if len(payload) > limit:
            raise DeploymentError(
                f"model artifact {source} is {len(payload)} bytes, over the {limit}-byte limit"
            )
        self._artifact = [await _blocking(ray.put, payload)]
        self._artifact_name = name

    async def _add_instances(self, indices: range) -> None:
        added = [RayInstance(self, index) for index in indices]
        for instance in added:
            self._instances[instance.index] = instance
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

    async def _discard(self, instances: list[RayInstance]) -> None:
        await self._stop_instances(instances)
        for instance in instances:
            if instance.ready.done() and not instance.ready.cancelled():
                instance.ready.exception()

    async def _stop_instances(self, instances: list[RayInstance]) -> None:
        await asyncio.gather(*(instance.stop() for instance in instances))
        for instance in instances:
            if self._instances.get(instance.index) is instance:
                del self._instances[instance.index]

    async def _kill_extra_actors(self) -> None:
        """Kill actors of this generation beyond its instance count (a previous controller's
        scale-in that it did not finish)."""
        for name in await self.placement.actor_names():
            parsed = parse_instance_name(name)
            if parsed is None or parsed[:3] != self.key:
                continue
            if parsed[3] not in self._instances:
                logger.info("stopping actor %s, beyond %s's instance count", name, self._label())
                await self.placement.kill(name)

    def _check_running(self) -> None:
        if self._stop_task is not None:
            raise DeploymentError(f"{self._label()} was stopped")

    def _label(self) -> str:
        deployment = self.deployment
        return (
            f"variant {deployment.variant_name} of endpoint {deployment.endpoint_name}"
            f" (generation {deployment.generation})"
        )


class RayInstance:
    """One instance's actor, watched from the controller: adopted or started, pinged, replaced
    with backoff, drained and killed (the same life as `instance.WorkerInstance`)."""

    def __init__(self, fleet: RayFleet, index: int) -> None:
        self.fleet = fleet
        self.index = index
        self.name = fleet.instance_name(index)
        self._placement = fleet.placement
        self._settings = fleet.placement.workers
        self._listener = fleet.placement.listener
        self._actor: Any = None
        self._address: ActorAddress | None = None
        self._state = "starting"
        self._restarts = 0
        self._adopted = False
        self._announced = False
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name=f"ray instance {self.name}")
        self._stop_task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> asyncio.Future[None]:
        """Done once the instance first answered /ping; DeploymentError if it never did."""
        return self._ready

    @property
    def adopted(self) -> bool:
        """True when the running actor was found by name rather than started here."""
        return self._adopted

    def info(self) -> InstanceInfo:
        """A snapshot for the listener and the deployer (the pid is on another node: None)."""
        address = self._address
        return InstanceInfo(
            name=self.name,
            variant_name=self.fleet.deployment.variant_name,
            address=(
                UpstreamAddress.tcp("0.0.0.0", 0)
                if address is None
                else UpstreamAddress.tcp(address.host, address.port)
            ),
            cpus=() if address is None else address.cpus,
            pid=None,
            state=self._state,
            restarts=self._restarts,
            node=None if address is None else address.host,
            node_id=None if address is None else address.node_id,
            vcpus=self.fleet.instance_type.vcpus,
        )

    def stop(self) -> asyncio.Task[None]:
        """Drain and kill this instance's actor (every call gets the same task)."""
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(), name=f"stop {self.name}")
        return self._stop_task

    async def detach(self) -> None:
        """Stop watching; the actor keeps running."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if not self._ready.done():
            self._ready.cancel()

    # --- lifecycle -------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            if not await self._adopt():
                await self._launch()
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

    async def _adopt(self) -> bool:
        """Take over the actor of this name if one runs and answers /ping."""
        actor = await self._placement.find(self.name)
        if actor is None:
            return False
        timeout = self._placement.settings.actor_call_timeout_seconds
        try:
            address = await _call(actor.address.remote(), timeout)
        except (RayError, TimeoutError) as error:
            logger.warning("%s: its actor does not answer (%s); replacing it", self.name, error)
            address = None
        if isinstance(address, ActorAddress):
            self._actor, self._address = actor, address
            probe = HealthProbe(self._tcp(address), self._settings.ping_timeout_seconds)
            try:
                if await probe.ping() is PingResult.OK:
                    self._adopted = True
                    logger.info("%s: adopted its running actor at %s", self.name, self._tcp())
                    return True
            finally:
                await probe.close()
        await self._kill_actor()
        return False

    async def _launch(self) -> None:
        """Start an actor, wait until a node holds it and its server answers /ping."""
        self._state = "starting"
        settings = self._placement.settings
        fleet = self.fleet
        resources = dict(fleet.resources)
        options: dict[str, Any] = {
            "name": self.name,
            "namespace": settings.ray_namespace,
            "lifetime": "detached",
            "num_cpus": resources.pop("CPU"),
        }
        if "memory" in resources:
            options["memory"] = resources.pop("memory")
        if resources:
            options["resources"] = resources
        self._actor = await self._create(options)
        try:
            await _call(self._actor.__ray_ready__.remote(), settings.placement_timeout_seconds)
        except TimeoutError:
            raise DeploymentError(
                f"instance {self.name}: no node of the Ray cluster had room for an instance of "
                f"{fleet.instance_type.name} ({_asked(fleet.resources)}) within "
                f"{settings.placement_timeout_seconds:g} s (placement timeout)"
            ) from None
        except RayError as error:
            raise DeploymentError(
                f"instance {self.name}: its Ray actor could not start: {_cause(error)}"
            ) from error
        startup = self._settings.startup_timeout_seconds
        deadline = time.monotonic() + startup
        try:
            address = await _call(self._actor.start.remote(), startup)
        except TimeoutError:
            raise DeploymentError(
                f"instance {self.name}: its Ray actor did not start the model server within "
                f"{startup:g} s"
            ) from None
        except RayError as error:
            raise DeploymentError(
                f"instance {self.name}: the model server could not start on its node: "
                f"{_cause(error)}"
            ) from error
        self._address = address
        await self._wait_first_ping(deadline)

    async def _create(self, options: dict[str, Any]) -> Any:
        """Make the actor; a name a killed predecessor still holds is waited for (briefly)."""
        deadline = time.monotonic() + self._placement.settings.actor_call_timeout_seconds
        fleet = self.fleet
        spec, artifact = fleet.spec(self.name), fleet.artifact()

        def create() -> Any:
            # Registering a named actor is a synchronous call to Ray's control store.
            return InstanceActor.options(**options).remote(spec, artifact)  # type: ignore[attr-defined]

        while True:
            try:
                return await asyncio.to_thread(create)
            except ValueError as error:
                if time.monotonic() >= deadline:
                    raise DeploymentError(
                        f"instance {self.name}: the actor name is still taken: {error}"
                    ) from error
                await asyncio.sleep(_NAME_POLL_SECONDS)

    async def _wait_first_ping(self, deadline: float) -> None:
        startup = self._settings.startup_timeout_seconds
        exited = asyncio.ensure_future(_call(self._actor.watch.remote(), None))
        probe = HealthProbe(self._tcp(), self._settings.ping_timeout_seconds)
        try:
            while True:
                if exited.done():
                    raise DeploymentError(await self._exit_message(exited))
                if await probe.ping() is PingResult.OK:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeploymentError(
                        await self._with_output(
                            f"instance {self.name}: the model server did not answer GET /ping"
                            f" with 200 within {startup:g} s (health check timeout)"
                        )
                    )
                await asyncio.wait({exited}, timeout=min(_STARTUP_POLL_SECONDS, remaining))
        finally:
            exited.cancel()
            await probe.close()

    async def _exit_message(self, exited: asyncio.Future[Any]) -> str:
        error = exited.exception()
        if error is not None:
            return f"instance {self.name}: {_cause(error)} before it answered GET /ping"
        return await self._with_output(
            f"instance {self.name}: the model server exited with status "
            f"{describe_status(exited.result())} before answering GET /ping"
        )

    async def _with_output(self, message: str) -> str:
        try:
            tail = await _call(
                self._actor.output_tail.remote(),
                self._placement.settings.actor_call_timeout_seconds,
            )
        except (RayError, TimeoutError):
            tail = ""
        return f"{message}; last output:\n{tail}" if tail else f"{message} (it printed nothing)"

    async def _supervise(self) -> None:
        settings = self._settings
        failures_in_a_row = 0
        while True:
            healthy_seconds, reason = await self._watch()
            logger.warning("%s is unhealthy: %s", self.name, reason)
            self._state = "unhealthy"
            self._notify_unhealthy()
            await self._kill_actor()
            if healthy_seconds >= settings.restart_backoff_max_seconds:
                failures_in_a_row = 0
            while True:
                failures_in_a_row += 1
                delay = min(
                    settings.restart_backoff_initial_seconds * 2 ** (failures_in_a_row - 1),
                    settings.restart_backoff_max_seconds,
                )
                logger.info("replacing %s in %.2f s", self.name, delay)
                await asyncio.sleep(delay)
                self._restarts += 1
                try:
                    await self._launch()
                    break
                except DeploymentError as error:
                    logger.warning("replacement of %s failed: %s", self.name, error.message)
                    self._state = "unhealthy"
                    await self._kill_actor()
            self._become_healthy()

    async def _watch(self) -> tuple[float, str]:
        """Ping until the instance fails; how long it was healthy, and why it failed."""
        settings = self._settings
        healthy_since = time.monotonic()
        exited = asyncio.ensure_future(_call(self._actor.watch.remote(), None))
        probe = HealthProbe(self._tcp(), settings.ping_timeout_seconds)
        failures = 0
        try:
            while True:
                await asyncio.wait({exited}, timeout=settings.health_interval_seconds)
                if exited.done():
                    error = exited.exception()
                    reason = (
                        _cause(error)
                        if error is not None
                        else f"the process exited with status {describe_status(exited.result())}"
                    )
                    return time.monotonic() - healthy_since, reason
                result = await probe.ping()
                if result is PingResult.OK:
                    failures = 0
                elif result is PingResult.FAILED:
                    failures += 1
                    if failures >= settings.unhealthy_after_failures:
                        return (
                            time.monotonic() - healthy_since,
                            f"{failures} health checks in a row failed",
                        )
        finally:
            exited.cancel()
            await probe.close()

    def _become_healthy(self) -> None:
        self._state = "healthy"
        logger.info("%s is healthy at %s", self.name, self._tcp())
        self._announced = True
        try:
            self._listener.instance_healthy(self.info())
        except Exception:
            logger.exception("the listener failed on instance_healthy(%s)", self.name)

    def _notify_unhealthy(self) -> None:
        if not self._announced:
            return
        self._announced = False
        try:
            self._listener.instance_unhealthy(self.info())
        except Exception:
            logger.exception("the listener failed on instance_unhealthy(%s)", self.name)

    async def _kill_actor(self) -> None:
        """Kill the current actor (its server dies with it); wait until its name is free."""
        actor, self._actor = self._actor, None
        if actor is None:
            return
        with contextlib.suppress(RayError, ValueError):
            await _blocking(ray.kill, actor)
        deadline = time.monotonic() + self._placement.settings.actor_call_timeout_seconds
        while time.monotonic() < deadline:
            if await self._placement.find(self.name) is None:
                return
            await asyncio.sleep(_NAME_POLL_SECONDS)

    async def _stop(self) -> None:
        settings = self._settings
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if not self._ready.done():
            self._ready.cancel()
        self._state = "stopping"
        if self._announced:
            self._notify_unhealthy()
            await self._drain(settings.stop_grace_seconds)
        actor = self._actor
        if actor is None:
            # Stopped before its start put an actor in place: one may still have been made.
            actor = await self._placement.find(self.name)
            self._actor = actor
        if actor is not None:
            timeout = (
                settings.stop_grace_seconds + self._placement.settings.actor_call_timeout_seconds
            )
            with contextlib.suppress(RayError, TimeoutError):
                await _call(actor.stop.remote(settings.stop_grace_seconds), timeout)
        await self._kill_actor()
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

    def _tcp(self, address: ActorAddress | None = None) -> UpstreamAddress:
        address = address or self._address
        if address is None:
            raise RuntimeError(f"{self.name} has no address yet")
        return UpstreamAddress.tcp(address.host, address.port)


def _asked(resources: Mapping[str, float]) -> str:
    parts = [f"{resources['CPU']:g} CPUs"]
    if "memory" in resources:
        parts.append(f"{resources['memory'] / GIB:g} GiB")
    parts += [name for name in resources if name not in ("CPU", "memory")]
    return ", ".join(parts)


def _tar_directory(directory: Path) -> bytes:
    """An uncompressed model directory as a tar.gz (blocking)."""
    buffer = BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(directory.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return buffer.getvalue()


__all__ = [
    "RayFleet",
    "RayInstance",
    "RayPlacement",
    "connect",
    "custom_resource",
    "instance_resources",
    "parse_instance_name",
    "unplaceable_reason",
]
