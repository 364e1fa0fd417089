"""Metric alarms: their operations, their evaluation every minute, and their persistence."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from splitserve.errors import (
    CloudWatchLimitExceeded,
    InvalidFormat,
    InvalidParameterCombination,
    InvalidParameterValue,
    MissingParameter,
    ResourceNotFound,
)
from splitserve.metrics.prometheus import REGISTRY
from tests.cloudwatch.conftest import StoredWorld, open_stored_world

DIMENSIONS = [{"Name": "EndpointName", "Value": "ep"}, {"Name": "VariantName", "Value": "A"}]


def alarm(name: str = "errors", **overrides: Any) -> dict[str, Any]:
    """PutMetricAlarm's parameters for an alarm on the variant's 5xx errors."""
    params: dict[str, Any] = {
        "AlarmName": name,
        "Namespace": "AWS/SageMaker",
        "MetricName": "Invocation5XXErrors",
        "Dimensions": DIMENSIONS,
        "Statistic": "Sum",
        "Period": 60,
        "EvaluationPeriods": 1,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "AlarmActions": ["arn:aws:sns:us-east-1:123456789012:rollback"],
    }
    params.update(overrides)
    return params


def serve_minute(world: StoredWorld, requests: int, failures: int) -> None:
    """One minute of traffic on ep/A: `failures` of `requests` answered 500; then the clock
    moves to the next minute."""
    ring = world.minutes.variant("ep", "A")
    for index in range(requests):
        ring.count_invocation()
        if index < failures:
            ring.count_model_error(500)
        else:
            ring.observe_latency(0.001)
    world.clock.advance(60)


async def describe(world: StoredWorld, name: str = "errors") -> dict[str, Any]:
    """The one alarm called `name`."""
    output: dict[str, Any] = await world.gateway.service.dispatch(
        "DescribeAlarms", {"AlarmNames": [name]}
    )
    (found,) = output["MetricAlarms"]
    assert isinstance(found, dict)
    return found


def transitions(state: str) -> float:
    """splitserve_cloudwatch_alarm_transitions_total{state} now."""
    value = REGISTRY.get_sample_value(
        "splitserve_cloudwatch_alarm_transitions_total", {"state": state}
    )
    return value or 0.0


async def test_an_alarm_on_5xx_errors_goes_to_alarm_and_back(stored: StoredWorld) -> None:
    service = stored.gateway.service
    await service.dispatch("PutMetricAlarm", alarm())
    found = await describe(stored)
    assert found["StateValue"] == "INSUFFICIENT_DATA"
    assert found["StateReason"] == "Unchecked: Initial alarm creation"
    assert found["AlarmArn"] == "arn:aws:cloudwatch:us-east-1:123456789012:alarm:errors"
    alarms_before = transitions("ALARM")

    serve_minute(stored, requests=4, failures=4)  # a worker failing every request
    await stored.gateway.alarms.evaluate()
    found = await describe(stored)
    assert found["StateValue"] == "ALARM"
    assert found["StateReason"] == (
        "Threshold Crossed: 1 out of the last 1 datapoints [4.0 (01/05/24 12:00:00)] was "
        "greater than or equal to the threshold (1.0) (minimum 1 datapoint for OK -> ALARM "
        "transition)."
    )
    assert json.loads(found["StateReasonData"])["recentDatapoints"] == [4.0]
    assert transitions("ALARM") == alarms_before + 1

    serve_minute(stored, requests=3, failures=0)  # recovered
    await stored.gateway.alarms.evaluate()
    assert (await describe(stored))["StateValue"] == "OK"

    stored.clock.advance(60)  # no traffic: no datapoint
    await stored.gateway.alarms.evaluate()
    found = await describe(stored)
    assert (found["StateValue"], found["StateReason"]) == (
        "INSUFFICIENT_DATA",
        "Insufficient Data: 1 datapoint was unknown.",
    )

    history = await service.dispatch(
        "DescribeAlarmHistory", {"AlarmName": "errors", "ScanBy": "TimestampAscending"}
    )
    items = history["AlarmHistoryItems"]
    assert isinstance(items, list)
    assert [(item["HistoryItemType"], item["HistorySummary"]) for item in items] == [
        ("ConfigurationUpdate", 'Alarm "errors" created'),
        ("StateUpdate", "Alarm updated from INSUFFICIENT_DATA to ALARM"),
        (
            "Action",
            "Recorded action arn:aws:sns:us-east-1:123456789012:rollback "
            "(splitserve executes no alarm actions)",
        ),
        ("StateUpdate", "Alarm updated from ALARM to OK"),
        ("StateUpdate", "Alarm updated from OK to INSUFFICIENT_DATA"),
    ]


async def test_missing_data_is_treated_as_told(stored: StoredWorld) -> None:
    service = stored.gateway.service
    await service.dispatch("PutMetricAlarm", alarm("missing"))
    await service.dispatch("PutMetricAlarm", alarm("breaching", TreatMissingData="breaching"))
    await service.dispatch("PutMetricAlarm", alarm("fine", TreatMissingData="notBreaching"))
    await service.dispatch("PutMetricAlarm", alarm("ignored", TreatMissingData="ignore"))
    stored.clock.advance(120)
    await stored.gateway.alarms.evaluate()
    states = {
        name: (await describe(stored, name))["StateValue"]
        for name in ("missing", "breaching", "fine", "ignored")
    }
    assert states == {
        "missing": "INSUFFICIENT_DATA",
        "breaching": "ALARM",
        "fine": "OK",
        "ignored": "INSUFFICIENT_DATA",
    }


async def test_datapoints_to_alarm_m_out_of_n(stored: StoredWorld) -> None:
    await stored.gateway.service.dispatch(
        "PutMetricAlarm", alarm(EvaluationPeriods=3, DatapointsToAlarm=2)
    )
    serve_minute(stored, 2, 2)
    serve_minute(stored, 2, 0)
    serve_minute(stored, 2, 0)
    await stored.gateway.alarms.evaluate()
    assert (await describe(stored))["StateValue"] == "OK"
    serve_minute(stored, 2, 1)
    serve_minute(stored, 2, 1)
    await stored.gateway.alarms.evaluate()
    assert (await describe(stored))["StateValue"] == "ALARM"


async def test_set_alarm_state_and_its_errors(stored: StoredWorld) -> None:
    service = stored.gateway.service
    await service.dispatch("PutMetricAlarm", alarm())
    await service.dispatch(
        "SetAlarmState",
        {"AlarmName": "errors", "StateValue": "ALARM", "StateReason": "testing the rollback",
         "StateReasonData": "{\"by\": \"test\"}"},
    )  # fmt: skip
    found = await describe(stored)
    assert (found["StateValue"], found["StateReason"]) == ("ALARM", "testing the rollback")
    assert json.loads(found["StateReasonData"]) == {"by": "test"}
    with pytest.raises(ResourceNotFound, match="Alarm nope not found"):
        await service.dispatch(
            "SetAlarmState", {"AlarmName": "nope", "StateValue": "OK", "StateReason": "x"}
        )
    with pytest.raises(InvalidFormat):
        await service.dispatch(
            "SetAlarmState",
            {"AlarmName": "errors", "StateValue": "OK", "StateReason": "x", "StateReasonData": "{"},
        )
    # The next evaluation judges the figures again, as on AWS.
    stored.clock.advance(60)
    await stored.gateway.alarms.evaluate()
    assert (await describe(stored))["StateValue"] == "INSUFFICIENT_DATA"


async def test_describe_delete_and_for_metric(stored: StoredWorld) -> None:
    service = stored.gateway.service
    for name in ("a-1", "a-2", "b-1"):
        await service.dispatch("PutMetricAlarm", alarm(name))
    listed = await service.dispatch("DescribeAlarms", {"AlarmNamePrefix": "a-", "MaxRecords": 1})
    assert [item["AlarmName"] for item in listed["MetricAlarms"]] == ["a-1"]  # type: ignore[attr-defined]
    following = await service.dispatch(
        "DescribeAlarms",
        {"AlarmNamePrefix": "a-", "MaxRecords": 1, "NextToken": listed["NextToken"]},
    )
    assert [item["AlarmName"] for item in following["MetricAlarms"]] == ["a-2"]  # type: ignore[attr-defined]
    for_metric = await service.dispatch(
        "DescribeAlarmsForMetric",
        {
            "Namespace": "AWS/SageMaker",
            "MetricName": "Invocation5XXErrors",
            "Dimensions": DIMENSIONS,
        },
    )
    assert len(for_metric["MetricAlarms"]) == 3  # type: ignore[arg-type]
    with pytest.raises(ResourceNotFound):
        await service.dispatch("DeleteAlarms", {"AlarmNames": ["a-1", "nope"]})
    assert len((await service.dispatch("DescribeAlarms", {}))["MetricAlarms"]) == 3  # type: ignore[arg-type]
    await service.dispatch("DeleteAlarms", {"AlarmNames": ["a-1", "a-2"]})
    remaining = await service.dispatch("DescribeAlarms", {})
    assert [item["AlarmName"] for item in remaining["MetricAlarms"]] == ["b-1"]  # type: ignore[attr-defined]
    with pytest.raises(InvalidParameterCombination):
        await service.dispatch("DescribeAlarms", {"AlarmNames": ["b-1"], "AlarmNamePrefix": "b"})


@pytest.mark.parametrize(
    ("overrides", "error", "words"),
    [
        ({"MetricName": None}, MissingParameter, "MetricName"),
        ({"ExtendedStatistic": "p99"}, InvalidParameterCombination, "Exactly one"),
        ({"Statistic": None, "ExtendedStatistic": "p101"}, InvalidParameterValue, "p101"),
        ({"Period": 90}, InvalidParameterValue, "multiple of 60"),
        ({"Period": 3600, "EvaluationPeriods": 25}, InvalidParameterCombination, "86400"),
        (
            {"EvaluationPeriods": 2, "DatapointsToAlarm": 3},
            InvalidParameterCombination,
            "DatapointsToAlarm",
        ),
        ({"TreatMissingData": "sometimes"}, InvalidParameterValue, "TreatMissingData"),
        ({"ComparisonOperator": "GreaterThanUpperThreshold"}, InvalidParameterValue, "anomaly"),
        ({"Metrics": []}, InvalidParameterValue, "metric math"),
        (
            {"EvaluateLowSampleCountPercentile": "ignore"},
            InvalidParameterCombination,
            "ExtendedStatistic",
        ),
    ],
)
async def test_put_metric_alarm_refuses_what_cloudwatch_refuses(
    stored: StoredWorld, overrides: dict[str, Any], error: type[Exception], words: str
) -> None:
    params = {key: value for key, value in (alarm() | overrides).items() if value is not None}
    with pytest.raises(error, match=words):
        await stored.gateway.service.dispatch("PutMetricAlarm", params)
    assert (await stored.gateway.service.dispatch("DescribeAlarms", {}))["MetricAlarms"] == []


async def test_the_alarm_limit(tmp_path: Path) -> None:
    world = open_stored_world(tmp_path / "state.sqlite3")
    world.gateway.alarms._settings = world.gateway.alarms._settings.__class__(max_alarms=1)
    try:
        await world.gateway.service.dispatch("PutMetricAlarm", alarm("one"))
        await world.gateway.service.dispatch("PutMetricAlarm", alarm("one", Threshold=2.0))
        with pytest.raises(CloudWatchLimitExceeded):
            await world.gateway.service.dispatch("PutMetricAlarm", alarm("two"))
    finally:
        await world.gateway.close()


async def test_alarms_and_figures_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = open_stored_world(path)
    await first.gateway.service.dispatch("PutMetricAlarm", alarm())
    serve_minute(first, 5, 5)
    await first.gateway.alarms.evaluate()
    await first.gateway.close()  # writes the figures out

    second = open_stored_world(path, first.clock)
    try:
        await second.gateway.alarms.load()
        assert (await describe(second))["StateValue"] == "ALARM"
        serve_minute(second, 2, 0)
        statistics: dict[str, Any] = await second.gateway.service.dispatch(
            "GetMetricStatistics",
            {
                "Namespace": "AWS/SageMaker",
                "MetricName": "Invocations",
                "Dimensions": DIMENSIONS,
                "StartTime": second.clock.now - 600,
                "EndTime": second.clock.now,
                "Period": 600,
                "Statistics": ["Sum"],
            },
        )
        (point,) = statistics["Datapoints"]
        assert point["Sum"] == 7.0  # 5 before the restart, 2 after
        second.minutes.forget("ep")  # only the stored rows are left to list
        listed: dict[str, Any] = await second.gateway.service.dispatch(
            "ListMetrics", {"MetricName": "Invocation5XXErrors"}
        )
        assert [metric["Dimensions"] for metric in listed["Metrics"]] == [DIMENSIONS]
    finally:
        await second.gateway.close()


async def test_figures_past_the_retention_are_dropped(tmp_path: Path) -> None:
    world = open_stored_world(tmp_path / "state.sqlite3")
    try:
        serve_minute(world, 3, 0)
        await world.gateway.figures.flush(retention_minutes=5)
        assert world.gateway._store.read_minutes(0, 10**9, None, "x", own=False)
        world.clock.advance(600)
        await world.gateway.figures.flush(retention_minutes=5)
        assert world.gateway._store.read_minutes(0, 10**9, None, "x", own=False) == []
    finally:
        await world.gateway.close()


async def test_damaged_rows_are_left_out(stored: StoredWorld) -> None:
    serve_minute(stored, 2, 0)
    await stored.gateway.figures.flush(retention_minutes=60)
    connection = sqlite3.connect(stored.path)
    with connection:
        minute = int(stored.clock.now // 60) - 1
        for source, figures in (
            ("other-1", '{"Invocations": {"n": 0, "sum": 1, "min": 1, "max": 1}}'),
            ("other-2", '{"Invocations": {"n": 3, "sum": NaN, "min": 1, "max": 1}}'),
            ("other-3", "not json"),
            (
                "other-4",
                '{"Invocations": {"n": 1, "sum": 1, "min": 1, "max": 1, "buckets": {"999": 1}}}',
            ),
            ("other-5", '{"Invocations": {"n": 5, "sum": 5, "min": 1, "max": 1}}'),
        ):
            connection.execute(
                "INSERT INTO cloudwatch_minutes VALUES (?, 'ep', 'A', ?, ?)",
                (source, minute, figures),
            )
        connection.execute(
            "INSERT INTO cloudwatch_alarms VALUES (?, ?, 'OK', '', NULL, 0, 0, 0)",
            ("broken", '{"Period": "x"}'),
        )
    connection.close()
    statistics: dict[str, Any] = await stored.gateway.service.dispatch(
        "GetMetricStatistics",
        {
            "Namespace": "AWS/SageMaker", "MetricName": "Invocations", "Dimensions": DIMENSIONS,
            "StartTime": stored.clock.now - 120, "EndTime": stored.clock.now, "Period": 120,
            "Statistics": ["Sum"],
        },
    )  # fmt: skip
    assert [point["Sum"] for point in statistics["Datapoints"]] == [7.0]  # 2 here, 5 from other-5
    listed: dict[str, Any] = await stored.gateway.service.dispatch("ListMetrics", {})
    assert "Invocations" in {metric["MetricName"] for metric in listed["Metrics"]}
    await stored.gateway.alarms.load()
    await stored.gateway.alarms.evaluate()  # the broken alarm is skipped, not fatal


async def test_a_deleted_variants_recent_minutes_still_count(stored: StoredWorld) -> None:
    serve_minute(stored, 4, 0)
    await stored.gateway.figures.flush(retention_minutes=60)
    stored.minutes.forget("ep")
    statistics: dict[str, Any] = await stored.gateway.service.dispatch(
        "GetMetricStatistics",
        {
            "Namespace": "AWS/SageMaker", "MetricName": "Invocations", "Dimensions": DIMENSIONS,
            "StartTime": stored.clock.now - 120, "EndTime": stored.clock.now, "Period": 60,
            "Statistics": ["Sum"],
        },
    )  # fmt: skip
    assert [point["Sum"] for point in statistics["Datapoints"]] == [4.0]


async def test_a_percentile_alarm_and_low_sample_counts(stored: StoredWorld) -> None:
    service = stored.gateway.service
    latency = alarm(
        "slow", MetricName="ModelLatency", Statistic=None, ExtendedStatistic="p90",
        Threshold=500.0, ComparisonOperator="GreaterThanThreshold",
    )  # fmt: skip
    careful = latency | {"AlarmName": "careful", "EvaluateLowSampleCountPercentile": "ignore"}
    for params in (latency, careful):
        await service.dispatch(
            "PutMetricAlarm", {key: value for key, value in params.items() if value is not None}
        )
    serve_minute(stored, 3, 0)  # three answers of 1 ms: p90 1000 us > 500 us
    await stored.gateway.alarms.evaluate()
    assert (await describe(stored, "slow"))["StateValue"] == "ALARM"
    assert (await describe(stored, "slow"))["ExtendedStatistic"] == "p90"
    # A p90 needs 10 samples to mean something: with 3 the careful alarm keeps its state.
    assert (await describe(stored, "careful"))["StateValue"] == "INSUFFICIENT_DATA"
    serve_minute(stored, 10, 0)
    await stored.gateway.alarms.evaluate()
    assert (await describe(stored, "careful"))["StateValue"] == "ALARM"
