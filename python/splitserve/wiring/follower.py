"""`RoutingFollower`: a replica's live endpoints, built from the controller's routing documents
(docs/architecture.md, "Replicas").

A replica that is not the controller builds its `LiveEndpoint`s from the documents: a new
`Router` and pools when an endpoint's table changed, or only new weights, health and failover in
the router it has. It stops routing, for a short pause, to an instance it could not connect to.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

from splitserve._router import Router, RouterError, UnknownInstanceError, VariantSpec
from splitserve.cluster.routing import RoutedVariant, RoutingDocument
from splitserve.config import Settings
from splitserve.contract.upstream import UpstreamAddress, UpstreamPool
from splitserve.metrics.prometheus import remove_variant_series
from splitserve.runtime.failures import FailureLog
from splitserve.runtime.registry import EndpointRegistry, LiveEndpoint
from splitserve.runtime.shadow import ShadowCopier, ShadowInstance, ShadowTarget, shadow_fraction
from splitserve.wiring.live import LiveParts, data_capture

__all__ = ["RoutingFollower"]

log = logging.getLogger(__name__)

#: How often a new controller looks whether its deployer has published the endpoints it followed.
_REPLACED_POLL_SECONDS = 0.25


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
        # Routers a new document replaced while requests they handed out may still be in
        # flight, and the closing of pools that waits for those requests (`_close_unused_pools`).
        self._draining: list[Router] = []
        self._closing: set[asyncio.Task[None]] = set()

    async def apply(self, documents: dict[str, RoutingDocument], damaged: set[str]) -> None:
        """Route by `documents` from now on; endpoints in `damaged` keep their routing."""
        for name in self._documents.keys() - documents.keys() - damaged:
            # Deleted: it leaves the metrics and the minutes, as on the controller.
            self._registry.withdraw(name)
            self._documents.pop(name)
            self._retire_router(name)
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
            self._retire_router(name)
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
            instance.name: (UpstreamAddress.parse(instance.address), instance.pipeline_depth)
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
        for instance_name, (address, depth) in addresses.items():
            pool = self._pools.get(instance_name)
            if pool is None or pool.address != address or pool.pipeline_depth != depth:
                if pool is not None:
                    self._replaced.append(pool)  # the instance moved
                pool = self._parts.pool(address, depth)
                self._pools[instance_name] = pool
            pools[instance_name] = pool
        # A stepped UpdateEndpoint's router names some variants apart: metrics, capture and the
        # caller see each variant under its own name (`LiveEndpoint.variant_names`).
        variant_names = {
            v.name: v.public_name for v in document.variants if v.public_name is not None
        }
        variants = list(
            dict.fromkeys(v.public_name or v.name for v in (*document.variants, *document.shadows))
        )
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
                variant_names=(
                    {v.name: v.public_name or v.name for v in document.variants}
                    if variant_names
                    else None
                ),
            )
        )
        # The previous table's copies still queued are dropped (counted): its instances may
        # be gone, and the new copier takes the requests from now on.
        self._close_copier(name)
        if copier is not None:
            self._copiers[name] = copier
        self._retire_router(name)
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
        unused = {name: self._pools.pop(name) for name in list(self._pools) if name not in used}
        # Only pools of instances gone from every document are closed, which no router here
        # returns any more; but a request a replaced router handed out before may still be in
        # flight on one (a blue/green switch, the end of a stepped update's shift), and a
        # closed pool would fail it: such pools close once those requests are done.
        self._draining = [router for router in self._draining if _busy(router)]
        busy = {name for name in unused if any(_in_flight(r, name) for r in self._draining)}
        await asyncio.gather(*(pool.close() for name, pool in unused.items() if name not in busy))
        if busy:
            task = asyncio.create_task(
                self._close_when_idle({name: unused[name] for name in busy}, list(self._draining))
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _retire_router(self, endpoint_name: str) -> None:
        """The endpoint's router is replaced or dropped: keep it while it has requests in flight."""
        router = self._routers.pop(endpoint_name, None)
        if router is not None:
            self._draining.append(router)

    async def _close_when_idle(self, pools: dict[str, UpstreamPool], routers: list[Router]) -> None:
        """Close `pools` once no router of `routers` has a request in flight on their instances,
        or after the invocation timeout (a forward cannot last longer)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.workers.invocation_timeout_seconds
        try:
            while loop.time() < deadline and any(  # noqa: ASYNC110 (the router has no event)
                _in_flight(router, name) for router in routers for name in pools
            ):
                await asyncio.sleep(self._settings.database.change_poll_seconds)
        finally:  # also when `close` cancels the wait: the pools close then
            await asyncio.gather(*(pool.close() for pool in pools.values()))

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
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        self._draining.clear()
        pools, self._pools = list(self._pools.values()), {}
        self._documents.clear()
        self._routers.clear()
        self._counted.clear()  # the controller's deployer counts for them from now on
        for name in list(self._copiers):
            self._close_copier(name)
        await asyncio.gather(*(pool.close() for pool in pools))


def _in_flight(router: Router, instance: str) -> int:
    """Requests `router` handed to `instance` and not yet released (0 if it never had it)."""
    try:
        return router.in_flight(instance)
    except UnknownInstanceError:
        return 0


def _busy(router: Router) -> bool:
    """Whether `router` has any request in flight."""
    return any(
        _in_flight(router, instance) for spec in router.variants() for instance in spec.instances
    )


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
