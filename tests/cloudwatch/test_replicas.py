"""CloudWatch across gateway replicas over one state database: each stores its figures under its
replica id, alarms are evaluated only by the controller on everyone's figures, and every replica
sees the alarms another one put or moved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from splitserve import app as gateway_app
from splitserve.cloudwatch.figures import Aggregate, aggregates_of_minute, minute_counts
from splitserve.config import Settings
from splitserve.metrics.minutes import VariantMinutes
from splitserve.wiring import keys
from tests.cloudwatch.conftest import StoredWorld, open_stored_world
from tests.cloudwatch.test_alarms import alarm, describe
from tests.support.clock import NOON, FakeClock


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
            datapoints = output["Datapoints"]
            assert isinstance(datapoints, list)
            assert [point["Sum"] for point in datapoints] == [8.0]
    finally:
        await second.gateway.close()
        await first.gateway.close()


def test_stored_figures_give_back_the_minutes_counts() -> None:
    clock = FakeClock()
    ring = VariantMinutes(10, clock)
    for index in range(7):
        ring.count_invocation(0.5)
        if index < 3:
            ring.count_model_error(500 if index else 404)
        ring.observe_latency(0.001 * (index + 1))
        ring.observe_overhead(0.0001)
    (counts,) = ring.minutes(0, int(NOON // 60))
    stored = {
        name: Aggregate.from_json(json.loads(json.dumps(aggregate.to_json())))
        for name, aggregate in aggregates_of_minute(counts)
    }
    back = minute_counts(counts.minute, stored)
    assert (back.invocations, back.errors_4xx, back.errors_5xx, back.model_errors) == (7, 1, 2, 3)
    assert back.latency == list(counts.latency or ())
    assert back.overhead == list(counts.overhead or ())
    assert back.invocations_per_instance == pytest.approx(3.5)
    assert back.latency_min == pytest.approx(0.001)
    assert back.latency_max == pytest.approx(0.007)
    assert back.latency_sum == pytest.approx(0.028)
    empty = minute_counts(5, {})
    assert (empty.invocations, empty.model_errors, empty.latency, empty.overhead) == (
        0,
        0,
        None,
        None,
    )


async def test_stats_on_a_replica_sum_the_rows_another_replica_stored(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    clock = FakeClock()
    here = open_stored_world(path, clock, source="replica-a")
    there = open_stored_world(path, clock, source="replica-b")
    app = web.Application()
    app[keys.SETTINGS] = Settings(state_dir=tmp_path)
    app[keys.MINUTES] = here.minutes
    app[keys.CLOUDWATCH] = here.gateway
    app.router.add_get("/splitserve/stats/{endpoint}", gateway_app.stats)
    try:
        serve(here, 2)
        serve(there, 3)
        there.minutes.variant("ep", "B").count_invocation()  # a variant only the other served
        await there.gateway.tick()  # its flush: what any replica's stats read of it
        serve(there, 100)  # not flushed yet: not seen until its next flush
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/splitserve/stats/ep", params={"since": "60"})
            assert response.status == 200
            report = await response.json()
        assert report["Variants"] == ["A", "B"]
        [period] = report["Periods"]
        assert period["Variants"]["A"]["Invocations"] == 5
        assert period["Variants"]["B"]["Invocations"] == 1
        assert period["Variants"]["A"]["ModelLatencyP50Seconds"] == pytest.approx(0.001, rel=0.1)
    finally:
        await there.gateway.close()
        await here.gateway.close()
