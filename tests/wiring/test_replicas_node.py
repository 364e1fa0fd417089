"""`ReplicaNode` over a real state (SQLite, and PostgreSQL with its notifications): a follower
routes by what the controller publishes and says which version it applied, a damaged document
changes nothing, the lease decides who controls (at start, or by taking over), the controller's
`sync` waits for the live replicas, and a controller that lost its lease stops itself."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from splitserve.cluster.lease import ControllerLease, FileLease, RowLease
from splitserve.cluster.routing import RoutedInstance, RoutedVariant, RoutingDocument
from splitserve.cluster.state import ClusterState, ReplicaRecord
from splitserve.config import ReplicaSettings, Settings
from splitserve.database import Database, DatabaseUnavailable, open_database
from splitserve.metrics.minutes import MinuteStore
from splitserve.metrics.prometheus import remove_variant_series
from splitserve.runtime.registry import EndpointRegistry
from splitserve.wiring.follower import RoutingFollower
from splitserve.wiring.live import LiveParts
from splitserve.wiring.replicas import ReplicaNode
from tests.cluster.conftest import QUICK, sqlite_url

FAST = ReplicaSettings(
    heartbeat_interval_seconds=0.05,
    routing_poll_seconds=0.02,
    replica_timeout_seconds=30.0,
    propagation_timeout_seconds=30.0,
)
#: How long a condition the node reaches by itself may take before the test gives up on it.
PATIENCE_SECONDS = 30.0


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait until `condition()` holds; fail naming `what` if it never does."""
    deadline = time.monotonic() + PATIENCE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {PATIENCE_SECONDS} s")
        await asyncio.sleep(0.02)


@dataclass
class State:
    """A shared state: its database, tables, and how a lease on it is made."""

    database: Database
    cluster: ClusterState
    lease: Callable[[str], ControllerLease]
    others: list[ControllerLease] = field(default_factory=list)

    def held_by_another(self) -> ControllerLease:
        """The controller lease, taken by a replica that is not under test."""
        other = self.lease("other")
        assert other.try_acquire()
        self.others.append(other)
        return other


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[State]:
    """A new state of each backend, with the lease replicas over it use."""
    url = (
        sqlite_url(tmp_path)
        if request.param == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    database = open_database(url, QUICK)
    cluster = ClusterState.open(database)
    lock = tmp_path / "controller.lock"

    def lease(holder: str) -> ControllerLease:
        if database.kind == "sqlite":
            return FileLease(lock)
        return RowLease(cluster, holder, ttl_seconds=3600.0)

    made = State(database, cluster, lease)
    try:
        yield made
    finally:
        for other in made.others:
            other.release()
        database.close()


@dataclass
class Node:
    """A started node, its registry and what it was asked to do as the controller."""

    node: ReplicaNode
    registry: EndpointRegistry
    takeovers: list[bool]


class StartNode(Protocol):
    """Starts a node over the test's state."""

    async def __call__(
        self,
        replica_id: str = ...,
        replicas: ReplicaSettings = ...,
        cluster: ClusterState | None = ...,
    ) -> Node:  # pragma: no cover - a signature
        """A started node `replica_id` with `replicas` settings, over `cluster` (default the
        state's tables)."""
        ...


@pytest.fixture
async def nodes(state: State) -> AsyncIterator[StartNode]:
    """Start nodes over `state` (`await start(replica_id, settings)`); all closed at the end."""
    started: list[ReplicaNode] = []

    async def start(
        replica_id: str = "node-1",
        replicas: ReplicaSettings = FAST,
        cluster: ClusterState | None = None,
    ) -> Node:
        settings = Settings()
        registry = EndpointRegistry()
        node = ReplicaNode(replicas, replica_id)
        follower = RoutingFollower(
            settings, registry, LiveParts(settings, MinuteStore(settings.stats), None)
        )
        takeovers: list[bool] = []

        async def become_controller(takeover: bool) -> None:
            takeovers.append(takeover)

        started.append(node)
        await node.start(
            state.cluster if cluster is None else cluster,
            state.lease(replica_id),
            follower,
            f"http://127.0.0.1:{9000 + len(started)}",
            become_controller,
        )
        return Node(node, registry, takeovers)

    try:
        yield start
    finally:
        for node in started:
            await node.close()
        remove_variant_series("ab", "A")


def document(weight: float) -> RoutingDocument:
    """Endpoint ab's live document: one variant of one instance, of `weight`."""
    return RoutingDocument(
        endpoint="ab",
        state="live",
        generation=1,
        variants=(
            RoutedVariant("A", weight, "RANDOM", (RoutedInstance("A-0", "127.0.0.1:9100", True),)),
        ),
    )


def row(state: State, replica_id: str) -> ReplicaRecord | None:
    """The replica's row, if it has one."""
    found = [r for r in state.cluster.replicas(live_since=0.0) if r.replica_id == replica_id]
    return found[0] if found else None


async def test_the_first_replica_of_a_state_controls_it_from_the_start(
    state: State, nodes: StartNode
) -> None:
    started = await nodes()
    assert started.takeovers == [False]
    assert started.node.is_controller()
    record = row(state, "node-1")
    assert record is not None
    assert record.controller


async def test_a_follower_routes_by_the_published_documents_and_says_so(
    state: State, nodes: StartNode
) -> None:
    state.held_by_another()
    follower = await nodes()
    assert follower.takeovers == []
    assert not follower.node.is_controller()
    version = state.cluster.publish([document(1.0)], [])
    await eventually(lambda: follower.registry.get("ab") is not None, "the endpoint is routed")
    await eventually(
        lambda: (r := row(state, "node-1")) is not None and r.applied_version == version,
        "the follower records the version it applied",
    )
    live = follower.registry.get("ab")
    assert live is not None
    # A weight change reaches the same router.
    version = state.cluster.publish([document(2.0)], [])
    await eventually(lambda: live.router.weights() == {"A": 2.0}, "the new weight is applied")
    assert follower.registry.get("ab") is live
    # A damaged document: the routing stays, the version is still applied.
    with state.database.transaction(write=True) as transaction:
        transaction.execute("UPDATE cluster_routing SET document = 'garbage'")
        transaction.execute(
            "UPDATE cluster_meta SET value = value + 1 WHERE key = 'routing_version'"
        )
    await eventually(
        lambda: (r := row(state, "node-1")) is not None and r.applied_version == version + 1,
        "the follower goes past a damaged document",
    )
    assert follower.registry.get("ab") is live
    # Removed: withdrawn.
    state.cluster.publish([], ["ab"])
    await eventually(lambda: follower.registry.get("ab") is None, "the endpoint is withdrawn")


async def test_a_follower_takes_over_when_the_controller_lets_the_lease_go(
    state: State, nodes: StartNode
) -> None:
    other = state.held_by_another()
    follower = await nodes()
    assert follower.takeovers == []
    other.release()
    await eventually(follower.node.is_controller, "the follower takes control")
    assert follower.takeovers == [True]
    await eventually(
        lambda: (r := row(state, "node-1")) is not None and r.controller,
        "its row says it controls",
    )


async def test_a_replica_finds_the_controller_and_its_host_peers(
    state: State, nodes: StartNode
) -> None:
    controller = await nodes("node-1")
    follower = await nodes("node-2")
    assert controller.node.is_controller()
    assert not follower.node.is_controller()
    assert await follower.node.controller_url() == "http://127.0.0.1:9001"
    assert await controller.node.controller_url() is None  # itself
    assert await follower.node.host_peers() == ["http://127.0.0.1:9001"]
    assert await controller.node.host_peers() == ["http://127.0.0.1:9002"]
    # A replica on another host is no host peer; a silent one is no peer at all.
    now = time.time()
    for replica_id, host, heartbeat in (("far", "elsewhere", now), ("dead", "", now - 3600.0)):
        state.cluster.heartbeat(
            ReplicaRecord(
                replica_id, host or controller_host(state), 1, "http://x", now, heartbeat, 0, False
            )
        )
    assert await follower.node.host_peers() == ["http://127.0.0.1:9001"]


def controller_host(state: State) -> str:
    """The host name the node under test writes in its row."""
    record = row(state, "node-1")
    assert record is not None
    return record.host


async def test_closing_leaves_the_table_and_lets_the_lease_go(
    state: State, nodes: StartNode
) -> None:
    controller = await nodes("node-1")
    assert controller.node.is_controller()
    await controller.node.close()
    assert row(state, "node-1") is None
    successor = state.lease("node-2")
    assert successor.try_acquire()
    state.others.append(successor)


async def test_sync_waits_until_every_live_replica_applied_the_version(
    state: State, nodes: StartNode
) -> None:
    controller = await nodes()
    controller.node.publish_from(lambda name: document(1.0))
    now = time.time()
    lagging = ReplicaRecord("lagging", "h", 1, "http://x", now, now, -1, False)
    state.cluster.heartbeat(lagging)
    synced = asyncio.create_task(controller.node.sync("ab"))
    await eventually(lambda: state.cluster.routing_version() == 1, "the document is published")
    for _ in range(10):  # it polls the replicas' table meanwhile
        await asyncio.sleep(FAST.routing_poll_seconds)
    assert not synced.done()
    state.cluster.applied("lagging", 1)
    await synced
    # A replica that stopped heartbeating is not waited for (nor one that left).
    state.cluster.leave("lagging")
    state.cluster.heartbeat(
        ReplicaRecord("silent", "h", 1, "http://x", now, now - 3600.0, -1, False)
    )
    await controller.node.sync("ab")


async def test_sync_answers_after_the_propagation_timeout_naming_the_replicas_behind(
    state: State, nodes: StartNode, caplog: pytest.LogCaptureFixture
) -> None:
    impatient = ReplicaSettings(
        heartbeat_interval_seconds=0.05, routing_poll_seconds=0.02, propagation_timeout_seconds=0.1
    )
    controller = await nodes("node-1", impatient)
    controller.node.publish_from(lambda name: document(1.0))
    now = time.time()
    state.cluster.heartbeat(ReplicaRecord("lagging", "h", 1, "http://x", now, now, -1, False))
    with caplog.at_level(logging.WARNING, "splitserve.wiring.replicas"):
        await controller.node.sync("ab")
    assert "replicas lagging had not applied it after 0.1 s" in caplog.text


async def test_a_controller_that_lost_its_lease_stops_itself_once(
    state: State, nodes: StartNode, caplog: pytest.LogCaptureFixture
) -> None:
    if state.database.kind == "sqlite":
        pytest.skip("a file lock is never lost while its holder lives")
    controller = await nodes("node-1")
    assert controller.node.is_controller()
    signals: list[int] = []
    loop = asyncio.get_running_loop()
    # Caught here: the default action would end the test run.
    loop.add_signal_handler(signal.SIGTERM, signals.append, signal.SIGTERM)
    try:
        # Another replica took the row (node-1 was cut off for longer than the TTL).
        with state.database.transaction(write=True) as transaction:
            transaction.execute("UPDATE cluster_lease SET holder = 'usurper'")
        with caplog.at_level(logging.CRITICAL, "splitserve.wiring.replicas"):
            await eventually(lambda: bool(signals), "SIGTERM")
            beat = controller.node._tasks[0]
            await eventually(beat.done, "the heartbeat loop ends")
        await controller.node.close()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    assert signals == [signal.SIGTERM]  # once, not at every heartbeat while it drains
    assert "replica node-1 lost the controller lease to another replica: stopping" in caplog.text
    # It leaves the usurper's row alone.
    rows = state.database.query("SELECT holder FROM cluster_lease")
    assert rows == [("usurper",)]


class FlakyState(ClusterState):
    """The replicas' tables, with the next few publications or routing reads failing as an
    unreachable database does."""

    failing_publications = 0
    failing_reads = 0

    def publish(self, documents: list[RoutingDocument], removed: list[str]) -> int:
        """As ClusterState's, after the failures asked for."""
        if self.failing_publications:
            self.failing_publications -= 1
            raise DatabaseUnavailable("the state database cannot be reached")
        return super().publish(documents, removed)

    def routing(self) -> tuple[int, dict[str, RoutingDocument], set[str]]:
        """As ClusterState's, after the failures asked for."""
        if self.failing_reads:
            self.failing_reads -= 1
            raise DatabaseUnavailable("the state database cannot be reached")
        return super().routing()


async def test_a_publication_that_failed_is_tried_again(
    state: State, nodes: StartNode, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = FlakyState(state.database)
    controller = await nodes("node-1", FAST, flaky)
    assert controller.node.is_controller()
    controller.node.publish_from(lambda name: document(1.0))
    flaky.failing_publications = 2
    with caplog.at_level(logging.ERROR, "splitserve.wiring.replicas"):
        controller.node.changed("ab")
        await eventually(lambda: state.cluster.routing_version() == 1, "ab is published")
    assert state.cluster.routing()[1] == {"ab": document(1.0)}
    assert caplog.text.count("routing documents of ab not published") == 2


async def test_a_follower_that_could_not_read_the_documents_reads_them_again(
    state: State, nodes: StartNode, caplog: pytest.LogCaptureFixture
) -> None:
    state.held_by_another()
    flaky = FlakyState(state.database)
    flaky.failing_reads = 2
    with caplog.at_level(logging.WARNING, "splitserve.wiring.replicas"):
        follower = await nodes("node-1", FAST, flaky)
        state.cluster.publish([document(1.0)], [])
        await eventually(lambda: follower.registry.get("ab") is not None, "ab is routed")
    not_read = [
        record
        for record in caplog.records
        if re.match(r"replica node-1: routing (documents )?not read", record.getMessage())
    ]
    assert len(not_read) == 2
