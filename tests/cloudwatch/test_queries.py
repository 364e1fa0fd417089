"""GetMetricStatistics, GetMetricData and ListMetrics called directly: statistics, limits, paging
and CloudWatch's refusals; and the `--metrics-retention` flag."""

from __future__ import annotations

import math
from typing import Any

import pytest

from splitserve import cli
from splitserve.cloudwatch.figures import Aggregate
from splitserve.config import CloudWatchSettings
from splitserve.errors import (
    InvalidNextToken,
    InvalidParameterCombination,
    InvalidParameterValue,
    MissingParameter,
)
from splitserve.metrics.minutes import LATENCY_BUCKETS, latency_bucket
from tests.cloudwatch.conftest import World, make_world
from tests.support.clock import NOON

DIMENSIONS = [{"Name": "EndpointName", "Value": "ep"}, {"Name": "VariantName", "Value": "A"}]


def statistics_params(**overrides: Any) -> dict[str, Any]:
    """GetMetricStatistics over the ten minutes from noon, per minute, Sum."""
    params: dict[str, Any] = {
        "Namespace": "AWS/SageMaker",
        "MetricName": "Invocations",
        "Dimensions": DIMENSIONS,
        "StartTime": NOON,
        "EndTime": NOON + 600,
        "Period": 60,
        "Statistics": ["Sum"],
    }
    params.update(overrides)
    return {key: value for key, value in params.items() if value is not None}


def data_query(query_id: str = "q", **stat: Any) -> dict[str, Any]:
    """A MetricStat query of the variant's Invocations per minute."""
    metric_stat: dict[str, Any] = {
        "Metric": {
            "Namespace": "AWS/SageMaker",
            "MetricName": "Invocations",
            "Dimensions": DIMENSIONS,
        },
        "Period": 60,
        "Stat": "Sum",
    }
    metric_stat.update(stat)
    return {"Id": query_id, "MetricStat": metric_stat}


def traffic(world: World, minutes: list[tuple[int, int, int]]) -> None:
    """Per minute: (requests, 4xx answers, 5xx answers); latency 1 ms for the others."""
    ring = world.minutes.variant("ep", "A")
    for requests, client_errors, server_errors in minutes:
        for index in range(requests):
            ring.count_invocation(0.5)
            if index < client_errors:
                ring.count_model_error(404)
            elif index < client_errors + server_errors:
                ring.count_model_error(503)
            else:
                ring.observe_latency(0.001 * (index + 1))
                ring.observe_overhead(0.0002)
        world.clock.advance(60)


async def statistics(world: World, **overrides: Any) -> list[dict[str, Any]]:
    """The datapoints of GetMetricStatistics with `overrides`, oldest first."""
    output: dict[str, Any] = await world.service.dispatch(
        "GetMetricStatistics", statistics_params(**overrides)
    )
    return sorted(output["Datapoints"], key=lambda point: point["Timestamp"])


async def test_error_indicators_have_cloudwatch_statistics(world: World) -> None:
    traffic(world, [(10, 2, 3)])
    (point,) = await statistics(
        world,
        MetricName="Invocation5XXErrors",
        Statistics=["Sum", "SampleCount", "Average", "Minimum", "Maximum"],
        ExtendedStatistics=["p50", "p80"],
    )
    assert (point["Sum"], point["SampleCount"], point["Average"]) == (3.0, 10.0, 0.3)
    assert (point["Minimum"], point["Maximum"]) == (0.0, 1.0)
    assert point["ExtendedStatistics"] == {"p50": 0.0, "p80": 1.0}
    (per_instance,) = await statistics(world, MetricName="InvocationsPerInstance")
    assert per_instance["Sum"] == 5.0


async def test_periods_sum_minutes_and_start_at_start_time(world: World) -> None:
    traffic(world, [(1, 0, 0), (2, 0, 0), (3, 0, 0), (4, 0, 0)])
    points = await statistics(world, StartTime=NOON + 30, Period=120)
    assert [(point["Timestamp"].timestamp(), point["Sum"]) for point in points] == [
        (NOON, 3.0),
        (NOON + 120, 7.0),
    ]


async def test_latency_percentiles_are_within_the_stated_bound(world: World) -> None:
    traffic(world, [(100, 0, 0)])  # latencies 1 ms .. 100 ms
    (point,) = await statistics(
        world,
        MetricName="ModelLatency",
        Statistics=["Minimum", "Maximum", "Average", "SampleCount"],
        ExtendedStatistics=["p50", "p90", "p99"],
    )
    assert point["Unit"] == "Microseconds"
    assert (point["Minimum"], point["Maximum"]) == (pytest.approx(1000.0), pytest.approx(100_000.0))
    assert point["Average"] == pytest.approx(50_500.0)
    assert point["SampleCount"] == 100.0
    for name, exact in (("p50", 50_000.0), ("p90", 90_000.0), ("p99", 99_000.0)):
        assert abs(point["ExtendedStatistics"][name] - exact) <= 0.09 * exact
    (overhead,) = await statistics(world, MetricName="OverheadLatency", Statistics=["Average"])
    assert overhead["Average"] == pytest.approx(200.0)


async def test_no_datapoints_for_what_the_gateway_does_not_have(world: World) -> None:
    traffic(world, [(3, 0, 0)])
    assert await statistics(world, Dimensions=DIMENSIONS[:1]) == []
    assert await statistics(world, MetricName="DiskUtilization") == []
    assert await statistics(world, Unit="Seconds") == []
    assert await statistics(world, Namespace="AWS/EC2") == []
    assert len(await statistics(world, Unit="None")) == 1


@pytest.mark.parametrize(
    ("overrides", "error", "words"),
    [
        ({"Period": 30}, InvalidParameterValue, "multiple of 60"),
        ({"EndTime": NOON}, InvalidParameterValue, "StartTime must be less"),
        ({"Statistics": None}, InvalidParameterCombination, "Statistics and ExtendedStatistics"),
        ({"Statistics": ["p50"]}, InvalidParameterValue, "p50"),
        ({"ExtendedStatistics": ["p100.5"]}, InvalidParameterValue, "p100.5"),
        ({"ExtendedStatistics": ["tm99"]}, InvalidParameterValue, "tm99"),
        ({"EndTime": NOON + 1441 * 60}, InvalidParameterCombination, "1,441 datapoints"),
        (
            {"Dimensions": [DIMENSIONS[0], DIMENSIONS[0]]},
            InvalidParameterValue,
            "EndpointName appears twice",
        ),
    ],
)
async def test_get_metric_statistics_refusals(
    world: World, overrides: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        await statistics(world, **overrides)


async def test_1440_datapoints_are_allowed(world: World) -> None:
    assert await statistics(world, EndTime=NOON + 1440 * 60) == []


async def test_get_metric_data_pages_and_orders(world: World) -> None:
    traffic(world, [(1, 0, 0), (2, 0, 0), (3, 0, 0)])
    params: dict[str, Any] = {
        "MetricDataQueries": [data_query("a"), data_query("b", Stat="SampleCount")],
        "StartTime": NOON,
        "EndTime": NOON + 180,
        "MaxDatapoints": 4,
    }
    first: dict[str, Any] = await world.service.dispatch("GetMetricData", params)
    values = {result["Id"]: result["Values"] for result in first["MetricDataResults"]}
    assert values == {"a": [3.0, 2.0, 1.0], "b": [3.0]}  # TimestampDescending by default
    assert first["MetricDataResults"][1]["StatusCode"] == "PartialData"
    second: dict[str, Any] = await world.service.dispatch(
        "GetMetricData", params | {"NextToken": first["NextToken"]}
    )
    values = {result["Id"]: result["Values"] for result in second["MetricDataResults"]}
    assert values == {"a": [], "b": [2.0, 1.0]}
    assert "NextToken" not in second
    with pytest.raises(InvalidNextToken):
        await world.service.dispatch(
            "GetMetricData", params | {"NextToken": first["NextToken"], "MaxDatapoints": 5}
        )
    with pytest.raises(InvalidNextToken):
        await world.service.dispatch("GetMetricData", params | {"NextToken": "bm9wZQ=="})


@pytest.mark.parametrize(
    ("queries", "error", "words"),
    [
        ([{"Id": "m", "Expression": "SUM(METRICS())"}], InvalidParameterValue, "metric math"),
        ([{"Id": "m"}], MissingParameter, "MetricStat"),
        ([data_query("Upper")], InvalidParameterValue, "lowercase"),
        ([data_query("q"), data_query("q")], InvalidParameterValue, "not unique"),
        ([data_query(Stat="Median")], InvalidParameterValue, "Median"),
        ([data_query(Period=45)], InvalidParameterValue, "multiple of 60"),
        ([data_query(Metric={"Namespace": "AWS/SageMaker"})], MissingParameter, "MetricName"),
        ([data_query() | {"ReturnData": False}], InvalidParameterCombination, "ReturnData"),
        ([], InvalidParameterValue, "between 1 and 500"),
    ],
)
async def test_get_metric_data_refusals(
    world: World, queries: list[dict[str, Any]], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        await world.service.dispatch(
            "GetMetricData",
            {"MetricDataQueries": queries, "StartTime": NOON, "EndTime": NOON + 60},
        )


async def test_list_metrics_lists_what_has_samples_filtered_and_paged() -> None:
    world = make_world(CloudWatchSettings(list_metrics_page_size=4))
    for variant in ("A", "B"):
        world.minutes.variant("ep", variant).count_invocation()
    world.minutes.variant("ep", "B").observe_latency(0.001)
    world.minutes.variant("ep", "idle")  # deployed, never invoked: nothing to list
    everything: dict[str, Any] = await world.service.dispatch("ListMetrics", {})
    assert len(everything["Metrics"]) == 4
    pages = [everything]
    while "NextToken" in pages[-1]:
        token = pages[-1]["NextToken"]
        pages.append(await world.service.dispatch("ListMetrics", {"NextToken": token}))
    listed = [metric for page in pages for metric in page["Metrics"]]
    # The count metrics of both variants (one sample per request), ModelLatency of B only.
    assert len(listed) == 11
    assert {metric["Dimensions"][1]["Value"] for metric in listed} == {"A", "B"}
    only_b: dict[str, Any] = await world.service.dispatch(
        "ListMetrics",
        {"MetricName": "ModelLatency", "Dimensions": [{"Name": "VariantName", "Value": "B"}]},
    )
    assert only_b["Metrics"] == [
        {
            "Namespace": "AWS/SageMaker",
            "MetricName": "ModelLatency",
            "Dimensions": [
                {"Name": "EndpointName", "Value": "ep"},
                {"Name": "VariantName", "Value": "B"},
            ],
        }
    ]
    endpoints: dict[str, Any] = await world.service.dispatch(
        "ListMetrics", {"Namespace": "/aws/sagemaker/Endpoints"}
    )
    assert endpoints["Metrics"] == []  # no instance was sampled
    world.clock.advance(4 * 3600)
    recent: dict[str, Any] = await world.service.dispatch("ListMetrics", {"RecentlyActive": "PT3H"})
    assert recent["Metrics"] == []
    with pytest.raises(InvalidNextToken):
        await world.service.dispatch("ListMetrics", {"NextToken": "garbage!"})


def test_aggregates_add_and_round_trip() -> None:
    histogram = [0] * LATENCY_BUCKETS
    histogram[latency_bucket(0.002)] = 3
    left = Aggregate(3, 6000.0, 2000.0, 2000.0, None, histogram)
    right = Aggregate(1, 2000.0, 2000.0, 2000.0, None, histogram)
    total = left + right
    assert (total.sample_count, total.total) == (4, 8000.0)
    assert Aggregate.from_json(total.to_json()) == total
    assert math.isclose(total.percentile(50) or 0.0, 2000.0)
    counted = Aggregate(2, 1.0, 0.0, 1.0, {0.0: 1, 1.0: 1}) + Aggregate(1, 1.0, 1.0, 1.0, {1.0: 1})
    assert counted.values == {0.0: 1, 1.0: 2}
    assert Aggregate.from_json(counted.to_json()) == counted


def test_metrics_retention_flag() -> None:
    parser = cli.build_parser()
    assert cli.settings_from_args(parser.parse_args(["serve"])).cloudwatch.retention_days == 15
    args = parser.parse_args(["serve", "--metrics-retention", "3"])
    assert cli.settings_from_args(args).cloudwatch.retention_days == 3
    for bad in ("0", "456", "x", "-1"):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", "--metrics-retention", bad])
