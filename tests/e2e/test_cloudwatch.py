"""CloudWatch's API against a real `splitserve serve`: the walkthrough's cell through current boto3
(Smithy RPC v2 CBOR), and the JSON 1.0 and query protocols through botocore's own serializers."""

from __future__ import annotations

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

from tests.e2e.helpers import create_two_variant_endpoint, csv_rows, invoke_many
from tests.e2e.test_auth import ACCESS_KEY_ID, SECRET, keys_file
from tests.e2e.test_auth import client as auth_client
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
