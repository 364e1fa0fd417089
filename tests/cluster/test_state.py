"""The replicas' tables over SQLite and PostgreSQL: heartbeats, the live replicas, leaving and
forgetting, the applied version, and routing documents published under one version per call."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from splitserve.cluster.routing import RoutedInstance, RoutedVariant, RoutingDocument, encode
from splitserve.cluster.state import ROUTING_CHANNEL, ClusterState, ReplicaRecord
from splitserve.database import Transaction, open_database
from tests.cluster.conftest import QUICK

REPLICA = ReplicaRecord(
    replica_id="host-1-aaaa",
    host="host",
    pid=101,
    internal_url="http://127.0.0.1:9001",
    started=1_700_000_000.25,
    heartbeat=1_700_000_010.5,
    applied_version=-1,
    controller=False,
)


def replica(replica_id: str, heartbeat: float, **changes: object) -> ReplicaRecord:
    """`REPLICA` as `replica_id`, last heard of at `heartbeat`."""
    return dataclasses.replace(REPLICA, replica_id=replica_id, heartbeat=heartbeat, **changes)  # type: ignore[arg-type]


def live(name: str, weight: float = 1.0) -> RoutingDocument:
    """A live document of endpoint `name` with one variant of one instance."""
    return RoutingDocument(
        endpoint=name,
        state="live",
        generation=1,
        variants=(
            RoutedVariant(
                "A", weight, "RANDOM", (RoutedInstance(f"{name}-A-0", "127.0.0.1:9100", True),)
            ),
        ),
    )


def write_row(cluster: ClusterState, endpoint: str, text: str) -> None:
    """Put `text` in `endpoint`'s routing row by hand, as a damaged or foreign writer would."""
    with cluster.database.transaction(write=True) as transaction:
        transaction.execute(
            "INSERT INTO cluster_routing VALUES (?, ?, ?) ON CONFLICT (endpoint) "
            "DO UPDATE SET document = excluded.document",
            (endpoint, text, 1),
        )


def test_a_heartbeat_inserts_then_replaces_the_replicas_row(cluster: ClusterState) -> None:
    assert cluster.replicas(live_since=0.0) == []
    cluster.heartbeat(REPLICA)
    assert cluster.replicas(live_since=0.0) == [REPLICA]
    later = dataclasses.replace(
        REPLICA,
        heartbeat=REPLICA.heartbeat + 1.0,
        applied_version=7,
        controller=True,
        internal_url="http://127.0.0.1:9002",
        pid=102,
    )
    cluster.heartbeat(later)
    # Times keep their fraction of a second (PostgreSQL's REAL would not).
    assert cluster.replicas(live_since=0.0) == [later]


def test_the_live_replicas_are_those_heard_of_since_the_time_given(cluster: ClusterState) -> None:
    for record in (replica("c", 30.0), replica("a", 10.0), replica("b", 20.0)):
        cluster.heartbeat(record)
    assert [r.replica_id for r in cluster.replicas(live_since=0.0)] == ["a", "b", "c"]
    assert [r.replica_id for r in cluster.replicas(live_since=20.0)] == ["b", "c"]
    assert [r.replica_id for r in cluster.replicas(live_since=30.5)] == []


def test_leave_removes_only_that_replica(cluster: ClusterState) -> None:
    cluster.heartbeat(replica("a", 10.0))
    cluster.heartbeat(replica("b", 10.0))
    cluster.leave("a")
    cluster.leave("never-joined")
    assert [r.replica_id for r in cluster.replicas(live_since=0.0)] == ["b"]


def test_forget_replicas_deletes_the_silent_ones(cluster: ClusterState) -> None:
    for record in (replica("a", 10.0), replica("b", 20.0), replica("c", 30.0)):
        cluster.heartbeat(record)
    cluster.forget_replicas(silent_since=20.0)
    assert [r.replica_id for r in cluster.replicas(live_since=0.0)] == ["b", "c"]


def test_applied_records_the_version_of_that_replica_only(cluster: ClusterState) -> None:
    cluster.heartbeat(replica("a", 10.0))
    cluster.heartbeat(replica("b", 10.0))
    cluster.applied("a", 4)
    cluster.applied("gone", 5)  # a replica that left meanwhile: nothing to record, no row made
    versions = {r.replica_id: r.applied_version for r in cluster.replicas(live_since=0.0)}
    assert versions == {"a": 4, "b": -1}


def test_publish_bumps_the_version_once_per_call(cluster: ClusterState) -> None:
    assert cluster.routing_version() == 0
    assert cluster.routing() == (0, {}, set())
    assert cluster.publish([live("ab"), live("cd")], []) == 1
    assert cluster.routing() == (1, {"ab": live("ab"), "cd": live("cd")}, set())
    # A new document replaces the endpoint's; the others stay as they were.
    assert cluster.publish([live("ab", weight=2.0)], []) == 2
    assert cluster.routing() == (2, {"ab": live("ab", weight=2.0), "cd": live("cd")}, set())
    assert cluster.publish([live("ef")], ["cd", "never-published"]) == 3
    assert cluster.routing() == (3, {"ab": live("ab", weight=2.0), "ef": live("ef")}, set())
    # Even an empty publication is a new version (a replica waiting for it is not stuck).
    assert cluster.publish([], []) == 4
    assert cluster.routing_version() == 4


def test_opening_again_keeps_the_tables_and_the_version(cluster: ClusterState) -> None:
    cluster.publish([live("ab")], [])
    cluster.heartbeat(REPLICA)
    again = ClusterState.open(cluster.database)
    assert again.routing() == (1, {"ab": live("ab")}, set())
    assert again.replicas(live_since=0.0) == [REPLICA]


def test_another_connection_reads_what_one_published(cluster: ClusterState, state_url: str) -> None:
    other = open_database(state_url, QUICK)
    try:
        reader = ClusterState.open(other)
        cluster.publish([live("ab")], [])
        cluster.heartbeat(REPLICA)
        assert reader.routing() == (1, {"ab": live("ab")}, set())
        assert reader.replicas(live_since=0.0) == [REPLICA]
    finally:
        other.close()


def test_a_publication_is_a_change_for_a_follower(cluster: ClusterState) -> None:
    feed = cluster.database.changes(ROUTING_CHANNEL)
    try:
        cluster.publish([live("ab")], [])
        assert feed.wait(10.0)
    finally:
        feed.close()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"endpoint": "ab", "state": "retired"}',
        '{"endpoint": "ab", "state": "live", "variants": [{"name": "A"}]}',
        encode(live("cd")),  # filed under another endpoint's name
    ],
    ids=["not-json", "unknown-state", "variant-without-weight", "another-endpoint"],
)
def test_routing_reports_a_damaged_row_and_reads_the_others(
    cluster: ClusterState, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.publish([live("ab"), live("ef")], [])
    write_row(cluster, "ab", text)
    with caplog.at_level(logging.ERROR, "splitserve.cluster.state"):
        version, documents, damaged = cluster.routing()
    assert (version, documents, damaged) == (1, {"ef": live("ef")}, {"ab"})
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["endpoint ab"]
    assert "routing kept: not a routing document" in caplog.records[0].getMessage()
    # The controller's next publication replaces the damaged row.
    cluster.publish([live("ab")], [])
    assert cluster.routing() == (2, {"ab": live("ab"), "ef": live("ef")}, set())


def test_a_lease_change_sees_the_row_and_writes_in_one_transaction(
    cluster: ClusterState,
) -> None:
    seen: list[tuple[str, int] | None] = []

    def insert(transaction: Transaction, current: tuple[str, int] | None) -> bool:
        seen.append(current)
        if current is None:
            transaction.execute(
                "INSERT INTO cluster_lease (name, holder, renewals) VALUES ('l', 'a', 3)"
            )
        return current is None

    assert cluster.lease("l", insert) is True
    assert cluster.lease("l", insert) is False
    assert seen == [None, ("a", 3)]

    def fail(transaction: Transaction, current: tuple[str, int] | None) -> bool:
        transaction.execute("DELETE FROM cluster_lease")
        raise RuntimeError("change failed halfway")

    # A change that raises rolls its writes back.
    with pytest.raises(RuntimeError, match="halfway"):
        cluster.lease("l", fail)
    assert cluster.lease("l", insert) is False
