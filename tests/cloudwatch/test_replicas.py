"""CloudWatch across gateway replicas over one state database: each stores its figures under its
replica id, alarms are evaluated only by the controller on everyone's figures, and every replica
sees the alarms another one put or moved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cloudwatch.conftest import StoredWorld, open_stored_world
from tests.cloudwatch.test_alarms import alarm, describe
from tests.support.clock import FakeClock


def serve(world: StoredWorld, requests: int) -> None:
    """`requests` answered requests on ep/A in the current minute, in `world`'s replica."""
    ring = world.minutes.variant("ep", "A")
    for _ in range(requests):
        ring.count_invocation()
        ring.observe_latency(0.001)


async def history_items(world: StoredWorld, item_type: str) -> list[dict[str, Any]]:
    """The alarm history items of `item_type`."""
    output: dict[str, Any] = await world.gateway.service.dispatch(
        "DescribeAlarmHistory", {"HistoryItemType": item_type}
    )
    items: list[dict[str, Any]] = output["AlarmHistoryItems"]
    return items


async def test_a_replica_that_is_not_the_controller_never_evaluates(tmp_path: Path) -> None:
    controller = False
    world = open_stored_world(tmp_path / "state.sqlite3", is_controller=lambda: controller)
    evaluations: list[float] = []

    async def count() -> None:
        evaluations.append(world.clock.now)

    world.gateway.alarms.evaluate = count  # type: ignore[method-assign]
    try:
        for _ in range(13):
            await world.gateway.tick()
            world.clock.advance(10)
        assert evaluations == []
        controller = True  # it took the lease: it evaluates at its next round
        await world.gateway.tick()
        assert evaluations == [world.clock.now]
    finally:
        await world.gateway.close()


async def test_the_controller_evaluates_every_replicas_alarms_on_every_replicas_figures(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    clock = FakeClock()
    leader = open_stored_world(path, clock, source="replica-a", is_controller=lambda: True)
    follower = open_stored_world(path, clock, source="replica-b", is_controller=lambda: False)
    try:
        await leader.gateway.alarms.load()
        await follower.gateway.alarms.load()
        # Put on the follower: the controller has not loaded it, and learns of it from the store.
        await follower.gateway.service.dispatch(
            "PutMetricAlarm", alarm("busy", MetricName="Invocations", Threshold=4.0)
        )
        serve(leader, 2)
        serve(follower, 2)
        clock.advance(60)
        await follower.gateway.tick()
        assert (await describe(follower, "busy"))["StateValue"] == "INSUFFICIENT_DATA"
        assert await history_items(follower, "StateUpdate") == []

        await leader.gateway.tick()  # 2 of its own and 2 the follower stored: 4 >= 4

        assert (await describe(leader, "busy"))["StateValue"] == "ALARM"
        assert (await describe(follower, "busy"))["StateValue"] == "ALARM"
        assert len(await history_items(follower, "StateUpdate")) == 1
        # Deleted on the follower: gone for the controller too, whose next round judges nothing.
        await follower.gateway.service.dispatch("DeleteAlarms", {"AlarmNames": ["busy"]})
        await leader.gateway.alarms.evaluate()
        output = await leader.gateway.service.dispatch("DescribeAlarms", {})
        assert output["MetricAlarms"] == []
    finally:
        await follower.gateway.close()
        await leader.gateway.close()


async def test_getmetricstatistics_on_any_replica_sums_every_replicas_figures(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    clock = FakeClock()
    first = open_stored_world(path, clock, source="replica-a")
    second = open_stored_world(path, clock, source="replica-b")
    try:
        serve(first, 3)
        serve(second, 5)
        minute_start = clock.now - clock.now % 60
        await first.gateway.tick()
        await second.gateway.tick()
        for world in (first, second):
            output = await world.gateway.service.dispatch(
                "GetMetricStatistics",
                {
                    "Namespace": "AWS/SageMaker",
                    "MetricName": "Invocations",
                    "Dimensions": alarm()["Dimensions"],
                    "StartTime": minute_start,
                    "EndTime": minute_start + 60,
                    "Period": 60,
                    "Statistics": ["Sum"],
                },
            )
            assert [point["Sum"] for point in output["Datapoints"]] == [8.0]
    finally:
        await second.gateway.close()
        await first.gateway.close()
