"""The fleet deployer's stepped shifting (a CANARY or LINEAR UpdateEndpoint) over stand-in
fleets: one router over both fleets with the step's shares, the green variant of a shared name
under a router name of its own that callers never see, the routing document other replicas
build the same table from, and the end of the shift (activate, or all back to blue)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitserve._router import UnknownVariantError
from splitserve.cluster.routing import decode, encode
from splitserve.config import Settings
from splitserve.contract.upstream import UpstreamPool
from splitserve.control.deployer import DeploymentPlan
from splitserve.metrics.prometheus import remove_variant_series
from splitserve.runtime.registry import EndpointRegistry, LiveEndpoint
from splitserve.wiring.fleet import FleetDeployer
from splitserve.wiring.follower import RoutingFollower
from splitserve.wiring.live import LiveParts
from tests.wiring.test_fleet_failover import _plan, _StandInSupervisor


def two_variant_plan(generation: int, *, second: str = "B", weight: float = 3.0) -> DeploymentPlan:
    """Endpoint `fo`: variant A (weight 1) and `second` (weight `weight`), one instance each."""
    plan = _plan(generation, failover=False)
    first = plan.variants[0]
    other = dataclasses.replace(first, variant_name=second, weight=weight)
    return dataclasses.replace(plan, variants=(first, other))


@pytest.fixture
def deployer(tmp_path: Path) -> Iterator[tuple[FleetDeployer, EndpointRegistry]]:
    registry = EndpointRegistry()
    deployer = FleetDeployer(Settings(), registry)
    deployer.attach(_StandInSupervisor(tmp_path))  # type: ignore[arg-type]
    yield deployer, registry
    for variant in ("A", "B", "C"):
        remove_variant_series("fo", variant)


def all_healthy(fleet: FleetDeployer) -> None:
    """Every stand-in instance of every generation passed its health check."""
    for generation in fleet._generations.values():
        for variant_fleet in generation.fleets.values():
            for info in variant_fleet.instances():
                fleet.instance_healthy(info)


def live_of(registry: EndpointRegistry) -> LiveEndpoint:
    live = registry.get("fo")
    assert live is not None
    return live


async def test_a_step_routes_both_fleets_by_its_share(
    deployer: tuple[FleetDeployer, EndpointRegistry],
) -> None:
    fleet, registry = deployer
    blue, green = _plan(1, failover=False), two_variant_plan(2, second="C")
    await fleet.deploy(blue)
    await fleet.activate(blue)
    await fleet.deploy(green)
    all_healthy(fleet)
    await fleet.shift("fo", 1, 2, 0.25)
    live = live_of(registry)
    # Blue's A keeps its name (TargetVariant reaches it); green's A is routed apart.
    assert live.router.weights() == pytest.approx({"A": 0.75, "A~g2": 0.0625, "C": 0.1875})
    assert live.variant_names == {"A": "A", "A~g2": "A", "C": "C"}
    assert live.generation == 1  # DescribeEndpoint's instances are still blue's
    assert sorted(live.pools) == ["fo/A/g1/0", "fo/A/g2/0", "fo/C/g2/0"]
    targeted = live.router.route("A")
    assert targeted.instance.name == "fo/A/g1/0"
    live.router.release(targeted.instance)
    with pytest.raises(UnknownVariantError):
        live.router.route("A~g1")
    assert {"A", "C"} <= set(live.recorders)

    # The next step changes only the weights of the same router.
    await fleet.shift("fo", 1, 2, 0.5)
    assert live_of(registry) is live
    assert live.router.weights() == pytest.approx({"A": 0.5, "A~g2": 0.125, "C": 0.375})

    # Health reaches the shift's router too.
    (info,) = fleet.live_instances()["fo", "A"]
    fleet.instance_unhealthy(info)
    assert live.router.healthy_instances("A") == []
    fleet.instance_healthy(info)
    assert live.router.healthy_instances("A") == ["fo/A/g1/0"]

    # A request in flight on the shift's router counts while an instance drains.
    route = live.router.route("C")
    assert fleet.in_flight("fo/C/g2/0") == 1
    await fleet.activate(green)
    assert live_of(registry).router.weights() == {"A": 1.0, "C": 3.0}
    assert live_of(registry).variant_names is None
    assert fleet.in_flight("fo/C/g2/0") == 1
    live.router.release(route.instance)
    assert fleet.in_flight("fo/C/g2/0") == 0
    await fleet.retire("fo", 1)
    await fleet.close()


async def test_share_zero_routes_everything_to_blue_again(
    deployer: tuple[FleetDeployer, EndpointRegistry],
) -> None:
    fleet, registry = deployer
    blue, green = two_variant_plan(1), two_variant_plan(2)
    await fleet.deploy(blue)
    await fleet.activate(blue)
    blue_live = live_of(registry)
    await fleet.deploy(green)
    await fleet.shift("fo", 1, 2, 0.5)
    assert live_of(registry).router.weights() == pytest.approx(
        {"A": 0.125, "B": 0.375, "A~g2": 0.125, "B~g2": 0.375}
    )
    await fleet.shift("fo", 1, 2, 0.0)
    assert live_of(registry) is blue_live
    await fleet.retire("fo", 2)
    assert fleet.routing_document("fo") == fleet._document_of(fleet._live_generation("fo"))
    await fleet.close()


async def test_replicas_build_the_same_table_from_the_routing_document(
    deployer: tuple[FleetDeployer, EndpointRegistry],
) -> None:
    fleet, registry = deployer
    blue, green = _plan(1, failover=False), two_variant_plan(2, second="C")
    await fleet.deploy(blue)
    await fleet.activate(blue)
    await fleet.deploy(green)
    all_healthy(fleet)
    await fleet.shift("fo", 1, 2, 0.25)
    document = fleet.routing_document("fo")
    assert document is not None
    assert [(v.name, v.public_name) for v in document.variants] == [
        ("A", None),
        ("A~g2", "A"),
        ("C", None),
    ]
    # Stored and read back as the other replicas read it.
    assert decode(encode(document)) == document

    settings = Settings()
    replica_registry = EndpointRegistry()
    parts = LiveParts(settings, fleet.minutes, None)
    follower = RoutingFollower(settings, replica_registry, parts)
    await follower.apply({"fo": decode(encode(document))}, set())
    followed = replica_registry.get("fo")
    assert followed is not None
    assert followed.router.weights() == pytest.approx(live_of(registry).router.weights())
    assert followed.variant_names == {"A": "A", "A~g2": "A", "C": "C"}
    assert sorted(followed.recorders) == ["A", "C"]

    # A later step is only new weights for the follower's router.
    await fleet.shift("fo", 1, 2, 0.5)
    later = fleet.routing_document("fo")
    assert later is not None
    assert later.same_table(document)
    await follower.apply({"fo": later}, set())
    assert replica_registry.get("fo") is followed
    assert followed.router.weights()["A"] == pytest.approx(0.5)

    # The shift ends while a request the follower's router handed to blue is in flight: blue's
    # pool there stays open until that request is done.
    in_flight = followed.router.route("A")
    blue_pool = followed.pools["fo/A/g1/0"]
    assert isinstance(blue_pool, UpstreamPool)
    await fleet.activate(green)
    ended = fleet.routing_document("fo")
    assert ended is not None
    await follower.apply({"fo": ended}, set())
    assert replica_registry.get("fo") is not followed
    assert not blue_pool._closed
    followed.router.release(in_flight.instance)
    await asyncio.wait_for(_closed(blue_pool), timeout=10)
    await follower.close()
    await fleet.close()


async def _closed(pool: UpstreamPool) -> None:
    while not pool._closed:  # noqa: ASYNC110 (the pool has no event)
        await asyncio.sleep(0.01)
