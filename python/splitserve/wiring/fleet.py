"""The control plane's `Deployer`, made of real parts: worker fleets, a Rust router, the registry.

For every generation of an endpoint (its first deployment, then one per UpdateEndpoint) the deployer
starts one `VariantFleet` per production variant, builds a `Router` over their instances and a
keep-alive `UpstreamPool` per instance, and keeps them until the generation is retired. Activating a
generation publishes it in the `EndpointRegistry` in one assignment, which is the blue/green switch.

It is also the supervisor's `InstanceListener`: health changes go straight to the router that owns
the instance, and the supervisor drains an instance by asking this object for its in-flight count.

What routes to the generations is built in `generations.py` (the routing documents the other
replicas get, a stepped update's router over two fleets); what DescribeEndpoint lists of their
instances, in `instances.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping

from splitserve._router import Router, UnknownInstanceError
from splitserve.capture.writer import CaptureWriter
from splitserve.cluster.routing import RoutingDocument
from splitserve.config import Settings
from splitserve.control.deployer import DeploymentPlan
from splitserve.errors import DeploymentError
from splitserve.metrics.minutes import MinuteStore
from splitserve.metrics.prometheus import (
    VARIANT_DESIRED_INSTANCES,
    VARIANT_DESIRED_WEIGHT,
    VARIANT_INSTANCES,
    VARIANT_WEIGHT,
    remove_variant_gauges,
    remove_variant_series,
)
from splitserve.runtime.failures import FailureLog
from splitserve.runtime.registry import EndpointRegistry, LiveEndpoint
from splitserve.runtime.shadow import ShadowCopier
from splitserve.wiring.generations import (
    Generation,
    RoutingPublisher,
    ShiftRouters,
    generation_document,
    plan_table,
    router_errors,
    router_table,
    shadow_targets,
    shift_document,
)
from splitserve.wiring.instances import instance_listing, shared_cpus_warning
from splitserve.wiring.live import LiveParts
from splitserve.workers.fleet import VariantDeployment
from splitserve.workers.instance import InstanceInfo
from splitserve.workers.placement import Placement

log = logging.getLogger(__name__)


class FleetDeployer:
    """Runs endpoints on local worker processes; implements the control plane's Deployer."""

    def __init__(
        self,
        settings: Settings,
        registry: EndpointRegistry,
        capture: CaptureWriter | None = None,
        minutes: MinuteStore | None = None,
    ) -> None:
        """A deployer publishing to `registry`; `capture` writes the endpoints' data capture
        (without it, DataCaptureConfig is accepted but nothing is captured); `minutes` holds the
        variants' per-minute figures (a new store when None)."""
        self._settings = settings
        self._registry = registry
        self._parts = LiveParts(
            settings, MinuteStore(settings.stats) if minutes is None else minutes, capture
        )
        self._minutes = self._parts.minutes
        self._publisher: RoutingPublisher | None = None
        self._supervisor: Placement | None = None
        self._generations: dict[tuple[str, int], Generation] = {}
        self._owner: dict[str, Generation] = {}
        self._healthy: dict[str, bool] = {}
        self._closing: set[asyncio.Future[None]] = set()
        # Endpoint -> the variants whose weight and instance gauges are set (the live ones).
        self._gauged: dict[str, set[str]] = {}
        # Endpoint -> failover as `set_failover` last said (newer than any plan's), until removed.
        self._failover: dict[str, bool] = {}
        self._shadow_failures = FailureLog(
            settings.logs.failures_per_second, settings.logs.failure_message_chars
        )
        # Each endpoint's stepped update's combined router (and the ended ones still draining).
        self._shifts = ShiftRouters(registry, settings.router.seed)
        # Told the name of each endpoint `remove` removed (feedback forgets its labels).
        self._removed: Callable[[str], Awaitable[None]] | None = None

    def when_removed(self, callback: Callable[[str], Awaitable[None]]) -> None:
        """Await `callback(endpoint_name)` after each endpoint `remove` removed."""
        self._removed = callback

    def attach(self, supervisor: Placement) -> None:
        """Give the deployer the placement (the local supervisor, or Ray's) that was built
        with it as its listener."""
        self._supervisor = supervisor

    @property
    def adopts_instances(self) -> bool:
        """True when instances outlive the controller (Ray placement): a recovery redeploys
        each endpoint under its live generation and the placement adopts its running instances."""
        return self._supervisor is not None and self._supervisor.outlives_controller

    async def recovering(self, generations: Mapping[str, int]) -> None:
        """A new controller is about to redeploy each endpoint of `generations` under that
        generation: the placement stops what a previous controller left running besides."""
        await self._require_supervisor().keep_only(generations)

    def publish_to(self, publisher: RoutingPublisher) -> None:
        """Tell `publisher` of every routing change from now on (a controller among replicas)."""
        self._publisher = publisher

    @property
    def minutes(self) -> MinuteStore:
        """Every variant's per-minute statistics (`splitserve stats`), kept with its metrics."""
        return self._minutes

    # --- Deployer ---------------------------------------------------------------------------------

    async def deploy(self, plan: DeploymentPlan) -> None:
        """Start every instance of every variant of `plan`; raise DeploymentError on failure."""
        supervisor = self._require_supervisor()
        fleets = {
            variant.variant_name: supervisor.fleet(
                VariantDeployment(
                    endpoint_name=plan.endpoint_name,
                    variant_name=variant.variant_name,
                    generation=plan.generation,
                    image=variant.image,
                    model_data=variant.model_data,
                    environment=variant.environment,
                    instance_type=variant.instance_type,
                    instance_count=variant.instance_count,
                )
            )
            for variant in plan.variants
        }
        try:
            results = await asyncio.gather(
                *(fleet.start() for fleet in fleets.values()), return_exceptions=True
            )
        except asyncio.CancelledError:
            # An update that timed out, or shutdown: nothing of this generation may stay running.
            await asyncio.shield(asyncio.gather(*(fleet.stop() for fleet in fleets.values())))
            raise
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            await asyncio.gather(*(fleet.stop() for fleet in fleets.values()))
            for failure in failures:
                if isinstance(failure, DeploymentError):
                    # The reason goes to the log too, not only to FailureReason (a model that
                    # does not load, a server that never answers /ping, ...).
                    log.warning(
                        "endpoint %s: generation %d did not start: %s",
                        plan.endpoint_name,
                        plan.generation,
                        failure.message,
                    )
                    raise failure
            raise failures[0]
        self._warn_of_shared_cpus(
            plan.endpoint_name, [info for fleet in fleets.values() for info in fleet.instances()]
        )
        strategies = {v.variant_name: v.routing_strategy for v in plan.variants}
        specs = plan_table(plan, fleets)
        try:
            with router_errors():
                router = Router(
                    specs,
                    salt=plan.endpoint_name,
                    seed=self._settings.router.seed,
                    failover=self._failover.get(plan.endpoint_name, plan.failover),
                )
        except DeploymentError:
            await asyncio.gather(*(fleet.stop() for fleet in fleets.values()))
            raise
        pools = {
            info.name: self._parts.pool(info.address, info.pipeline_depth)
            for fleet in fleets.values()
            for info in fleet.instances()
        }
        variant_names = [v.variant_name for v in plan.variants]
        recorders = self._parts.recorders(plan.endpoint_name, variant_names)
        capture = self._parts.capture_sink(plan.endpoint_name, variant_names, plan.data_capture)
        live = LiveEndpoint(
            name=plan.endpoint_name,
            generation=plan.generation,
            router=router,
            pools=dict(pools),
            recorders=recorders,
            log_stream_arn=self._parts.log_stream_arn(plan.endpoint_name),
            capture=capture,
        )
        shadow_weights = {v.variant_name: v.weight for v in plan.variants if v.shadow}
        generation = Generation(plan, fleets, router, pools, live, strategies, shadow_weights)
        if shadow_weights:
            generation.copier = ShadowCopier(
                plan.endpoint_name,
                shadow_targets(generation, self._healthy),
                recorders,
                capture,
                self._settings.shadow,
                self._shadow_failures,
            )
            generation.live = dataclasses.replace(live, shadows=generation.copier)
        self._generations[plan.endpoint_name, plan.generation] = generation
        for name in pools:
            self._owner[name] = generation
            self._apply_health(generation, name)

    async def activate(self, plan: DeploymentPlan) -> None:
        """Route the endpoint's requests to this generation from now on, in one step."""
        generation = self._generations[plan.endpoint_name, plan.generation]
        self._registry.publish(generation.live)
        self._shifts.end(plan.endpoint_name)
        self._gauge(generation)
        # The old generation is retired after this: the other replicas must have left it.
        await self._sync(plan.endpoint_name)

    async def shift(
        self, endpoint_name: str, blue_generation: int, green_generation: int, green_share: float
    ) -> None:
        """Route `green_share` of the requests to generation `green_generation` and the rest to
        `blue_generation`, in one router over both fleets (each fleet's share split by its own
        variants' weights); 0 routes everything to blue again. Returns once every replica
        routes so (docs/architecture.md, "Deployment guardrails")."""
        blue = self._generations[endpoint_name, blue_generation]
        green = self._generations[endpoint_name, green_generation]
        if green_share <= 0:
            self._registry.publish(blue.live)
            self._shifts.end(endpoint_name)
            self._gauge(blue)
            await self._sync(endpoint_name)
            return
        weights = self._shifts.step(
            blue,
            green,
            green_share,
            failover=self._failover.get(endpoint_name, blue.plan.failover),
            healthy=self._healthy,
        )
        for variant, weight in weights.items():
            VARIANT_WEIGHT.labels(endpoint_name, variant).set(weight)
        self._changed(endpoint_name)
        await self._sync(endpoint_name)

    def _gauge(self, generation: Generation) -> None:
        """The weight and instance gauges of the generation that now takes all the traffic."""
        plan = generation.plan
        live_variants = {variant.variant_name for variant in plan.variants}
        # Variants the switch left behind are not routed to: no weight, no instances.
        for gone in self._gauged.get(plan.endpoint_name, set()) - live_variants:
            remove_variant_gauges(plan.endpoint_name, gone)
        self._gauged[plan.endpoint_name] = live_variants
        for variant in plan.variants:
            labels = (plan.endpoint_name, variant.variant_name)
            VARIANT_WEIGHT.labels(*labels).set(variant.weight)
            VARIANT_DESIRED_WEIGHT.labels(*labels).set(variant.weight)
            VARIANT_DESIRED_INSTANCES.labels(*labels).set(variant.instance_count)
            self._count_healthy(generation, variant.variant_name)

    async def retire(self, endpoint_name: str, generation: int) -> None:
        """Drain and stop an old generation and close its connections."""
        retired = self._generations.pop((endpoint_name, generation), None)
        if retired is None:
            return
        if retired.copier is not None:
            retired.copier.close()
        await asyncio.gather(*(fleet.stop() for fleet in retired.fleets.values()))
        # Its instances are drained: what a past shift's router handed them is done.
        self._shifts.forget_ended(endpoint_name)
        for name, pool in retired.pools.items():
            self._owner.pop(name, None)
            self._healthy.pop(name, None)
            await pool.close()
        # A variant no remaining generation serves leaves the metrics (its minutes stay a while).
        remaining = {
            variant
            for (name, _), kept in self._generations.items()
            if name == endpoint_name
            for variant in kept.fleets
        }
        for variant in retired.fleets.keys() - remaining:
            remove_variant_series(endpoint_name, variant)
            self._gauged.get(endpoint_name, set()).discard(variant)
            self._minutes.retire(endpoint_name, variant)

    async def set_weights(self, endpoint_name: str, weights: Mapping[str, float]) -> None:
        """Change the live generation's weights atomically in its router."""
        generation = self._live_generation(endpoint_name)
        routed = {k: v for k, v in weights.items() if k not in generation.shadow_weights}
        with router_errors():
            generation.router.set_weights(routed)
        for variant, weight in weights.items():
            if variant in generation.shadow_weights:
                generation.shadow_weights[variant] = weight
        self._retarget(generation)  # a shadow's share follows production's weights too
        for variant, weight in weights.items():
            VARIANT_WEIGHT.labels(endpoint_name, variant).set(weight)
            VARIANT_DESIRED_WEIGHT.labels(endpoint_name, variant).set(weight)
        # The change answers once every replica routes with it: the next request sees it.
        await self._sync(endpoint_name)

    async def set_failover(self, endpoint_name: str, failover: bool) -> None:
        """Turn failover on or off in every router of the endpoint at once (no new table: the
        instances keep their in-flight counts and health), and in generations deployed later."""
        self._failover[endpoint_name] = failover
        for (name, _), generation in self._generations.items():
            if name == endpoint_name:
                generation.router.set_failover(failover)
        self._shifts.set_failover(endpoint_name, failover)
        self._changed(endpoint_name)

    async def scale(self, endpoint_name: str, variant_name: str, instance_count: int) -> None:
        """Grow or shrink one variant of the live generation to `instance_count` instances."""
        generation = self._live_generation(endpoint_name)
        VARIANT_DESIRED_INSTANCES.labels(endpoint_name, variant_name).set(instance_count)
        await self._scale(generation, variant_name, instance_count)

    async def scale_generation(
        self, endpoint_name: str, generation: int, variant_name: str, instance_count: int
    ) -> None:
        """Grow or shrink one variant of a deployed generation, live or not (a rolling update
        grows the new fleet and shrinks the old one batch by batch); a stepped update's router
        routes to what the two fleets then have, and every replica routes so on return."""
        deployed = self._generations.get((endpoint_name, generation))
        if deployed is None:
            raise DeploymentError(
                f"Endpoint {endpoint_name} runs no generation {generation} to scale."
            )
        await self._scale(deployed, variant_name, instance_count)
        shift = self._shifts.current(endpoint_name)
        if shift is None or deployed not in (shift.blue, shift.green):
            await self._sync(endpoint_name)
            return
        self._shifts.rebuild(shift, self._healthy)
        self._changed(endpoint_name)
        await self._sync(endpoint_name)

    async def _scale(self, generation: Generation, variant_name: str, instance_count: int) -> None:
        """Grow or shrink one variant of `generation` (its fleet, router, pools and plan)."""
        endpoint_name = generation.plan.endpoint_name
        fleet = generation.fleets[variant_name]
        generation.plan = dataclasses.replace(
            generation.plan,
            variants=tuple(
                dataclasses.replace(v, instance_count=instance_count)
                if v.variant_name == variant_name
                else v
                for v in generation.plan.variants
            ),
        )
        before = {info.name for info in fleet.instances()}
        await fleet.scale(instance_count)
        after = {info.name: info for info in fleet.instances()}
        # New instances get a pool (published first) before the router can return them.
        for name in after.keys() - before:
            generation.pools[name] = self._parts.pool(
                after[name].address, after[name].pipeline_depth
            )
            self._owner[name] = generation
        self._republish(generation)
        with router_errors():
            generation.router.replace(router_table(generation))
        self._retarget(generation)
        for name in after.keys() - before:
            self._apply_health(generation, name)
        self._warn_of_shared_cpus(
            endpoint_name, [after[name] for name in sorted(after.keys() - before)]
        )
        # Removed instances were drained by the fleet before it stopped them.
        for name in before - after.keys():
            self._owner.pop(name, None)
            self._healthy.pop(name, None)
            pool = generation.pools.pop(name)
            await pool.close()
        self._republish(generation)
        self._count_healthy(generation, variant_name)

    async def remove(self, endpoint_name: str) -> None:
        """Stop routing to the endpoint, then drain and stop every generation of it."""
        self._registry.withdraw(endpoint_name)
        await self._sync(endpoint_name)  # no replica routes to it before it is stopped
        for name, generation in list(self._generations):
            if name == endpoint_name:
                await self.retire(name, generation)
        for variant in self._gauged.pop(endpoint_name, set()):
            remove_variant_gauges(endpoint_name, variant)
        self._minutes.forget(endpoint_name)
        self._failover.pop(endpoint_name, None)
        if self._removed is not None:
            await self._removed(endpoint_name)

    def instance_details(self, endpoint_name: str) -> dict[str, list[dict[str, object]]]:
        """Per variant of the live generation: each instance's name, CPUs and state."""
        generation = self._routed_generation(endpoint_name)
        if generation is None:
            return {}
        return instance_listing(generation, self._cpu_usage())

    def pending(self, endpoint_name: str) -> None:
        """The endpoint is being deployed: its requests get a retryable 503 until it is live."""
        self._registry.pending(endpoint_name)
        self._changed(endpoint_name)

    def failed(self, endpoint_name: str, failure_reason: str) -> None:
        """The endpoint failed: without a live generation its requests get a 400 saying why.
        The reason is logged as well (also for an endpoint found Failed at start)."""
        log.warning("endpoint %s is Failed: %s", endpoint_name, failure_reason)
        self._registry.failed(endpoint_name, failure_reason)
        self._changed(endpoint_name)

    def live_instances(self) -> dict[tuple[str, str], list[InstanceInfo]]:
        """Every instance of each endpoint's live generation, by (endpoint, variant name)."""
        listing: dict[tuple[str, str], list[InstanceInfo]] = {}
        for endpoint_name in self._registry.names():
            generation = self._routed_generation(endpoint_name)
            if generation is None:
                continue
            for variant, fleet in generation.fleets.items():
                listing[endpoint_name, variant] = fleet.instances()
        return listing

    async def close(self) -> None:
        """Stop every fleet and close every connection (gateway shutdown). Instances that
        outlive the controller (Ray) are let go of instead, for the next controller to adopt."""
        if not self.adopts_instances:
            for endpoint_name, generation in list(self._generations):
                await self.retire(endpoint_name, generation)
            return
        for kept in self._generations.values():
            if kept.copier is not None:
                kept.copier.close()  # its senders are this process's tasks
            await asyncio.gather(*(fleet.detach() for fleet in kept.fleets.values()))
            for pool in kept.pools.values():
                await pool.close()
        self._generations.clear()
        self._owner.clear()

    def routing_document(self, endpoint_name: str) -> RoutingDocument | None:
        """What the other replicas route `endpoint_name` by now; None once it is removed."""
        live = self._registry.get(endpoint_name)
        generation = (
            None if live is None else self._generations.get((endpoint_name, live.generation))
        )
        unroutable = self._registry.unroutable(endpoint_name)
        if generation is None or (unroutable is not None and live is None):
            if unroutable is None:
                return None
            if unroutable.failure_reason is None:
                return RoutingDocument(endpoint_name, "pending")
            return RoutingDocument(endpoint_name, "failed", unroutable.failure_reason)
        shift = self._shifts.current(endpoint_name)
        if shift is not None and live is shift.live:
            return shift_document(shift, self._document_of(shift.blue), self._healthy)
        return self._document_of(generation)

    def _document_of(self, generation: Generation) -> RoutingDocument:
        """The routing document of `generation` taking all the endpoint's traffic."""
        plan = generation.plan
        failover = self._failover.get(plan.endpoint_name, plan.failover)
        return generation_document(generation, self._healthy, failover)

    def endpoint_names(self) -> list[str]:
        """Every endpoint the registry knows: live, being deployed or failed."""
        return self._registry.known()

    # --- InstanceListener -------------------------------------------------------------------------

    def instance_healthy(self, instance: InstanceInfo) -> None:
        """An instance passed its health check: let the router send it traffic.

        A restarted TCP instance may listen on a new port, so its pool is replaced (and the old
        one closed) when the address changed, before the router may pick it again.
        """
        generation = self._owner.get(instance.name)
        pool = None if generation is None else generation.pools.get(instance.name)
        if generation is not None and pool is not None and pool.address != instance.address:
            generation.pools[instance.name] = self._parts.pool(
                instance.address, instance.pipeline_depth
            )
            self._republish(generation)
            self._closing.add(asyncio.ensure_future(pool.close()))
            self._closing = {task for task in self._closing if not task.done()}
        self._set_health(instance.name, healthy=True)

    def instance_unhealthy(self, instance: InstanceInfo) -> None:
        """An instance failed, crashed or is being drained: the router stops picking it."""
        self._set_health(instance.name, healthy=False)

    def in_flight(self, instance_name: str) -> int:
        """Requests the router has handed to the instance and not yet released."""
        generation = self._owner.get(instance_name)
        if generation is None:
            return 0
        endpoint_name = generation.plan.endpoint_name
        routers = [generation.router, *self._shifts.routers(endpoint_name)]
        count = 0
        for router in routers:  # a stepped update's router hands out this instance too
            with contextlib.suppress(UnknownInstanceError):
                count += router.in_flight(instance_name)
        return count

    # --- helpers ----------------------------------------------------------------------------------

    def _set_health(self, name: str, *, healthy: bool) -> None:
        self._healthy[name] = healthy
        generation = self._owner.get(name)
        if generation is not None:
            self._apply_health(generation, name)
            self._shifts.set_healthy(generation.plan.endpoint_name, name, healthy)
            self._retarget(generation)
            for variant, fleet in generation.fleets.items():
                if any(info.name == name for info in fleet.instances()):
                    self._count_healthy(generation, variant)
            self._changed(generation.plan.endpoint_name)

    def _apply_health(self, generation: Generation, name: str) -> None:
        """Tell the router what the supervisor last said of `name` (healthy until told otherwise
        is not safe: an instance is healthy only once it answered a ping)."""
        # Not in this router's table yet: applied when the table is replaced.
        with contextlib.suppress(UnknownInstanceError):
            generation.router.set_healthy(name, self._healthy.get(name, False))

    def _count_healthy(self, generation: Generation, variant: str) -> None:
        if self._registry.get(generation.plan.endpoint_name) is not generation.live:
            return  # Only the live generation's instances are the variant's instances.
        if variant in generation.shadow_weights:
            count = sum(
                self._healthy.get(info.name, False)
                for info in generation.fleets[variant].instances()
            )
        else:
            count = len(generation.router.healthy_instances(variant))
        VARIANT_INSTANCES.labels(generation.plan.endpoint_name, variant).set(count)

    def _republish(self, generation: Generation) -> None:
        live = generation.live
        generation.live = generation.repooled()
        self._retarget(generation)
        if self._registry.get(live.name) is live:
            self._registry.publish(generation.live)
            self._changed(live.name)
        if self._shifts.repool(generation):
            self._changed(live.name)

    def _retarget(self, generation: Generation) -> None:
        """Give the generation's copier its shadows' fractions, instances and health as they
        are now (after a weight, instance or health change)."""
        if generation.copier is not None:
            generation.copier.retarget(shadow_targets(generation, self._healthy))

    def _routed_generation(self, endpoint_name: str) -> Generation | None:
        """The generation the registry routes the endpoint to (None: none, or not running)."""
        live = self._registry.get(endpoint_name)
        return None if live is None else self._generations.get((endpoint_name, live.generation))

    def _live_generation(self, endpoint_name: str) -> Generation:
        generation = self._routed_generation(endpoint_name)
        if generation is None:
            raise DeploymentError(f"Endpoint {endpoint_name} has no running fleet.")
        return generation

    def _changed(self, endpoint_name: str) -> None:
        if self._publisher is not None:
            self._publisher.changed(endpoint_name)

    async def _sync(self, endpoint_name: str) -> None:
        if self._publisher is not None:
            await self._publisher.sync(endpoint_name)

    def _cpu_usage(self) -> dict[int, int]:
        """How many running instances each host CPU is given to (nothing before `attach`)."""
        if self._supervisor is None:
            return {}
        return self._supervisor.cpu_usage()

    def _warn_of_shared_cpus(self, endpoint_name: str, started: list[InstanceInfo]) -> None:
        """Warn once per deployment or scale-out when instances it started share CPUs."""
        warning = shared_cpus_warning(endpoint_name, started, self._cpu_usage())
        if warning is not None:
            log.warning("%s", warning)

    def _require_supervisor(self) -> Placement:
        if self._supervisor is None:
            raise RuntimeError("FleetDeployer.attach(supervisor) was not called")
        return self._supervisor
