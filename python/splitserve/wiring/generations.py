"""What routes to an endpoint's deployed generations, apart from the deployer's lifecycle.

A `Generation` is one deployed fleet of an endpoint with its router, pools and `LiveEndpoint`
(`fleet.FleetDeployer` starts, activates and retires them). Here are the parts built from them:

- the router tables of a generation (`plan_table`, `router_table`);
- the routing documents the other replicas route by (`generation_document`, `shift_document`),
  handed to a `RoutingPublisher`;
- the shadow variants' targets (`shadow_targets`);
- a stepped UpdateEndpoint's router over two generations (`ShiftRouters`, `combined_table`):
  blue's variants split `1 - share` of the requests, green's `share`
  (docs/architecture.md, "Deployment guardrails").
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from splitserve._router import Router, RouterError, UnknownInstanceError, VariantSpec
from splitserve.cluster.routing import RoutedInstance, RoutedVariant, RoutingDocument
from splitserve.contract.upstream import UpstreamPool
from splitserve.control.deployer import DeploymentPlan
from splitserve.errors import DeploymentError
from splitserve.runtime.registry import EndpointRegistry, LiveEndpoint
from splitserve.runtime.shadow import ShadowCopier, ShadowInstance, ShadowTarget, shadow_fraction
from splitserve.wiring.live import capture_document
from splitserve.workers.placement import PlacedFleet


@contextlib.contextmanager
def router_errors() -> Iterator[None]:
    """Turn the router's refusal of a table (or of a change of weights) into a DeploymentError,
    whose message the control plane reports (the router's messages name what is wrong)."""
    try:
        yield
    except RouterError as error:
        raise DeploymentError(f"The routing table was refused: {error}") from error


class RoutingPublisher(Protocol):
    """Where the controller's routing goes for the other replicas (`wiring.replicas`)."""

    def changed(self, endpoint_name: str) -> None:
        """The endpoint's routing changed: publish its document soon."""

    async def sync(self, endpoint_name: str) -> None:
        """Publish the endpoint's document now and return once every live replica routes
        with it (or the propagation timeout passed)."""


@dataclass
class Generation:
    """One deployed fleet of an endpoint and what routes to it."""

    plan: DeploymentPlan
    fleets: dict[str, PlacedFleet]
    router: Router
    pools: dict[str, UpstreamPool]
    live: LiveEndpoint
    strategies: dict[str, str] = field(default_factory=dict)
    # The shadow variants' weights (the router holds the production variants'), and their copier.
    shadow_weights: dict[str, float] = field(default_factory=dict)
    copier: ShadowCopier | None = None

    def repooled(self) -> LiveEndpoint:
        """The generation's `LiveEndpoint` with its pools as they are now (instances came or
        went, or one listens on a new address)."""
        live = self.live
        return LiveEndpoint(
            name=live.name,
            generation=live.generation,
            router=live.router,
            pools=dict(self.pools),
            recorders=live.recorders,
            log_stream_arn=live.log_stream_arn,
            capture=live.capture,
            shadows=live.shadows,
        )


def plan_table(plan: DeploymentPlan, fleets: Mapping[str, PlacedFleet]) -> list[VariantSpec]:
    """The router table of a new generation: each production variant of `plan` over the
    instances its fleet started. Shadow variants run but are not in the router: it never picks
    them for a caller."""
    return [
        VariantSpec(
            v.variant_name,
            v.weight,
            [i.name for i in fleets[v.variant_name].instances()],
            v.routing_strategy,
        )
        for v in plan.variants
        if not v.shadow
    ]


def router_table(generation: Generation) -> list[VariantSpec]:
    """The router table of `generation` as its fleets run now, with the router's weights."""
    weights = generation.router.weights()
    return [
        VariantSpec(
            variant,
            weights[variant],
            [i.name for i in variant_fleet.instances()],
            generation.strategies[variant],
        )
        for variant, variant_fleet in generation.fleets.items()
        if variant not in generation.shadow_weights
    ]


def generation_document(
    generation: Generation, healthy: Mapping[str, bool], failover: bool
) -> RoutingDocument:
    """The routing document of `generation` taking all the endpoint's traffic; `healthy`: what
    the placement last said of each instance (unknown ones are not healthy)."""
    plan = generation.plan
    weights = {**generation.router.weights(), **generation.shadow_weights}
    routed = [
        RoutedVariant(
            name=variant,
            weight=weights[variant],
            strategy=generation.strategies[variant],
            instances=tuple(
                RoutedInstance(
                    info.name,
                    str(generation.pools[info.name].address),
                    healthy.get(info.name, False),
                    generation.pools[info.name].pipeline_depth,
                )
                for info in fleet.instances()
                if info.name in generation.pools
            ),
        )
        for variant, fleet in generation.fleets.items()
    ]
    return RoutingDocument(
        endpoint=plan.endpoint_name,
        state="live",
        generation=plan.generation,
        failover=failover,
        capture=None if plan.data_capture is None else capture_document(plan.data_capture),
        variants=tuple(v for v in routed if v.name not in generation.shadow_weights),
        shadows=tuple(v for v in routed if v.name in generation.shadow_weights),
    )


def shadow_targets(generation: Generation, healthy: Mapping[str, bool]) -> list[ShadowTarget]:
    """The generation's shadow variants: each one's share of copies, instances and health."""
    production = [
        weight
        for variant, weight in generation.router.weights().items()
        if variant not in generation.shadow_weights
    ]
    return [
        ShadowTarget(
            variant,
            shadow_fraction(weight, production),
            tuple(
                ShadowInstance(
                    info.name,
                    generation.pools[info.name],
                    healthy.get(info.name, False),
                )
                for info in generation.fleets[variant].instances()
                if info.name in generation.pools
            ),
        )
        for variant, weight in generation.shadow_weights.items()
    ]


#: Joins a variant's name and its generation into the name the new fleet's variant has in a
#: stepped update's router when the old fleet has a variant of that name: `~` is outside
#: config.NAME_PATTERN, so no TargetVariant can name it and no configuration can clash with it.
_GREEN_NAME = "{variant}~g{generation}"


@dataclass
class Shift:
    """A stepped UpdateEndpoint in progress: both fleets routed by one router."""

    blue: Generation
    green: Generation
    router: Router
    # The router's variant name -> the variant's name (`LiveEndpoint.variant_names`).
    names: dict[str, str]
    live: LiveEndpoint
    share: float = 0.0  # green's share of the requests at the last step


def shift_document(
    shift: Shift, blue_document: RoutingDocument, healthy: Mapping[str, bool]
) -> RoutingDocument:
    """The routing document of a stepped update: `blue_document` (blue's, for its shadows and
    the rest) with both fleets' variants in one table (the green ones that share a name with a
    blue one under their router name, with `public_name`)."""
    pools = {**shift.blue.pools, **shift.green.pools}
    variants = tuple(
        RoutedVariant(
            name=spec.name,
            weight=spec.weight,
            strategy=spec.routing_strategy,
            instances=tuple(
                RoutedInstance(
                    name,
                    str(pools[name].address),
                    healthy.get(name, False),
                    pools[name].pipeline_depth,
                )
                for name in spec.instances
            ),
            public_name=None if shift.names[spec.name] == spec.name else shift.names[spec.name],
        )
        for spec in shift.router.variants()
    )
    return dataclasses.replace(blue_document, variants=variants)


class ShiftRouters:
    """Each endpoint's stepped-update router while a shift is in progress; then the routers
    of shifts that ended, until the generation they routed to is retired (requests they handed
    out still count in flight while an instance drains).

    Args:
        registry: where a shift's `LiveEndpoint` is published.
        seed: the routers' seed (`RouterSettings.seed`).
    """

    def __init__(self, registry: EndpointRegistry, seed: int | None) -> None:
        self._registry = registry
        self._seed = seed
        self._current: dict[str, Shift] = {}
        self._ended: dict[str, list[Router]] = {}

    def current(self, endpoint_name: str) -> Shift | None:
        """The endpoint's shift in progress, if any."""
        return self._current.get(endpoint_name)

    def end(self, endpoint_name: str) -> None:
        """The shift's router no longer routes (its last picks may still be in flight)."""
        shift = self._current.pop(endpoint_name, None)
        if shift is not None:
            self._ended.setdefault(endpoint_name, []).append(shift.router)

    def forget_ended(self, endpoint_name: str) -> None:
        """A generation was retired, its instances drained: unless a shift is in progress, what
        the ended shifts' routers handed out is done."""
        if endpoint_name not in self._current:
            self._ended.pop(endpoint_name, None)

    def routers(self, endpoint_name: str) -> list[Router]:
        """Every shift router that may have handed out one of the endpoint's instances."""
        routers = list(self._ended.get(endpoint_name, ()))
        shift = self._current.get(endpoint_name)
        if shift is not None:
            routers.append(shift.router)
        return routers

    def step(
        self,
        blue: Generation,
        green: Generation,
        green_share: float,
        *,
        failover: bool,
        healthy: Mapping[str, bool],
    ) -> dict[str, float]:
        """Route `green_share` (above 0) of the endpoint's requests to `green`, the rest to
        `blue`, and publish it; each variant's weight in the router (renamed ones summed under
        the variant's name)."""
        endpoint_name = blue.plan.endpoint_name
        specs, names = combined_table(blue, green, green_share)
        shift = self._current.get(endpoint_name)
        if shift is not None and shift.blue is blue and shift.green is green:
            # A later step: the same table with new weights (in-flight counts and health kept).
            with router_errors():
                shift.router.set_weights({spec.name: spec.weight for spec in specs})
        else:
            self.end(endpoint_name)
            with router_errors():
                router = Router(specs, salt=endpoint_name, seed=self._seed, failover=failover)
            pools = {**blue.pools, **green.pools}
            for name in pools:
                with contextlib.suppress(UnknownInstanceError):
                    router.set_healthy(name, healthy.get(name, False))
            live = dataclasses.replace(
                blue.live,
                router=router,
                pools=pools,
                recorders={**green.live.recorders, **blue.live.recorders},
                variant_names=names,
            )
            shift = self._current[endpoint_name] = Shift(blue, green, router, names, live)
            self._registry.publish(live)
        shift.share = green_share
        weights: dict[str, float] = {}
        for spec in specs:
            weights[names[spec.name]] = weights.get(names[spec.name], 0.0) + spec.weight
        return weights

    def rebuild(self, shift: Shift, healthy: Mapping[str, bool]) -> None:
        """Route to what the two fleets run now (one was scaled), keeping in-flight counts,
        and publish it."""
        specs, _ = combined_table(shift.blue, shift.green, shift.share)
        with router_errors():
            shift.router.replace(specs)
        pools = {**shift.blue.pools, **shift.green.pools}
        for name in pools:  # new instances start healthy in a router: only checked ones are
            with contextlib.suppress(UnknownInstanceError):
                shift.router.set_healthy(name, healthy.get(name, False))
        shift.live = dataclasses.replace(shift.live, pools=pools)
        self._registry.publish(shift.live)

    def repool(self, generation: Generation) -> bool:
        """`generation`'s pools changed: a shift routing to it publishes them; True if one did."""
        shift = self._current.get(generation.plan.endpoint_name)
        if shift is None or generation not in (shift.blue, shift.green):
            return False
        shift.live = dataclasses.replace(
            shift.live, pools={**shift.blue.pools, **shift.green.pools}
        )
        self._registry.publish(shift.live)
        return True

    def set_failover(self, endpoint_name: str, failover: bool) -> None:
        """Failover on or off in the endpoint's shift router, if one routes."""
        shift = self._current.get(endpoint_name)
        if shift is not None:
            shift.router.set_failover(failover)

    def set_healthy(self, endpoint_name: str, instance_name: str, healthy: bool) -> None:
        """Tell the endpoint's shift router, if one routes, what the placement said."""
        shift = self._current.get(endpoint_name)
        if shift is not None:
            with contextlib.suppress(UnknownInstanceError):
                shift.router.set_healthy(instance_name, healthy)


def combined_table(
    blue: Generation, green: Generation, green_share: float
) -> tuple[list[VariantSpec], dict[str, str]]:
    """The router table of one step of a stepped update, and each router name's variant name.

    Blue's production variants keep their names and split `1 - green_share` of the requests by
    their weights; green's split `green_share` by theirs, each under its own name unless blue has
    a variant of that name (then `_GREEN_NAME`: TargetVariant keeps reaching the old fleet's
    variant until the update ends). A fleet whose weights are all 0 takes no share.
    """
    specs: list[VariantSpec] = []
    names: dict[str, str] = {}
    for generation, share in ((blue, 1.0 - green_share), (green, green_share)):
        table = generation.router.variants()
        total = math.fsum(spec.weight for spec in table)
        for spec in table:
            name = spec.name
            if generation is green and name in names:
                name = _GREEN_NAME.format(variant=spec.name, generation=green.plan.generation)
            names[name] = spec.name
            weight = spec.weight / total * share if total > 0 else 0.0
            specs.append(VariantSpec(name, weight, spec.instances, spec.routing_strategy))
    return specs, names
