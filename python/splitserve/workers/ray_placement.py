"""Instances placed on a Ray cluster: the `Placement` of `serve --placement ray`.

Each instance is a detached, named actor (`ray_node.InstanceActor`) in the configured namespace,
named `{endpoint}/{variant}/g{generation}/{index}`, reserving its instance type's vCPUs
(`num_cpus`) and memory (`memory`) from the catalog, and, when its type matches one of
`PlacementSettings.type_resources`, a little of that custom resource: Ray packs instances onto
nodes as SageMaker packs them onto machines. The actor starts the server (the built-in XGBoost
server or a bring-your-own image's command) on its node, on the node's address, pinned to CPUs
of its reservation where the host has them free (`ray_cpus.py`); the controller pings that
address as it pings a local instance (`health.HealthProbe`) and tells the same
`InstanceListener`, and the gateways forward requests there directly: Ray is never on the data
path. The model artifact reaches the node through Ray's object store, or, with
`PlacementSettings.s3_endpoint_url`, each node fetches it from that S3-compatible store.

Faults: a server that fails its health checks, exits, or whose actor or node is lost is replaced
by a new actor of the same name, with the same backoff as a local instance (Ray places it on a
node with room). A type that no node could hold fails the deployment at once, one that no node
has room for fails it after `placement_timeout_seconds`; never a hang.

Detached actors outlive the controller: a new one (a takeover among replicas, or a gateway
restarted after kill -9) redeploys the endpoints under their live generation numbers, and
`RayFleet.start` adopts the actors it finds by name instead of starting new ones
(docs/architecture.md, "Placement"). Stopping a gateway lets go of its actors; DeleteEndpoint,
scale-in and the end of a blue/green update kill them.

The life of each instance is `instance.WorkerInstance`'s, as locally; `ActorProcess` is its
backend (how an actor is adopted, started, watched and stopped), and `RayFleet` the shared
`fleet.InstanceFleet` with what a start prepares here (the placement check, the artifact).

The module imports `ray`; `app.py` imports it only when `--placement ray` asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from splitserve.config import PlacementSettings, WorkerSettings
from splitserve.contract.upstream import UpstreamAddress
from splitserve.errors import DeploymentError, SplitserveError
from splitserve.workers.artifacts import S3Object, s3_object_under
from splitserve.workers.catalog import InstanceCatalog, InstanceType, UnknownInstanceType
from splitserve.workers.fleet import InstanceFleet, VariantDeployment
from splitserve.workers.health import HealthProbe, PingResult
from splitserve.workers.images import (
    BuiltinXGBoostImage,
    CustomImage,
    ImageRegistry,
    ImageSpec,
    pipeline_depth,
)
from splitserve.workers.instance import (
    InstanceListener,
    ProcessDetails,
    ProcessExit,
    WorkerInstance,
)
from splitserve.workers.ray_cluster import connect, join
from splitserve.workers.ray_node import ActorAddress, ActorSpec, InstanceActor
from splitserve.workers.ray_resources import (
    describe_resources,
    instance_resources,
    parse_instance_name,
    unplaceable_reason,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: How often a freed actor name is checked before a replacement takes it.
_NAME_POLL_SECONDS = 0.1


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
        images: the image registry (a bring-your-own entry's command, working directory and
            python path must exist at the same paths on every node).
        catalog: the instance types.
        listener: told of health changes, asked for in-flight counts.
        model_store: where `s3://bucket/key` resolves on the controller: with
            `settings.s3_endpoint_url`, an artifact under it is fetched by each node from that
            store instead of shipped.
    """

    outlives_controller = True

    def __init__(
        self,
        settings: PlacementSettings,
        workers: WorkerSettings,
        images: ImageRegistry,
        catalog: InstanceCatalog,
        listener: InstanceListener,
        model_store: Path | None = None,
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.images = images
        self.catalog = catalog
        self.listener = listener
        self.model_store = model_store
        self._fleets: dict[tuple[str, str, int], RayFleet] = {}
        self._closed = False

    def fleet(self, deployment: VariantDeployment) -> RayFleet:
        """A new, not yet started fleet for `deployment`.

        Raises:
            DeploymentError: unknown instance type or image, the built-in server without a
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
        if isinstance(image, BuiltinXGBoostImage) and deployment.model_data is None:
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
        fleet = RayFleet(self, deployment, instance_type, image)
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


class RayFleet(InstanceFleet):
    """The actors of one variant generation (see the module docstring); `PlacedFleet`."""

    instances_outlive_controller = True

    def __init__(
        self,
        placement: RayPlacement,
        deployment: VariantDeployment,
        instance_type: InstanceType,
        image: ImageSpec,
    ) -> None:
        super().__init__(deployment, instance_type)
        self.placement = placement
        # Pickled to the nodes: a plain dict, not the registry's read-only mapping.
        self.image = (
            replace(image, environment=dict(image.environment))
            if isinstance(image, CustomImage)
            else None
        )
        self.resources = instance_resources(placement.settings, instance_type)
        self._artifact: list[ray.ObjectRef[bytes]] = []
        self._artifact_name: str | None = None
        self._s3_artifact: S3Object | None = None

    def spec(self, name: str) -> ActorSpec:
        """What the actor of instance `name` is given."""
        return ActorSpec(
            name=name,
            artifact_name=self._artifact_name,
            s3_artifact=self._s3_artifact,
            environment=dict(self.deployment.environment),
            workers=self.placement.workers,
            node_dir=self.placement.settings.node_model_dir,
            image=self.image,
            vcpus=self.instance_type.vcpus,
            memory_limit_bytes=(
                self.instance_type.memory_bytes if self.placement.workers.memory_cap else None
            ),
        )

    def artifact(self) -> list[ray.ObjectRef[bytes]]:
        """The model artifact's bytes in the object store (in a list: fetched on the node)."""
        return self._artifact

    # --- what the fleet supplies ----------------------------------------------------------------

    async def _prepare(self) -> None:
        """Refuse a type no node can hold; ship the artifact to the object store."""
        reason = unplaceable_reason(
            self.instance_type.name, self.resources, await self.placement.node_resources()
        )
        if reason is not None:
            raise DeploymentError(reason)
        await self._ship_artifact()

    async def _started_all(self) -> None:
        await self._kill_extra_actors()

    def _finished(self) -> None:
        self._artifact = []
        self.placement.forget(self)

    def _new_instance(self, index: int) -> WorkerInstance:
        settings = self.placement.workers
        name = self.instance_name(index)
        startup = settings.startup_timeout_seconds
        if self.image is not None and self.image.startup_timeout_seconds is not None:
            startup = self.image.startup_timeout_seconds
        return WorkerInstance(
            name,
            self.deployment.variant_name,
            ActorProcess(self, name),
            settings,
            self.placement.listener,
            startup,
            pipeline_depth(self.image, settings.pipeline_depth),
        )

    # --- internals -------------------------------------------------------------------------------

    async def _ship_artifact(self) -> None:
        """Put the model artifact's bytes in the object store, once for every actor; or, with
        an S3 endpoint and an artifact in the model store, let each node fetch it."""
        source = self.deployment.model_data
        if source is None:
            return
        store, endpoint = self.placement.model_store, self.placement.settings.s3_endpoint_url
        if store is not None and endpoint is not None:
            self._s3_artifact = s3_object_under(store, source, endpoint)
            if self._s3_artifact is not None:
                self._artifact_name = PurePosixPath(self._s3_artifact.key).name
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


class ActorProcess:
    """The `InstanceBackend` of an instance on the cluster: its detached, named actor, found
    by name and adopted, or started on a node with room; replaced under the same name."""

    def __init__(self, fleet: RayFleet, name: str) -> None:
        self.fleet = fleet
        self.name = name
        self._placement = fleet.placement
        self._actor: Any = None
        self._address: ActorAddress | None = None

    def placeholder_address(self) -> UpstreamAddress:
        """No node yet: an address nothing listens on."""
        return UpstreamAddress.tcp("0.0.0.0", 0)

    def details(self) -> ProcessDetails:
        """Its node, node id, vCPUs and the node's CPUs its server may run on (its pid is on
        another host: None)."""
        address = self._address
        return ProcessDetails(
            cpus=() if address is None else address.cpus,
            node=None if address is None else address.host,
            node_id=None if address is None else address.node_id,
            vcpus=self.fleet.instance_type.vcpus,
        )

    async def adopt(self) -> UpstreamAddress | None:
        """Take over the actor of this name if one runs and answers /ping."""
        actor = await self._placement.find(self.name)
        if actor is None:
            return None
        timeout = self._placement.settings.actor_call_timeout_seconds
        try:
            address = await _call(actor.address.remote(), timeout)
        except (RayError, TimeoutError) as error:
            logger.warning("%s: its actor does not answer (%s); replacing it", self.name, error)
            address = None
        if isinstance(address, ActorAddress):
            self._actor, self._address = actor, address
            probe = HealthProbe(_tcp(address), self.fleet.placement.workers.ping_timeout_seconds)
            try:
                if await probe.ping() is PingResult.OK:
                    logger.info("%s: adopted its running actor at %s", self.name, _tcp(address))
                    return _tcp(address)
            finally:
                await probe.close()
        await self.retire()
        return None

    async def launch(self) -> UpstreamAddress:
        """Start an actor, wait until a node holds it and it started the server."""
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
                f"{fleet.instance_type.name} ({describe_resources(fleet.resources)}) within "
                f"{settings.placement_timeout_seconds:g} s (placement timeout)"
            ) from None
        except RayError as error:
            raise DeploymentError(
                f"instance {self.name}: its Ray actor could not start: {_cause(error)}"
            ) from error
        startup = self._placement.workers.startup_timeout_seconds
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
        return _tcp(address)

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

    async def wait_exit(self) -> ProcessExit:
        """The server's exit status, or why its actor (or node) was lost."""
        try:
            return ProcessExit(status=await _call(self._actor.watch.remote(), None))
        except (RayError, ValueError) as error:
            return ProcessExit(status=None, cause=_cause(error))

    async def output_tail(self, max_chars: int) -> str:
        """The server's last output, as its actor kept it."""
        try:
            tail: str = await _call(
                self._actor.output_tail.remote(),
                self._placement.settings.actor_call_timeout_seconds,
            )
        except (RayError, TimeoutError):
            return ""
        return tail[-max_chars:] if max_chars > 0 else ""

    async def retire(self) -> None:
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

    async def stop(self, grace_seconds: float) -> None:
        """Ask the actor to stop its server (SIGTERM, grace, SIGKILL), then kill it."""
        actor = self._actor
        if actor is None:
            # Stopped before its start put an actor in place: one may still have been made.
            actor = await self._placement.find(self.name)
            self._actor = actor
        if actor is not None:
            timeout = grace_seconds + self._placement.settings.actor_call_timeout_seconds
            with contextlib.suppress(RayError, TimeoutError):
                await _call(actor.stop.remote(grace_seconds), timeout)
        await self.retire()


def _tcp(address: ActorAddress) -> UpstreamAddress:
    return UpstreamAddress.tcp(address.host, address.port)


def _tar_directory(directory: Path) -> bytes:
    """An uncompressed model directory as a tar.gz (blocking)."""
    buffer = BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(directory.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return buffer.getvalue()


__all__ = [
    "ActorProcess",
    "RayFleet",
    "RayPlacement",
    "connect",
    "join",
]
