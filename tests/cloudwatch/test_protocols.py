"""Each of CloudWatch's protocols, driven by botocore's own serializer and parser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from splitserve.cloudwatch import routes as cloudwatch_routes
from tests.cloudwatch.conftest import PROTOCOLS, StoredWorld, World, send
from tests.support.clock import NOON

NOW = datetime.fromtimestamp(NOON, UTC)
DIMENSIONS = [{"Name": "EndpointName", "Value": "ep"}, {"Name": "VariantName", "Value": "A"}]


def record(world: World, per_minute: list[int], variant: str = "A") -> None:
    """`per_minute[i]` invocations in minute i from noon, each answered in 2 ms."""
    ring = world.minutes.variant("ep", variant)
    for count in per_minute:
        for _ in range(count):
            ring.count_invocation(0.5)
            ring.observe_latency(0.002)
            ring.observe_overhead(0.0001)
        world.clock.advance(60)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_get_metric_statistics_sums_each_minute(
    protocol: str, world: World, client: TestClient[web.Request, web.Application]
) -> None:
    record(world, [3, 0, 5, 1])
    raw, parsed = await send(
        client,
        protocol,
        "GetMetricStatistics",
        {
            "Namespace": "AWS/SageMaker",
            "MetricName": "Invocations",
            "Dimensions": DIMENSIONS,
            "StartTime": NOW,
            "EndTime": NOW + timedelta(minutes=4),
            "Period": 60,
            "Statistics": ["Sum", "SampleCount"],
        },
    )
    assert raw.status == 200, raw.body
    assert parsed["Label"] == "Invocations"
    points = sorted(parsed["Datapoints"], key=lambda point: point["Timestamp"])
    assert [(point["Timestamp"], point["Sum"], point["Unit"]) for point in points] == [
        (NOW, 3.0, "None"),
        (NOW + timedelta(minutes=2), 5.0, "None"),
        (NOW + timedelta(minutes=3), 1.0, "None"),
    ]
    assert [point["SampleCount"] for point in points] == [3.0, 5.0, 1.0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_latency_in_microseconds_with_percentiles(
    protocol: str, world: World, client: TestClient[web.Request, web.Application]
) -> None:
    record(world, [4])
    _, parsed = await send(
        client,
        protocol,
        "GetMetricStatistics",
        {
            "Namespace": "AWS/SageMaker",
            "MetricName": "ModelLatency",
            "Dimensions": DIMENSIONS,
            "StartTime": NOW,
            "EndTime": NOW + timedelta(minutes=1),
            "Period": 60,
            "Statistics": ["Average", "Maximum"],
            "ExtendedStatistics": ["p50", "p99"],
        },
    )
    (point,) = parsed["Datapoints"]
    assert point["Unit"] == "Microseconds"
    assert point["Average"] == pytest.approx(2000.0)
    assert point["Maximum"] == pytest.approx(2000.0)
    # Every sample is 2 ms: the estimate is clamped to the minute's minimum and maximum.
    assert point["ExtendedStatistics"] == {
        "p50": pytest.approx(2000.0),
        "p99": pytest.approx(2000.0),
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_errors_carry_cloudwatch_codes(
    protocol: str, client: TestClient[web.Request, web.Application]
) -> None:
    raw, parsed = await send(
        client,
        protocol,
        "GetMetricStatistics",
        {
            "Namespace": "AWS/SageMaker",
            "MetricName": "Invocations",
            "StartTime": NOW,
            "EndTime": NOW + timedelta(minutes=1),
            "Period": 90,
            "Statistics": ["Sum"],
        },
    )
    assert raw.status == 400
    assert parsed["Error"]["Code"] == "InvalidParameterValue"
    assert "multiple of 60" in parsed["Error"]["Message"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_get_metric_data_and_list_metrics(
    protocol: str, world: World, client: TestClient[web.Request, web.Application]
) -> None:
    record(world, [2, 7])
    _, parsed = await send(
        client,
        protocol,
        "GetMetricData",
        {
            "MetricDataQueries": [
                {
                    "Id": "calls",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": "AWS/SageMaker",
                            "MetricName": "Invocations",
                            "Dimensions": DIMENSIONS,
                        },
                        "Period": 60,
                        "Stat": "Sum",
                    },
                }
            ],
            "StartTime": NOW,
            "EndTime": NOW + timedelta(minutes=2),
            "ScanBy": "TimestampAscending",
        },
    )
    (result,) = parsed["MetricDataResults"]
    assert result["Id"] == "calls"
    assert result["Timestamps"] == [NOW, NOW + timedelta(minutes=1)]
    assert result["Values"] == [2.0, 7.0]
    assert result["StatusCode"] == "Complete"
    _, listed = await send(client, protocol, "ListMetrics", {"Namespace": "AWS/SageMaker"})
    names = sorted(metric["MetricName"] for metric in listed["Metrics"])
    assert "Invocations" in names
    assert "ModelLatency" in names
    assert all(metric["Dimensions"] == DIMENSIONS for metric in listed["Metrics"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_alarm_operations_round_trip(protocol: str, stored: StoredWorld) -> None:
    app = web.Application()
    app.router.add_routes(cloudwatch_routes.routes(stored.gateway.service, None, 1024 * 1024))
    app.router.add_post("/", cloudwatch_routes.handler(stored.gateway.service, None, 1024 * 1024))
    async with TestClient(TestServer(app)) as client:
        raw, _ = await send(
            client,
            protocol,
            "PutMetricAlarm",
            {
                "AlarmName": "errors", "Namespace": "AWS/SageMaker",
                "MetricName": "Invocation5XXErrors", "Dimensions": DIMENSIONS, "Statistic": "Sum",
                "Period": 60, "EvaluationPeriods": 2, "DatapointsToAlarm": 1, "Threshold": 1.5,
                "ComparisonOperator": "GreaterThanThreshold", "ActionsEnabled": False,
                "AlarmActions": ["arn:aws:sns:us-east-1:123456789012:a"],
            },
        )  # fmt: skip
        assert raw.status == 200, raw.body
        await send(
            client,
            protocol,
            "SetAlarmState",
            {"AlarmName": "errors", "StateValue": "ALARM", "StateReason": "by hand"},
        )
        _, described = await send(client, protocol, "DescribeAlarms", {"AlarmNames": ["errors"]})
        (found,) = described["MetricAlarms"]
        assert found["StateValue"] == "ALARM"
        assert found["Dimensions"] == DIMENSIONS
        assert found["AlarmActions"] == ["arn:aws:sns:us-east-1:123456789012:a"]
        assert found["ActionsEnabled"] is False
        assert (found["Threshold"], found["Period"], found["DatapointsToAlarm"]) == (1.5, 60, 1)
        assert found["StateUpdatedTimestamp"] == NOW
        _, history = await send(client, protocol, "DescribeAlarmHistory", {"AlarmName": "errors"})
        assert [item["HistoryItemType"] for item in history["AlarmHistoryItems"]] == [
            "StateUpdate",
            "ConfigurationUpdate",
        ]
        _, for_metric = await send(
            client,
            protocol,
            "DescribeAlarmsForMetric",
            {"Namespace": "AWS/SageMaker", "MetricName": "Invocation5XXErrors"},
        )
        assert [alarm["AlarmName"] for alarm in for_metric["MetricAlarms"]] == ["errors"]
        raw, refused = await send(client, protocol, "DeleteAlarms", {"AlarmNames": ["nope"]})
        assert (raw.status, refused["Error"]["Code"]) == (404, "ResourceNotFound")
        raw, _ = await send(client, protocol, "DeleteAlarms", {"AlarmNames": ["errors"]})
        assert raw.status == 200
