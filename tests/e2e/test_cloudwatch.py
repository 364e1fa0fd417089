"""CloudWatch's API against a real `splitserve serve`: the walkthrough's cell through current boto3
(Smithy RPC v2 CBOR), and the JSON 1.0 and query protocols through botocore's own serializers."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
import botocore.parsers
import botocore.serialize
import pandas as pd  # type: ignore[import-untyped]
import pytest
from botocore.exceptions import ClientError

from tests.e2e.helpers import FAST_WAIT, create_two_variant_endpoint, csv_rows, invoke_many
from tests.e2e.test_auth import ACCESS_KEY_ID, SECRET, keys_file
from tests.e2e.test_auth import client as auth_client
from tests.e2e.test_faults import create_endpoint, create_fault_model, write_images_file
from tests.e2e.test_variant_metrics import scrape, value
from tests.support.gateway import Gateway, running_gateway

pytestmark = pytest.mark.e2e


def dimensions(endpoint: str, variant: str) -> list[dict[str, str]]:
    """CloudWatch's dimensions of one SageMaker variant."""
    return [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]


def walkthrough_frame(cw: Any, endpoint: str, variant: str, now: datetime) -> pd.DataFrame:
    """The walkthrough's CloudWatch cell, as written (only the client's endpoint_url differs)."""
    metrics = cw.get_metric_statistics(
        Namespace="AWS/SageMaker",
        MetricName="Invocations",
        Dimensions=[
            {"Name": "EndpointName", "Value": endpoint},
            {"Name": "VariantName", "Value": variant},
        ],
        StartTime=now - timedelta(minutes=10),
        EndTime=now,
        Period=60,
        Statistics=["Sum"],
    )
    return (
        pd.DataFrame(metrics["Datapoints"])
        .sort_values("Timestamp")
        .set_index("Timestamp")
        .drop("Unit", axis=1)
    )


def botocore_call(gateway: Gateway, protocol: str, operation: str, params: dict[str, Any]) -> Any:
    """Send one CloudWatch call serialized by botocore for `protocol`; parse the answer as
    botocore does (errors under "Error")."""
    model = gateway.client("cloudwatch").meta.service_model.operation_model(operation)
    request = botocore.serialize.create_serializer(protocol).serialize_to_request(params, model)
    body = request["body"]
    if isinstance(body, dict):
        body = urlencode(body).encode()
    http_request = urllib.request.Request(
        gateway.url + request["url_path"], data=body, headers=request["headers"], method="POST"
    )
    try:
        with urllib.request.urlopen(http_request, timeout=30) as response:
            status, headers, answer = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, answer = error.code, error.headers, error.read()
    return botocore.parsers.create_parser(protocol).parse(
        {
            "status_code": status,
            "headers": {k.lower(): v for k, v in headers.items()},
            "body": answer,
        },
        model.output_shape,
    )


def test_walkthrough_per_minute_sums_match_what_was_sent(
    gateway: Gateway, sagemaker: Any, runtime: Any, models: Any
) -> None:
    endpoint = "cw-walk"
    create_two_variant_endpoint(sagemaker, endpoint)
    before = scrape(gateway)
    body = csv_rows(models["v1"].rows[:2])
    sent = invoke_many(runtime, endpoint, body, 30)
    sent += invoke_many(runtime, endpoint, body, 7, TargetVariant="Variant1")
    after = scrape(gateway)
    cw = boto3.client(
        "cloudwatch",
        endpoint_url=gateway.url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    # A minute on, so that the current minute is inside the window whatever the clock says.
    now = datetime.now(UTC) + timedelta(minutes=1)
    for variant in ("Variant1", "Variant2"):
        frame = walkthrough_frame(cw, endpoint, variant, now)
        assert list(frame.columns) == ["Sum"]
        assert frame["Sum"].sum() == sent[variant]
        # Exactly what /metrics counted over the same minutes.
        counted = value(
            after, "splitserve_invocations_total", variant_name=variant, endpoint_name=endpoint
        )
        before_count = value(
            before, "splitserve_invocations_total", variant_name=variant, endpoint_name=endpoint
        )
        assert counted is not None
        assert frame["Sum"].sum() == counted - (before_count or 0)
        data = cw.get_metric_data(
            MetricDataQueries=[
                {
                    "Id": "calls",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": "AWS/SageMaker",
                            "MetricName": "Invocations",
                            "Dimensions": dimensions(endpoint, variant),
                        },
                        "Period": 60,
                        "Stat": "Sum",
                    },
                }
            ],
            StartTime=now - timedelta(minutes=10),
            EndTime=now,
        )
        (result,) = data["MetricDataResults"]
        by_minute = dict(zip(result["Timestamps"], result["Values"], strict=True))
        assert by_minute == frame["Sum"].to_dict()
    assert sent["Variant1"] >= 7


@pytest.mark.parametrize("protocol", ["json", "query"])
def test_older_protocols_against_the_gateway(
    protocol: str, gateway: Gateway, sagemaker: Any, runtime: Any, models: Any
) -> None:
    endpoint = f"cw-{protocol}"
    create_two_variant_endpoint(sagemaker, endpoint, weights=(1.0, 0.0))
    sent: Counter[str] = invoke_many(runtime, endpoint, csv_rows(models["v1"].rows[:1]), 5)
    now = datetime.now(UTC) + timedelta(minutes=1)
    parsed = botocore_call(
        gateway,
        protocol,
        "GetMetricStatistics",
        {
            "Namespace": "AWS/SageMaker",
            "MetricName": "Invocations",
            "Dimensions": dimensions(endpoint, "Variant1"),
            "StartTime": now - timedelta(minutes=10),
            "EndTime": now,
            "Period": 60,
            "Statistics": ["Sum"],
        },
    )
    assert sum(point["Sum"] for point in parsed["Datapoints"]) == sent["Variant1"] == 5
    refused = botocore_call(
        gateway,
        protocol,
        "GetMetricStatistics",
        {
            "Namespace": "AWS/SageMaker",
            "MetricName": "Invocations",
            "StartTime": now - timedelta(days=3),
            "EndTime": now,
            "Period": 60,
            "Statistics": ["Sum"],
        },
    )
    assert refused["Error"]["Code"] == "InvalidParameterCombination"
    assert "exceeds the limit of 1,440" in refused["Error"]["Message"]


def test_sagemaker_control_plane_still_answers_on_post_root(
    gateway: Gateway, sagemaker: Any
) -> None:
    assert sagemaker.list_endpoints()["Endpoints"] == []


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ((ACCESS_KEY_ID, "not-the-secret"), "InvalidSignatureException"),
        (("AKIDNOBODY", SECRET), "UnrecognizedClientException"),
        ((None, ""), "MissingAuthenticationTokenException"),
    ],
)
def test_cloudwatch_checks_signatures_with_auth(
    tmp_path: Path, model_store: Path, key: tuple[str | None, str], code: str
) -> None:
    with running_gateway(
        tmp_path / "state", model_store, "--auth", str(keys_file(tmp_path))
    ) as gateway:
        signed = auth_client(gateway, "cloudwatch", ACCESS_KEY_ID, SECRET)
        assert signed.list_metrics()["Metrics"] == []
        signed.put_metric_alarm(
            AlarmName="signed", Namespace="AWS/SageMaker", MetricName="Invocations",
            Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1.0,
            ComparisonOperator="GreaterThanThreshold",
        )  # fmt: skip
        wrong = auth_client(gateway, "cloudwatch", *key)
        with pytest.raises(ClientError) as refused:
            wrong.describe_alarms()
        assert refused.value.response["Error"]["Code"] == code
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert signed.describe_alarms()["MetricAlarms"][0]["AlarmName"] == "signed"


def alarm_state(cw: Any, name: str) -> str:
    """The alarm's state now."""
    state: str = cw.describe_alarms(AlarmNames=[name])["MetricAlarms"][0]["StateValue"]
    return state


def wait_for_state(cw: Any, name: str, state: str, timeout: float) -> None:
    """Poll the alarm until it is in `state`; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while alarm_state(cw, name) != state:
        assert time.monotonic() < deadline, f"alarm {name} not {state} within {timeout} s"
        time.sleep(2)


@pytest.mark.slow
@pytest.mark.timeout(8 * 60)
def test_an_alarm_follows_a_failing_worker_and_its_recovery(
    tmp_path: Path, model_store: Path
) -> None:
    """Done when (issue 14): ALARM within two evaluation periods of a worker failing every request,
    OK again once it answers. Takes up to about four minutes: periods are whole minutes."""
    with running_gateway(
        tmp_path / "state", model_store, "--images", str(write_images_file(tmp_path))
    ) as gateway:
        sagemaker = gateway.client("sagemaker")
        runtime = gateway.client("sagemaker-runtime")
        cw = gateway.client("cloudwatch")
        create_fault_model(sagemaker, "failing", FAULT_INVOCATION_STATUS="500")
        create_fault_model(sagemaker, "healthy")
        create_endpoint(sagemaker, "alarmed", [("Variant1", "failing", 1, 1.0)])
        cw.put_metric_alarm(
            AlarmName="alarmed-5xx", Namespace="AWS/SageMaker", MetricName="Invocation5XXErrors",
            Dimensions=dimensions("alarmed", "Variant1"), Statistic="Sum", Period=60,
            EvaluationPeriods=1, Threshold=1.0, ComparisonOperator="GreaterThanOrEqualToThreshold",
            AlarmActions=["arn:aws:sns:us-east-1:123456789012:rollback"],
        )  # fmt: skip
        for _ in range(5):
            with pytest.raises(ClientError):
                runtime.invoke_endpoint(EndpointName="alarmed", Body=b"1", ContentType="text/csv")
        wait_for_state(cw, "alarmed-5xx", "ALARM", timeout=2 * 60 + 30)
        sagemaker.create_endpoint_config(
            EndpointConfigName="alarmed-fixed",
            ProductionVariants=[
                {"VariantName": "Variant1", "ModelName": "healthy", "InitialInstanceCount": 1,
                 "InstanceType": "ml.t2.medium", "InitialVariantWeight": 1.0}
            ],
        )  # fmt: skip
        sagemaker.update_endpoint(EndpointName="alarmed", EndpointConfigName="alarmed-fixed")
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName="alarmed", WaiterConfig=FAST_WAIT
        )
        deadline = time.monotonic() + 3 * 60
        while alarm_state(cw, "alarmed-5xx") != "OK":
            assert time.monotonic() < deadline, "the alarm did not go back to OK"
            runtime.invoke_endpoint(EndpointName="alarmed", Body=b"1", ContentType="text/csv")
            time.sleep(1)
        history = cw.describe_alarm_history(AlarmName="alarmed-5xx", ScanBy="TimestampAscending")
        summaries = [item["HistorySummary"] for item in history["AlarmHistoryItems"]]
        assert summaries[:3] == [
            'Alarm "alarmed-5xx" created',
            "Alarm updated from INSUFFICIENT_DATA to ALARM",
            "Recorded action arn:aws:sns:us-east-1:123456789012:rollback "
            "(splitserve executes no alarm actions)",
        ]
        assert summaries[-1].endswith(" to OK")
        assert "alarm alarmed-5xx: INSUFFICIENT_DATA -> ALARM" in gateway.log()


def cloudwatch_total(cw: Any, endpoint: str, metric: str, statistic: str, now: datetime) -> float:
    """One statistic of a metric of Variant1 over the last ten minutes, in one period."""
    points = cw.get_metric_statistics(
        Namespace="AWS/SageMaker", MetricName=metric, Dimensions=dimensions(endpoint, "Variant1"),
        StartTime=now - timedelta(minutes=10), EndTime=now, Period=600, Statistics=[statistic],
    )["Datapoints"]  # fmt: skip
    return float(sum(point[statistic] for point in points))


def test_every_metric_agrees_with_prometheus(
    gateway: Gateway, sagemaker: Any, runtime: Any, models: Any
) -> None:
    endpoint = "cw-agree"
    create_two_variant_endpoint(sagemaker, endpoint, weights=(1.0, 0.0))
    before = scrape(gateway)
    invoke_many(runtime, endpoint, csv_rows(models["v1"].rows[:3]), 12)
    for _ in range(3):  # the model refuses what it cannot parse: a 4xx of the model
        with pytest.raises(ClientError):
            runtime.invoke_endpoint(EndpointName=endpoint, Body=b"x,y", ContentType="text/csv")
    after = scrape(gateway)
    cw = gateway.client("cloudwatch")
    now = datetime.now(UTC) + timedelta(minutes=1)
    labels = {"endpoint_name": endpoint, "variant_name": "Variant1"}

    def delta(name: str) -> float:
        return (value(after, name, **labels) or 0.0) - (value(before, name, **labels) or 0.0)

    exact = [
        ("Invocations", "Sum", "splitserve_invocations_total"),
        ("Invocation4XXErrors", "Sum", "splitserve_invocation_4xx_errors_total"),
        ("Invocation5XXErrors", "Sum", "splitserve_invocation_5xx_errors_total"),
        ("InvocationModelErrors", "Sum", "splitserve_invocation_model_errors_total"),
        ("ModelLatency", "SampleCount", "splitserve_model_latency_seconds_count"),
        ("OverheadLatency", "SampleCount", "splitserve_overhead_latency_seconds_count"),
    ]
    for metric, statistic, series in exact:
        assert cloudwatch_total(cw, endpoint, metric, statistic, now) == delta(series), metric
    assert delta("splitserve_invocation_4xx_errors_total") == 3
    for metric, series in (
        ("InvocationsPerInstance", "splitserve_invocations_per_instance_total"),
        ("ModelLatency", "splitserve_model_latency_seconds_sum"),
        ("OverheadLatency", "splitserve_overhead_latency_seconds_sum"),
    ):
        scale = 1.0 if metric == "InvocationsPerInstance" else 1e6  # seconds -> microseconds
        assert cloudwatch_total(cw, endpoint, metric, "Sum", now) == pytest.approx(
            delta(series) * scale, rel=1e-9
        ), metric
    # CPU and memory are sampled every 10 s.
    deadline = time.monotonic() + 30
    while True:
        points = cw.get_metric_statistics(
            Namespace="/aws/sagemaker/Endpoints", MetricName="MemoryUtilization",
            Dimensions=dimensions(endpoint, "Variant1"), StartTime=now - timedelta(minutes=10),
            EndTime=now, Period=60, Statistics=["Maximum"],
        )["Datapoints"]  # fmt: skip
        if points:
            break
        assert time.monotonic() < deadline, "no MemoryUtilization datapoint within 30 s"
        time.sleep(1)
    assert all(0 < point["Maximum"] <= 100 and point["Unit"] == "Percent" for point in points)


def test_figures_and_alarms_outlive_a_restart(
    tmp_path: Path, model_store: Path, models: Any
) -> None:
    state = tmp_path / "state"
    endpoint = "cw-restart"
    with running_gateway(state, model_store) as first:
        create_two_variant_endpoint(first.client("sagemaker"), endpoint, weights=(1.0, 0.0))
        runtime = first.client("sagemaker-runtime")
        sent = invoke_many(runtime, endpoint, csv_rows(models["v1"].rows[:1]), 9)
        first.client("cloudwatch").put_metric_alarm(
            AlarmName="kept", Namespace="AWS/SageMaker", MetricName="Invocations",
            Dimensions=dimensions(endpoint, "Variant1"), Statistic="Sum", Period=60,
            EvaluationPeriods=1, Threshold=1.0, ComparisonOperator="GreaterThanThreshold",
        )  # fmt: skip
    # Stopped with SIGTERM: the last figures were written on the way out.
    with running_gateway(state, model_store) as second:
        cw = second.client("cloudwatch")
        now = datetime.now(UTC) + timedelta(minutes=1)
        assert cloudwatch_total(cw, endpoint, "Invocations", "Sum", now) == sent["Variant1"] == 9
        assert [alarm["AlarmName"] for alarm in cw.describe_alarms()["MetricAlarms"]] == ["kept"]
