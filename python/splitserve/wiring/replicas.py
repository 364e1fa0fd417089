"""One gateway process as a replica among several over one shared state (docs/architecture.md,
"Replicas").

`ReplicaNode` is this process's membership: it writes its heartbeat row every
`heartbeat_interval_seconds` and, while it is not the controller, tries for the controller lease
and follows the routing documents. When it gets the lease it becomes the controller for good (until
it stops): the app starts the control plane, the supervisor and the fleet deployer in it
(`app._controller`), whose every routing change `ReplicaNode` publishes as routing documents
(`RoutingPublisher`). Weight changes, blue/green switches and removals wait until every live
replica routes with the new documents.

`RoutingFollower` turns routing documents into this process's `LiveEndpoint`s: a new `Router` and
pools when an endpoint's table changed, or only new weights, health and failover in the router it
has. `ControllerForwarder` passes control-plane and CloudWatch requests a replica that is not the
controller receives to the controller's internal listener, as they came (signature included).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from splitserve._router import Router, RouterError, UnknownInstanceError, VariantSpec
from splitserve.cluster.lease import ControllerLease
from splitserve.cluster.routing import RoutedVariant, RoutingDocument
from splitserve.cluster.state import ROUTING_CHANNEL, ClusterState, ReplicaRecord
from splitserve.config import ReplicaSettings, Settings
from splitserve.contract.upstream import UpstreamAddress, UpstreamPool
from splitserve.control.service import ControlService
from splitserve.database import ChangeFeed, DatabaseUnavailable
from splitserve.errors import ServiceUnavailable
from splitserve.metrics.prometheus import remove_variant_series
from splitserve.runtime.failures import FailureLog
from splitserve.runtime.registry import EndpointRegistry, LiveEndpoint
from splitserve.runtime.shadow import ShadowCopier, ShadowInstance, ShadowTarget, shadow_fraction
from splitserve.wiring.fleet import FleetDeployer
from splitserve.wiring.live import LiveParts, data_capture
from splitserve.workers.instance import InstanceInfo

__all__ = [
    "FORWARDED_HEADER",
    "ControllerForwarder",
    "ControllerSlot",
    "ReplicaNode",
    "RoutingFollower",
]

log = logging.getLogger(__name__)

#: How often a new controller looks whether its deployer has published the endpoints it followed.
_REPLACED_POLL_SECONDS = 0.25
#: It keeps the follower's pools for at most this many propagation timeouts while it adopts.
_ADOPTION_WAITS = 12

#: Marks a request one replica passed to the controller: it is never passed on again.
FORWARDED_HEADER = "x-splitserve-forwarded-by"

#: Hop-by-hop headers (RFC 9110, 7.6.1) and those aiohttp sets itself: not passed on.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)

#: The Content-Encodings aiohttp's server decodes while it reads a request body: the body passed
#: on is the decoded one, so its Content-Encoding is not passed on either (the controller would
#: decode it a second time).
_DECODED_ENCODINGS = frozenset({"gzip", "deflate", "br", "zstd"})


@dataclass
class ControllerSlot:
    """The controller's parts in this process: set while it controls the endpoints, None before
    (a replica that is not the controller) and after it stopped."""

    control: ControlService | None = None
    fleet: FleetDeployer | None = None

    def started(self) -> ControlService:
        """The control service, once it runs.

        Raises:
            ServiceUnavailable: this process does not control the endpoints (yet).
        """
        if self.control is None:
            raise ServiceUnavailable("The control plane is starting; retry.")
        return self.control

    def live_instances(self) -> dict[tuple[str, str], list[InstanceInfo]]:
        """Every live instance of the endpoints this process controls, by (endpoint, variant)."""
        return {} if self.fleet is None else self.fleet.live_instances()


class RoutingFollower:
    """Builds this replica's live endpoints from the controller's routing documents."""

    def __init__(self, settings: Settings, registry: EndpointRegistry, parts: LiveParts) -> None:
        """A follower publishing into `registry` the endpoints it builds from `parts`."""
        self._settings = settings
        self._registry = registry
        self._parts = parts
        self._documents: dict[str, RoutingDocument] = {}
        self._routers: dict[str, Router] = {}
        self._pools: dict[str, UpstreamPool] = {}
        # Pools replaced by one to an instance's new address, closed once the new table is live.
        self._replaced: list[UpstreamPool] = []
        # The variants each endpoint's live generation here counts for (its Prometheus series
        # and minute rings), so that those no generation serves any more leave them.
        self._counted: dict[str, set[str]] = {}
        # The shadow copier of each endpoint with shadow variants (this replica copies too).
        self._copiers: dict[str, ShadowCopier] = {}
        self._shadow_failures = FailureLog(
            settings.logs.failures_per_second, settings.logs.failure_message_chars
        )

    async def apply(self, documents: dict[str, RoutingDocument], damaged: set[str]) -> None:
        """Route by `documents` from now on; endpoints in `damaged` keep their routing."""
        for name in self._documents.keys() - documents.keys() - damaged:
            # Deleted: it leaves the metrics and the minutes, as on the controller.
            self._registry.withdraw(name)
            self._documents.pop(name)
            self._routers.pop(name, None)
            self._close_copier(name)
            for variant in self._counted.pop(name, set()):
                remove_variant_series(name, variant)
            self._parts.minutes.forget(name)
        for name, document in documents.items():
            if self._documents.get(name) == document:
                continue
            try:
                self._apply(document)
            except (RouterError, ValueError) as error:
                # A document this replica cannot route by: the endpoint keeps its last routing
                # here (the controller's own router accepted it, so this is a version skew).
                log.error("endpoint %s: routing document refused: %s", name, error)
                continue
            self._documents[name] = document
        replaced, self._replaced = self._replaced, []
        await asyncio.gather(*(pool.close() for pool in replaced))
        await self._close_unused_pools()

    def _apply(self, document: RoutingDocument) -> None:
        name = document.endpoint
        if document.state != "live":
            # The controller routes to none of its instances now (it publishes pending or failed
            # only without a live generation): neither does this replica. Its metrics and minutes
            # stay, as the controller's do, until the endpoint is deleted or redeployed.
            self._registry.withdraw(name)
            self._routers.pop(name, None)
            self._close_copier(name)
            if document.state == "pending":
                self._registry.pending(name)
            else:
                self._registry.failed(name, document.failure_reason or "")
            return
        previous = self._documents.get(name)
        router = self._routers.get(name)
        live = self._registry.get(name)
        if (
            previous is not None
            and previous.state == "live"
            and router is not None
            and live is not None
            and live.generation == document.generation
            and previous.same_table(document)
        ):
            router.set_weights({v.name: v.weight for v in document.variants})
            router.set_failover(document.failover)
            self._set_health(router, document)
            copier = self._copiers.get(name)
            if copier is not None:
                copier.retarget(_shadow_targets(document, self._pools))
            return
        # Everything that can refuse the document first, before anything here changes.
        addresses = {
            instance.name: UpstreamAddress.parse(instance.address)
            for variant in (*document.variants, *document.shadows)
            for instance in variant.instances
        }
        capture = None if document.capture is None else data_capture(document.capture)
        router = Router(
            [
                VariantSpec(v.name, v.weight, [i.name for i in v.instances], v.strategy)
                for v in document.variants
            ],
            salt=name,
            seed=self._settings.router.seed,
            failover=document.failover,
        )
        self._set_health(router, document)
        pools: dict[str, UpstreamPool] = {}
        for instance_name, address in addresses.items():
            pool = self._pools.get(instance_name)
            if pool is None or pool.address != address:
                if pool is not None:
                    self._replaced.append(pool)  # the instance moved
                pool = self._parts.pool(address)
                self._pools[instance_name] = pool
            pools[instance_name] = pool
        variants = [v.name for v in (*document.variants, *document.shadows)]
        recorders = self._parts.recorders(name, variants)
        capture_sink = self._parts.capture_sink(name, variants, capture)
        copier = None
        if document.shadows:
            copier = ShadowCopier(
                name,
                _shadow_targets(document, pools),
                recorders,
                capture_sink,
                self._settings.shadow,
                self._shadow_failures,
            )
        self._registry.publish(
            LiveEndpoint(
                name=name,
                generation=document.generation,
                router=router,
                pools=pools,
                recorders=recorders,
                log_stream_arn=self._parts.log_stream_arn(name),
                capture=capture_sink,
                shadows=copier,
                unreachable=functools.partial(self._unreachable, name, router),
            )
        )
        # The previous table's copies still queued are dropped (counted): its instances may
        # be gone, and the new copier takes the requests from now on.
        self._close_copier(name)
        if copier is not None:
            self._copiers[name] = copier
        self._routers[name] = router
        # A variant no generation here serves any more leaves the metrics (its minutes stay a
        # while), as on the controller.
        for variant in self._counted.get(name, set()) - set(variants):
            remove_variant_series(name, variant)
            self._parts.minutes.retire(name, variant)
        self._counted[name] = set(variants)

    def _close_copier(self, name: str) -> None:
        copier = self._copiers.pop(name, None)
        if copier is not None:
            copier.close()

    @staticmethod
    def _set_health(router: Router, document: RoutingDocument) -> None:
        for variant in document.variants:
            for instance in variant.instances:
                router.set_healthy(instance.name, instance.healthy)

    async def _close_unused_pools(self) -> None:
        used = {
            instance.name
            for document in self._documents.values()
            for variant in (*document.variants, *document.shadows)
            for instance in variant.instances
        }
        unused = [self._pools.pop(name) for name in list(self._pools) if name not in used]
        # A request in flight on a closed pool fails: only pools of instances gone from every
        # document are closed, which no router here returns any more.
        await asyncio.gather(*(pool.close() for pool in unused))

    def _unreachable(self, endpoint_name: str, router: Router, instance: str) -> None:
        """A forward could not connect to `instance`: this replica routes nothing to it for
        `unreachable_pause_seconds` (one replica's view never removes it for the others), then
        goes back to the health the controller publishes."""
        with contextlib.suppress(UnknownInstanceError):
            router.set_healthy(instance, False)
        asyncio.get_running_loop().call_later(
            self._settings.forwarding.unreachable_pause_seconds,
            self._restore_health,
            endpoint_name,
            router,
            instance,
        )

    def _restore_health(self, endpoint_name: str, router: Router, instance: str) -> None:
        document = self._documents.get(endpoint_name)
        if document is None or self._routers.get(endpoint_name) is not router:
            return  # replaced meanwhile: the new router has the published health
        healthy = any(
            i.healthy for v in document.variants for i in v.instances if i.name == instance
        )
        with contextlib.suppress(UnknownInstanceError):
            router.set_healthy(instance, healthy)

    async def hand_over(self) -> None:
        """This replica takes control: every endpoint it followed is pending until its own
        deployer publishes it (a retryable 503, not a failed forward to instances that died with
        the old controller), then the pools are closed."""
        for name in list(self._documents):
            self._registry.withdraw(name)
            self._registry.pending(name)
        await self.close()

    async def close_when_replaced(self, timeout_seconds: float) -> None:
        """This replica took control and its instances serve on (Ray): keep the endpoints it
        built routing until its own deployer has published each of them again (or
        `timeout_seconds` passed), then close the follower's pools."""
        followed = [live for name in self._documents if (live := self._registry.get(name))]
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline and any(  # noqa: ASYNC110 (the registry has no event)
            self._registry.get(live.name) is live for live in followed
        ):
            await asyncio.sleep(_REPLACED_POLL_SECONDS)
        await self.close()

    async def close(self) -> None:
        """Close every pool (the replica stops, or becomes the controller)."""
        pools, self._pools = list(self._pools.values()), {}
        self._documents.clear()
        self._routers.clear()
        self._counted.clear()  # the controller's deployer counts for them from now on
        for name in list(self._copiers):
            self._close_copier(name)
        await asyncio.gather(*(pool.close() for pool in pools))


def _shadow_targets(
    document: RoutingDocument, pools: dict[str, UpstreamPool]
) -> list[ShadowTarget]:
    """The shadow variants of `document` as a copier takes them (`pools` has every instance)."""
    production = [variant.weight for variant in document.variants]
    return [
        _shadow_target(shadow, shadow_fraction(shadow.weight, production), pools)
        for shadow in document.shadows
    ]


def _shadow_target(
    shadow: RoutedVariant, fraction: float, pools: dict[str, UpstreamPool]
) -> ShadowTarget:
    return ShadowTarget(
        shadow.name,
        fraction,
        tuple(
            ShadowInstance(instance.name, pools[instance.name], instance.healthy)
            for instance in shadow.instances
            if instance.name in pools
        ),
    )


class ReplicaNode:
    """This process's membership among the replicas of one state; a `ReplicaView`."""

    def __init__(self, settings: ReplicaSettings, replica_id: str) -> None:
        """Replica `replica_id`; it joins the others at `start`."""
        self._settings = settings
        self._replica_id = replica_id
        self._state: ClusterState | None = None
        self._lease: ControllerLease | None = None
        self._follower: RoutingFollower | None = None
        self._internal_url = ""
        self._become_controller: Callable[[bool], Awaitable[None]] | None = None
        self._host = socket.gethostname()
        self._started = time.time()
        self._controller = False
        self._leading = False
        self._instances_outlive_controller = False
        self._applied = -1
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[str] = set()
        self._publish_wanted = asyncio.Event()
        self._document_source: Callable[[str], RoutingDocument | None] | None = None

    # --- ReplicaView ------------------------------------------------------------------------------

    @property
    def replica_id(self) -> str:
        """This process's replica id."""
        return self._replica_id

    def is_controller(self) -> bool:
        """True once this process holds the controller lease (and has started controlling)."""
        return self._controller

    async def host_peers(self) -> list[str]:
        """Internal URLs of the other live replicas on this host."""
        if self._state is None:
            return []
        return [
            replica.internal_url
            for replica in await self._live_replicas()
            if replica.host == self._host and replica.replica_id != self._replica_id
        ]

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(
        self,
        state: ClusterState,
        lease: ControllerLease,
        follower: RoutingFollower,
        internal_url: str,
        become_controller: Callable[[bool], Awaitable[None]],
        *,
        instances_outlive_controller: bool = False,
    ) -> None:
        """Join the replicas: write rows to `state`, follow with `follower` until this process
        holds `lease`, then await `become_controller(takeover)` once. The first try for the
        lease is made here, so the first replica of a state controls it before it serves
        (`takeover` False: the replicas are starting); a later one takes control over from a
        controller that died (`takeover` True). `instances_outlive_controller`: the placement's
        instances survive a controller (Ray), so this replica keeps routing to them while it
        takes control, instead of answering 503 until they are published again."""
        self._instances_outlive_controller = instances_outlive_controller
        self._state = state
        self._lease = lease
        self._follower = follower
        self._internal_url = internal_url
        self._become_controller = become_controller
        await self._heartbeat()
        if await asyncio.to_thread(lease.try_acquire):
            await self._take_control(takeover=False)
        self._tasks = [
            asyncio.create_task(self._beat(), name="replica heartbeat"),
            asyncio.create_task(self._follow(), name="replica routing follower"),
        ]

    async def close(self) -> None:
        """Stop, leave the replicas' table and give the lease up."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._follower is not None:
            await self._follower.close()
        if self._state is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._state.leave, self._replica_id)
        if self._lease is not None:
            await asyncio.to_thread(self._lease.release)

    async def controller_url(self) -> str | None:
        """The internal URL of the live controller, when there is one (and it is not this)."""
        for replica in await self._live_replicas():
            if replica.controller and replica.replica_id != self._replica_id:
                return replica.internal_url
        return None

    # --- RoutingPublisher (the controller's side) -------------------------------------------------

    def publish_from(self, documents: Callable[[str], RoutingDocument | None]) -> None:
        """Publish what `documents(endpoint)` says whenever `changed` names an endpoint."""
        self._document_source = documents
        self._tasks.append(asyncio.create_task(self._publisher(), name="routing publisher"))

    def changed(self, endpoint_name: str) -> None:
        """The endpoint's routing changed: publish its document soon."""
        self._pending.add(endpoint_name)
        self._publish_wanted.set()

    async def sync(self, endpoint_name: str) -> None:
        """Publish the endpoint's document now and wait until every live replica routes with it
        (at most `propagation_timeout_seconds`; the replicas still behind are logged)."""
        self._pending.discard(endpoint_name)
        version = await self._publish([endpoint_name])
        await self._wait_applied(version)

    async def publish_all(self, endpoint_names: list[str]) -> None:
        """Publish the documents of `endpoint_names` and remove every other one (a new
        controller's first publication: endpoints the old one knew but the store no longer
        has are gone)."""
        assert self._document_source is not None
        assert self._state is not None
        _, stored, damaged = await asyncio.to_thread(self._state.routing)
        gone = sorted((stored.keys() | damaged) - set(endpoint_names))
        await self._publish([*endpoint_names, *gone])

    async def _publisher(self) -> None:
        while True:
            await self._publish_wanted.wait()
            self._publish_wanted.clear()
            names, self._pending = sorted(self._pending), set()
            try:
                await self._publish(names)
            except Exception:
                log.exception("routing documents of %s not published", ", ".join(names))
                self._pending.update(names)
                await asyncio.sleep(self._settings.heartbeat_interval_seconds)
                self._publish_wanted.set()

    async def _publish(self, names: list[str]) -> int:
        assert self._document_source is not None
        assert self._state is not None
        documents: list[RoutingDocument] = []
        removed: list[str] = []
        for name in names:
            document = self._document_source(name)
            if document is None:
                removed.append(name)
            else:
                documents.append(document)
        return await asyncio.to_thread(self._state.publish, documents, removed)

    async def _wait_applied(self, version: int) -> None:
        deadline = time.monotonic() + self._settings.propagation_timeout_seconds
        while True:
            behind = [
                replica
                for replica in await self._live_replicas()
                if replica.replica_id != self._replica_id and replica.applied_version < version
            ]
            if not behind:
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "routing version %d: replicas %s had not applied it after %g s",
                    version,
                    ", ".join(r.replica_id for r in behind),
                    self._settings.propagation_timeout_seconds,
                )
                return
            await asyncio.sleep(self._settings.routing_poll_seconds / 2)

    # --- the loops --------------------------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._settings.heartbeat_interval_seconds)
            try:
                await self._heartbeat()
                assert self._lease is not None
                if self._controller:
                    if not await asyncio.to_thread(self._lease.renew):
                        self._lost_control()
                        # Once: the process drains now (a second SIGTERM would cut the drain
                        # short); its row ages out, and the new controller's replaces it.
                        return
                elif await asyncio.to_thread(self._lease.try_acquire):
                    await self._take_control(takeover=True)
            except asyncio.CancelledError:
                raise
            except DatabaseUnavailable as error:
                # The lease stays as it was: nobody can take it while the database is down.
                log.warning("replica %s: no heartbeat: %s", self._replica_id, error.message)
            except Exception:
                log.exception("replica %s: heartbeat failed", self._replica_id)

    def _lost_control(self) -> None:
        """Another replica holds the lease (this one was cut off from the database for longer
        than its TTL): stop at once, draining, so two controllers never run instances of the same
        endpoints for long; a supervisor starts this replica again as a follower."""
        log.critical(
            "replica %s lost the controller lease to another replica: stopping", self._replica_id
        )
        os.kill(os.getpid(), signal.SIGTERM)

    async def _take_control(self, *, takeover: bool) -> None:
        log.info("replica %s holds the controller lease: it controls the endpoints now",
                 self._replica_id)  # fmt: skip
        assert self._follower is not None
        assert self._become_controller is not None
        self._leading = True  # the follower stops
        if self._instances_outlive_controller:
            # The instances serve on (Ray): route to them with the follower's tables until the
            # new controller has adopted and published them, then drop the follower's pools.
            await self._become_controller(takeover)
            self._tasks.append(
                asyncio.create_task(
                    self._follower.close_when_replaced(
                        self._settings.propagation_timeout_seconds * _ADOPTION_WAITS
                    ),
                    name="follower pools after takeover",
                )
            )
        else:
            await self._follower.hand_over()
            await self._become_controller(takeover)
        # Only now: until its control plane runs, this replica passes control requests on
        # (and, with no live controller, answers 503), and others find no controller.
        self._controller = True
        await self._heartbeat()

    async def _heartbeat(self) -> None:
        assert self._state is not None
        await asyncio.to_thread(
            self._state.heartbeat,
            ReplicaRecord(
                replica_id=self._replica_id,
                host=self._host,
                pid=os.getpid(),
                internal_url=self._internal_url,
                started=self._started,
                heartbeat=time.time(),
                applied_version=self._applied,
                controller=self._controller,
            ),
        )

    async def _follow(self) -> None:
        assert self._state is not None
        assert self._follower is not None
        database = self._state.database
        # PostgreSQL notifies routing changes (LISTEN); SQLite's version is one cheap read.
        feed = database.changes(ROUTING_CHANNEL) if database.kind == "postgresql" else None
        try:
            await self._follow_changes(feed)
        finally:
            if feed is not None:
                feed.close()

    async def _follow_changes(self, feed: ChangeFeed | None) -> None:
        assert self._state is not None
        assert self._follower is not None
        while self._following():
            try:
                version = await asyncio.to_thread(self._state.routing_version)
                if version != self._applied:
                    version, documents, damaged = await asyncio.to_thread(self._state.routing)
                    if not self._following():
                        return  # it took control meanwhile: its own deployer routes now
                    await self._follower.apply(documents, damaged)
                    self._applied = version
                    await asyncio.to_thread(self._state.applied, self._replica_id, version)
            except asyncio.CancelledError:
                raise
            except DatabaseUnavailable as error:
                # Routing stays as it was until the database is back.
                log.warning("replica %s: routing not read: %s", self._replica_id, error.message)
                await asyncio.sleep(self._settings.heartbeat_interval_seconds)
            except Exception:
                log.exception("replica %s: routing documents not read", self._replica_id)
                await asyncio.sleep(self._settings.heartbeat_interval_seconds)
            if feed is None:
                await asyncio.sleep(self._settings.routing_poll_seconds)
            else:
                # Wakes on a notification; the timeout re-reads the version in case one was
                # missed while the connection was being re-established.
                with contextlib.suppress(DatabaseUnavailable):
                    await asyncio.to_thread(feed.wait, self._settings.heartbeat_interval_seconds)

    def _following(self) -> bool:
        return not self._leading

    async def _live_replicas(self) -> list[ReplicaRecord]:
        assert self._state is not None
        since = time.time() - self._settings.replica_timeout_seconds
        return await asyncio.to_thread(self._state.replicas, since)


class ControllerForwarder:
    """Passes a request to the controller's internal listener and its answer back, as they are."""

    def __init__(self, node: ReplicaNode, settings: ReplicaSettings) -> None:
        """A forwarder finding the controller through `node`."""
        self._node = node
        self._timeout = aiohttp.ClientTimeout(total=settings.forward_timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def forward(self, request: web.Request) -> web.Response:
        """The controller's answer to `request`.

        Raises:
            ServiceUnavailable: no controller is known or reachable (one is being elected), or
                the request was already passed on once.
        """
        if FORWARDED_HEADER in request.headers:
            raise ServiceUnavailable(
                "The replica this request was passed to no longer controls the endpoints; retry."
            )
        url = await self._node.controller_url()
        if url is None:
            raise ServiceUnavailable(
                "No replica controls the endpoints at the moment (one is taking over); retry."
            )
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        headers = [
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in _NOT_FORWARDED
            and not (name.lower() == "content-encoding" and value.lower() in _DECODED_ENCODINGS)
        ]
        headers.append((FORWARDED_HEADER, self._node.replica_id))
        body = await request.read()
        try:
            async with self._session.request(
                request.method,
                url + request.raw_path,
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as answer:
                payload = await answer.read()
                kept = [
                    (name, value)
                    for name, value in answer.headers.items()
                    if name.lower() not in _NOT_FORWARDED
                ]
                return web.Response(status=answer.status, body=payload, headers=kept)
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("control request not passed to the controller at %s: %s", url, error)
            raise ServiceUnavailable(
                "The replica that controls the endpoints did not answer; retry."
            ) from None

    async def close(self) -> None:
        """Close the client session."""
        if self._session is not None:
            await self._session.close()
