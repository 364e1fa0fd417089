"""`RoutingFollower`: a replica's live endpoints built from the controller's routing documents,
with a real registry, real (never connected) pools and a real minute store."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping

import pytest

from splitserve.cluster.routing import RoutedInstance, RoutedVariant, RoutingDocument
from splitserve.config import Settings
from splitserve.contract.upstream import UpstreamAddress, UpstreamPool
from splitserve.errors import ServiceUnavailable, wire_error
from splitserve.metrics.minutes import MinuteStore
from splitserve.metrics.prometheus import REGISTRY, remove_variant_series
from splitserve.runtime.registry import EndpointRegistry, LiveEndpoint, Unroutable
from splitserve.wiring.follower import RoutingFollower
from splitserve.wiring.live import LiveParts
from splitserve.wiring.replicas import ControllerSlot

ENDPOINT = "ab"
VARIANTS = ("A", "B", "C")
PICKS = 200


class TrackedPool(UpstreamPool):
    """A pool that remembers it was closed."""

    closed = False

    async def close(self) -> None:
        """Close, and remember it."""
        self.closed = True
        await super().close()


class TrackedParts(LiveParts):
    """`LiveParts` whose pools are `TrackedPool`s, every one kept in `made`."""

    made: list[TrackedPool]

    def pool(self, address: UpstreamAddress, pipeline_depth: int = 1) -> UpstreamPool:
        """A tracked pool to `address`."""
        forwarding = Settings().forwarding
        pool = TrackedPool(
            address,
            max_idle=forwarding.max_idle_connections,
            connect_timeout=forwarding.connect_timeout_seconds,
            max_response_bytes=forwarding.max_response_bytes,
            pipeline_depth=pipeline_depth,
        )
        self.made.append(pool)
        return pool


@pytest.fixture
def registry() -> EndpointRegistry:
    """The data plane's registry the follower publishes into."""
    return EndpointRegistry()


@pytest.fixture
def parts() -> Iterator[TrackedParts]:
    """Parts counting into a fresh minute store; the test's Prometheus series removed after."""
    settings = Settings()
    made = TrackedParts(settings, MinuteStore(settings.stats), None)
    made.made = []
    try:
        yield made
    finally:
        for variant in VARIANTS:
            remove_variant_series(ENDPOINT, variant)


@pytest.fixture
async def follower(
    registry: EndpointRegistry, parts: TrackedParts
) -> AsyncIterator[RoutingFollower]:
    """A follower over `registry` and `parts`, closed at the end."""
    made = RoutingFollower(Settings(), registry, parts)
    try:
        yield made
    finally:
        await made.close()


def document(
    weights: Mapping[str, float],
    *,
    generation: int = 1,
    healthy: Mapping[str, bool] | None = None,
    failover: bool = False,
    addresses: Mapping[str, str] | None = None,
    capture: Mapping[str, object] | None = None,
) -> RoutingDocument:
    """A live document of `ENDPOINT`: one variant per weight, each with instances `{variant}-0`
    and `{variant}-1` at `addresses` (default loopback ports nothing listens on)."""
    health = healthy or {}
    where = addresses or {}
    return RoutingDocument(
        endpoint=ENDPOINT,
        state="live",
        generation=generation,
        failover=failover,
        capture=capture,
        variants=tuple(
            RoutedVariant(
                name=variant,
                weight=weight,
                strategy="RANDOM",
                instances=tuple(
                    RoutedInstance(
                        f"{variant}-{slot}",
                        where.get(f"{variant}-{slot}", f"127.0.0.1:{9100 + index * 10 + slot}"),
                        health.get(f"{variant}-{slot}", True),
                    )
                    for slot in range(2)
                ),
            )
            for index, (variant, weight) in enumerate(weights.items())
        ),
    )


def routed(live: LiveEndpoint, picks: int = PICKS) -> Counter[str]:
    """How many of `picks` untargeted picks went to each variant."""
    counts: Counter[str] = Counter()
    for _ in range(picks):
        route = live.router.route()
        counts[route.variant] += 1
        live.router.release(route.instance)
    return counts


def has_series(variant: str) -> bool:
    """Whether the variant's invocation counter exists in the registry."""
    labels = {"endpoint_name": ENDPOINT, "variant_name": variant}
    return REGISTRY.get_sample_value("splitserve_invocations_total", labels) is not None


def live_endpoint(registry: EndpointRegistry) -> LiveEndpoint:
    """The endpoint's live generation (it must have one)."""
    live = registry.get(ENDPOINT)
    assert live is not None
    return live


async def test_a_live_document_publishes_an_endpoint_routing_by_its_weights(
    follower: RoutingFollower, registry: EndpointRegistry, parts: TrackedParts
) -> None:
    await follower.apply({ENDPOINT: document({"A": 1.0, "B": 0.0}, generation=3)}, set())
    live = live_endpoint(registry)
    assert live.generation == 3
    assert routed(live) == Counter({"A": PICKS})
    assert live.router.weights() == {"A": 1.0, "B": 0.0}
    assert sorted(live.pools) == ["A-0", "A-1", "B-0", "B-1"]
    assert live.pools["B-1"].address == UpstreamAddress.tcp("127.0.0.1", 9111)  # type: ignore[attr-defined]
    assert sorted(live.recorders) == ["A", "B"]
    assert has_series("A")
    assert has_series("B")
    assert live.log_stream_arn.endswith(f":log-group:/aws/sagemaker/Endpoints/{ENDPOINT}")
    assert live.capture is None
    assert registry.unroutable(ENDPOINT) is None
    assert len(parts.made) == 4


async def test_new_weights_health_and_failover_change_the_same_router(
    follower: RoutingFollower, registry: EndpointRegistry, parts: TrackedParts
) -> None:
    await follower.apply({ENDPOINT: document({"A": 1.0, "B": 0.0})}, set())
    first = live_endpoint(registry)
    router = first.router
    changed = document({"A": 0.0, "B": 1.0}, healthy={"B-0": False}, failover=True)
    await follower.apply({ENDPOINT: changed}, set())
    assert live_endpoint(registry) is first  # no new LiveEndpoint
    assert first.router is router
    assert router.weights() == {"A": 0.0, "B": 1.0}
    assert router.failover
    assert router.healthy_instances("B") == ["B-1"]
    assert {route_instance(first) for _ in range(20)} == {("B", "B-1")}
    assert len(parts.made) == 4  # no new pools either
    # Health comes back the same way.
    await follower.apply({ENDPOINT: document({"A": 0.0, "B": 1.0}, failover=True)}, set())
    assert router.healthy_instances("B") == ["B-0", "B-1"]


def route_instance(live: LiveEndpoint) -> tuple[str, str]:
    """One pick's (variant, instance), released."""
    route = live.router.route()
    live.router.release(route.instance)
    return route.variant, route.instance.name


async def test_a_document_applied_twice_changes_nothing(
    follower: RoutingFollower, registry: EndpointRegistry, parts: TrackedParts
) -> None:
    await follower.apply({ENDPOINT: document({"A": 1.0})}, set())
    first = live_endpoint(registry)
    await follower.apply({ENDPOINT: document({"A": 1.0})}, set())
    assert live_endpoint(registry) is first
    assert len(parts.made) == 2


async def test_a_new_generation_builds_a_new_endpoint_and_closes_the_pools_it_left(
    follower: RoutingFollower, registry: EndpointRegistry, parts: TrackedParts
) -> None:
    await follower.apply({ENDPOINT: document({"A": 1.0, "B": 1.0})}, set())
    first = live_endpoint(registry)
    # Generation 2 keeps variant A's instances where they were, drops B and adds C.
    await follower.apply({ENDPOINT: document({"A": 1.0, "C": 1.0}, generation=2)}, set())
    second = live_endpoint(registry)
    assert second is not first
    assert second.generation == 2
    assert second.router is not first.router
    assert sorted(routed(second)) == ["A", "C"]
    assert second.pools["A-0"] is first.pools["A-0"]  # kept-alive connections kept
    assert [p.closed for p in (first.pools["B-0"], first.pools["B-1"])] == [True, True]  # type: ignore[attr-defined]
    assert not any(p.closed for p in second.pools.values())  # type: ignore[attr-defined]
    assert sorted(second.recorders) == ["A", "C"]
    # B is served by no generation here any more: its series go, as on the controller.
    assert not has_series("B")
    assert has_series("A")
    assert has_series("C")


async def test_a_moved_instance_gets_a_new_pool_and_the_old_one_is_closed(
    follower: RoutingFollower, registry: EndpointRegistry
) -> None:
    await follower.apply({ENDPOINT: document({"A": 1.0})}, set())
    first = live_endpoint(registry)
    moved = document({"A": 1.0}, generation=2, addresses={"A-0": "unix:/run/A-0.sock"})
    await follower.apply({ENDPOINT: moved}, set())
    second = live_endpoint(registry)
    assert second.pools["A-0"].address == UpstreamAddress.unix("/run/A-0.sock")  # type: ignore[attr-defined]
    assert first.pools["A-0"].closed  # type: ignore[attr-defined]
    assert second.pools["A-1"] is first.pools["A-1"]


@pytest.mark.parametrize(
    ("unroutable", "expected"),
    [
        (RoutingDocument(ENDPOINT, "pending"), Unroutable(failure_reason=None)),
        (
            RoutingDocument(ENDPOINT, "failed", failure_reason="no CPUs left"),
            Unroutable(failure_reason="no CPUs left"),
        ),
    ],
    ids=["pending", "failed"],
)
async def test_pending_and_failed_documents_reach_the_registry(
    follower: RoutingFollower,
    registry: EndpointRegistry,
    unroutable: RoutingDocument,
    expected: Unroutable,
) -> None:
    await follower.apply({ENDPOINT: unroutable}, set())
    assert registry.get(ENDPOINT) is None
    assert registry.unroutable(ENDPOINT) == expected
    # Then it goes live.
    await follower.apply({ENDPOINT: document({"A": 1.0})}, set())
    assert registry.unroutable(ENDPOINT) is None
    assert live_endpoint(registry).generation == 1


async def test_an_endpoint_gone_from_the_documents_is_withdrawn(
    follower: RoutingFollower, registry: EndpointRegistry, parts: TrackedParts
) -> None:
    await follower.apply(
        {ENDPOINT: document({"A": 1.0}), "other": RoutingDocument("other", "pending")}, set()
    )
    ring = live_endpoint(registry).recorders["A"].minutes
    await follower.apply({}, set())
    assert registry.get(ENDPOINT) is None
    assert registry.unroutable(ENDPOINT) is None
    assert registry.known() == []
    assert all(pool.closed for pool in parts.made)
    # Deleted: its series and minutes go, as on the controller.
    assert not has_series("A")
    assert parts.minutes.variant(ENDPOINT, "A") is not ring


async def test_an_endpoint_whose_document_is_damaged_keeps_its_routing(
    follower: RoutingFollower, registry: EndpointRegistry, parts: TrackedParts
) -> None:
    await follower.apply({ENDPOINT: document({"A": 1.0})}, set())
    live = live_endpoint(registry)
    await follower.apply({}, {ENDPOINT})
    assert live_endpoint(registry) is live
    assert not any(pool.closed for pool in parts.made)
    assert has_series("A")


@pytest.mark.parametrize(
    "refused",
    [
        document({"A": 1.0, "B": 1.0}, generation=2, addresses={"B-1": "nowhere"}),
        document({"A": 1.0, "B": 1.0}, generation=2, addresses={"A-0": "127.0.0.1:1", "B-1": "x"}),
        document({"A": 1.0, "B": -1.0}, generation=2),
        document({"A": 1.0, "B": -1.0}),  # same table: only set_weights
        document({"A": 1.0, "B": 1.0}, generation=2, capture={"destination": "/tmp"}),
    ],
    ids=[
        "unparseable-address",
        "moved-and-unparseable",
        "negative-weight",
        "negative-weight-same-table",
        "bad-capture",
    ],
)
async def test_a_document_this_replica_cannot_route_by_is_refused_and_logged(
    follower: RoutingFollower,
    registry: EndpointRegistry,
    parts: TrackedParts,
    refused: RoutingDocument,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await follower.apply({ENDPOINT: document({"A": 1.0, "B": 0.0})}, set())
    live = live_endpoint(registry)
    with caplog.at_level(logging.ERROR, "splitserve.wiring.follower"):
        await follower.apply({ENDPOINT: refused}, set())
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [f"endpoint {ENDPOINT}"]
    assert "routing document refused" in caplog.records[0].getMessage()
    # The previous routing is kept, whole: same endpoint, weights and pools, none closed,
    # none made for the refused document.
    assert live_endpoint(registry) is live
    assert live.router.weights() == {"A": 1.0, "B": 0.0}
    assert len(parts.made) == 4
    assert not any(pool.closed for pool in parts.made)
    assert routed(live) == Counter({"A": PICKS})
    # The same document again is tried again (and refused again), not taken as applied.
    caplog.clear()
    with caplog.at_level(logging.ERROR, "splitserve.wiring.follower"):
        await follower.apply({ENDPOINT: refused}, set())
    assert len(caplog.records) == 1


async def test_close_closes_every_pool(
    follower: RoutingFollower, registry: EndpointRegistry, parts: TrackedParts
) -> None:
    await follower.apply({ENDPOINT: document({"A": 1.0, "B": 1.0})}, set())
    await follower.close()
    assert len(parts.made) == 4
    assert all(pool.closed for pool in parts.made)


def test_a_controller_slot_before_its_control_plane_runs_answers_503() -> None:
    slot = ControllerSlot()
    with pytest.raises(ServiceUnavailable, match=r"The control plane is starting; retry\.") as err:
        slot.started()
    assert wire_error(err.value).status == 503
    assert slot.live_instances() == {}


# --- passive health: an instance this replica could not connect to -------------------------------

PAUSE_SECONDS = 0.05


@pytest.fixture
async def pausing(
    registry: EndpointRegistry, parts: TrackedParts
) -> AsyncIterator[RoutingFollower]:
    """A follower whose pause after an unreachable instance is PAUSE_SECONDS."""
    settings = Settings()
    settings = dataclasses.replace(
        settings,
        forwarding=dataclasses.replace(
            settings.forwarding, unreachable_pause_seconds=PAUSE_SECONDS
        ),
    )
    made = RoutingFollower(settings, registry, parts)
    try:
        yield made
    finally:
        await made.close()


async def test_an_unreachable_instance_is_paused_here_then_back_to_its_published_health(
    pausing: RoutingFollower, registry: EndpointRegistry
) -> None:
    await pausing.apply({ENDPOINT: document({"A": 1.0})}, set())
    live = registry.get(ENDPOINT)
    assert live is not None
    assert live.unreachable is not None
    live.unreachable("A-0")
    assert live.router.healthy_instances("A") == ["A-1"]
    await asyncio.sleep(PAUSE_SECONDS * 4)
    assert sorted(live.router.healthy_instances("A")) == ["A-0", "A-1"]


async def test_the_pause_ends_in_the_health_the_controller_published_meanwhile(
    pausing: RoutingFollower, registry: EndpointRegistry
) -> None:
    await pausing.apply({ENDPOINT: document({"A": 1.0})}, set())
    live = registry.get(ENDPOINT)
    assert live is not None
    assert live.unreachable is not None
    live.unreachable("A-0")
    # The controller's checks found it down too: it stays out after the pause.
    await pausing.apply({ENDPOINT: document({"A": 1.0}, healthy={"A-0": False})}, set())
    await asyncio.sleep(PAUSE_SECONDS * 4)
    assert live.router.healthy_instances("A") == ["A-1"]


async def test_an_unknown_instance_is_ignored(
    pausing: RoutingFollower, registry: EndpointRegistry
) -> None:
    await pausing.apply({ENDPOINT: document({"A": 1.0})}, set())
    live = registry.get(ENDPOINT)
    assert live is not None
    assert live.unreachable is not None
    live.unreachable("nowhere")
    await asyncio.sleep(PAUSE_SECONDS * 4)
    assert sorted(live.router.healthy_instances("A")) == ["A-0", "A-1"]


def with_shadow(base: RoutingDocument, weight: float, *, port: int = 9190) -> RoutingDocument:
    """`base` plus shadow variant C of `weight`, one instance at `port`."""
    return dataclasses.replace(
        base,
        shadows=(
            RoutedVariant(
                "C", weight, "RANDOM", (RoutedInstance("C-0", f"127.0.0.1:{port}", True),)
            ),
        ),
    )


async def test_a_document_with_shadows_gives_this_replica_a_copier(
    follower: RoutingFollower, registry: EndpointRegistry, parts: TrackedParts
) -> None:
    await follower.apply({ENDPOINT: with_shadow(document({"A": 1.0, "B": 3.0}), 1.0)}, set())
    live = live_endpoint(registry)
    copier = live.shadows
    assert copier is not None
    # The router never picks the shadow; its share is its weight over production's sum.
    assert sorted(routed(live)) == ["A", "B"]
    assert [(t.variant, t.fraction) for t in copier.targets] == [("C", 0.25)]  # type: ignore[attr-defined]
    assert [i.name for i in copier.targets[0].instances] == ["C-0"]  # type: ignore[attr-defined]
    assert sorted(live.recorders) == ["A", "B", "C"]
    assert "C-0" in live.pools
    # A new weight, or health, reaches the same copier.
    changed = with_shadow(document({"A": 1.0, "B": 1.0}), 1.0)
    await follower.apply({ENDPOINT: changed}, set())
    assert live_endpoint(registry) is live
    assert [t.fraction for t in copier.targets] == [0.5]  # type: ignore[attr-defined]
    # The shadow's instance moves: a new endpoint and copier; the old copier takes nothing more.
    moved = with_shadow(document({"A": 1.0, "B": 1.0}), 1.0, port=9191)
    await follower.apply({ENDPOINT: moved}, set())
    second = live_endpoint(registry)
    assert second.shadows is not None
    assert second.shadows is not copier
    assert copier._closed  # type: ignore[attr-defined]
    # Shadows gone: no copier.
    await follower.apply({ENDPOINT: document({"A": 1.0, "B": 1.0}, generation=2)}, set())
    assert live_endpoint(registry).shadows is None
    assert second.shadows._closed  # type: ignore[attr-defined]


async def test_a_pending_or_failed_document_withdraws_the_live_generation_here(
    follower: RoutingFollower, registry: EndpointRegistry
) -> None:
    await follower.apply({ENDPOINT: document({"A": 1.0})}, set())
    assert registry.get(ENDPOINT) is not None
    failed = RoutingDocument(endpoint=ENDPOINT, state="failed", failure_reason="it broke")
    await follower.apply({ENDPOINT: failed}, set())
    assert registry.get(ENDPOINT) is None
    assert registry.unroutable(ENDPOINT) == Unroutable(failure_reason="it broke")
    await follower.apply({ENDPOINT: document({"A": 1.0}, generation=2)}, set())
    assert registry.get(ENDPOINT) is not None
    await follower.apply({ENDPOINT: RoutingDocument(endpoint=ENDPOINT, state="pending")}, set())
    assert registry.get(ENDPOINT) is None
    assert registry.unroutable(ENDPOINT) == Unroutable(failure_reason=None)
