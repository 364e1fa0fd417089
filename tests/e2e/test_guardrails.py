"""Deployment guardrails end to end with boto3: a CANARY UpdateEndpoint that completes with every
replica routing each step, a LINEAR one rolled back by an alarm set to ALARM with SetAlarmState,
and the splitserve:ramp tag's A/B ramp; not one request fails in any, under a client loop
invoking throughout."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.helpers import FAST_WAIT, create_model, create_two_variant_endpoint, csv_rows
from tests.e2e.test_replicas import client, replicas, wait_for
from tests.support.gateway import Gateway, running_gateway

pytestmark = pytest.mark.e2e

BODY = csv_rows(np.zeros((1, 13), dtype=np.float32))
_CLIENT_THREADS = 3


def one_variant_config(sagemaker: Any, name: str, model: str, count: int = 1) -> None:
    """A configuration with one variant, AllTraffic, of `model` on `count` instances."""
    sagemaker.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": model,
                "InitialInstanceCount": count,
                "InstanceType": "ml.t2.medium",
            }
        ],
    )


def blue_endpoint(sagemaker: Any, endpoint: str, count: int = 1) -> None:
    """Models `<endpoint>-blue` (v1) and `<endpoint>-green` (v2), their configurations (with
    `count` instances), and the endpoint InService on the blue one."""
    create_model(sagemaker, f"{endpoint}-blue", "v1")
    create_model(sagemaker, f"{endpoint}-green", "v2")
    one_variant_config(sagemaker, f"{endpoint}-blue", f"{endpoint}-blue", count)
    one_variant_config(sagemaker, f"{endpoint}-green", f"{endpoint}-green", count)
    sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-blue")
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=FAST_WAIT)


@contextmanager
def invoking(gateway: Gateway, endpoint: str) -> Iterator[tuple[list[BaseException], Counter[str]]]:
    """Client threads invoking `endpoint` until the block ends: (failures, answers by body)."""
    stop = threading.Event()
    failures: list[BaseException] = []
    answers: Counter[str] = Counter()
    lock = threading.Lock()

    def send() -> None:
        runtime = gateway.client("sagemaker-runtime")
        while not stop.is_set():
            try:
                response = runtime.invoke_endpoint(
                    EndpointName=endpoint, Body=BODY, ContentType="text/csv"
                )
                answer = response["Body"].read().decode()
            except Exception as error:
                with lock:
                    failures.append(error)
            else:
                assert response["InvokedProductionVariant"] == "AllTraffic"
                with lock:
                    answers[answer] += 1

    threads = [threading.Thread(target=send) for _ in range(_CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    try:
        yield failures, answers
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def answer_of(url: str, endpoint: str) -> str:
    """The body one invocation of `endpoint` at `url` answers."""
    response = client("sagemaker-runtime", url).invoke_endpoint(
        EndpointName=endpoint, Body=BODY, ContentType="text/csv"
    )
    return str(response["Body"].read().decode())


def pending_status(sagemaker: Any, endpoint: str) -> str | None:
    """The green variant's VariantStatus in PendingDeploymentSummary, if any."""
    pending = sagemaker.describe_endpoint(EndpointName=endpoint).get("PendingDeploymentSummary")
    if pending is None:
        return None
    statuses = pending["ProductionVariants"][0].get("VariantStatus") or []
    return str(statuses[0]["Status"]) if statuses else None


@pytest.fixture
def two_replicas(tmp_path: Path, model_store: Path) -> Iterator[Gateway]:
    """`serve --processes 2`, both replicas listed."""
    with running_gateway(tmp_path / "state", model_store, "--processes", "2") as gateway:
        wait_for(lambda: len(replicas(gateway)) == 2, 30, "two replicas listed")
        yield gateway


def test_canary_update_completes_and_every_replica_routes_the_canary_step(
    two_replicas: Gateway,
) -> None:
    sagemaker = two_replicas.client("sagemaker")
    blue_endpoint(sagemaker, "canary")
    blue_answer = answer_of(two_replicas.url, "canary")
    deployment_config = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {
                "Type": "CANARY",
                "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 50},
                "WaitIntervalInSeconds": 8,
            },
            "TerminationWaitInSeconds": 1,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "canary-errors"}]},
    }
    with invoking(two_replicas, "canary") as (failures, answers):
        sagemaker.update_endpoint(
            EndpointName="canary",
            EndpointConfigName="canary-green",
            DeploymentConfig=deployment_config,
        )
        wait_for(lambda: pending_status(sagemaker, "canary") == "Baking", 60, "the canary bakes")
        baking = sagemaker.describe_endpoint(EndpointName="canary")
        assert baking["EndpointStatus"] == "Updating"
        assert baking["EndpointConfigName"] == "canary-blue"
        green = baking["PendingDeploymentSummary"]["ProductionVariants"][0]
        assert green["CurrentWeight"] == 0.5
        assert green["VariantStatus"][0]["StatusMessage"].startswith("Baking for 8 seconds")
        # Each replica routes the canary step: both fleets answer there.
        for replica in replicas(two_replicas):
            seen = Counter(answer_of(replica.url, "canary") for _ in range(30))
            assert len(seen) == 2, (replica, seen)
            assert blue_answer in seen
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName="canary", WaiterConfig=FAST_WAIT
        )
        print(f"canary: {sum(answers.values())} answered during the update, {len(failures)} failed")
        answers.clear()
        time.sleep(0.5)
    assert failures == []
    assert answers  # the loop went on after the update, on green only
    assert blue_answer not in answers
    described = sagemaker.describe_endpoint(EndpointName="canary")
    assert described["EndpointConfigName"] == "canary-green"
    assert "FailureReason" not in described
    assert "PendingDeploymentSummary" not in described
    assert described["LastDeploymentConfig"] == deployment_config
    for replica in replicas(two_replicas):
        assert answer_of(replica.url, "canary") != blue_answer


def test_linear_update_rolled_back_by_an_alarm_fails_no_request(
    gateway: Gateway, sagemaker: Any
) -> None:
    blue_endpoint(sagemaker, "linear")
    blue_answer = answer_of(gateway.url, "linear")
    cloudwatch = gateway.client("cloudwatch")
    cloudwatch.put_metric_alarm(
        AlarmName="linear-5xx", Namespace="AWS/SageMaker", MetricName="Invocation5XXErrors",
        Dimensions=[
            {"Name": "EndpointName", "Value": "linear"},
            {"Name": "VariantName", "Value": "AllTraffic"},
        ],
        Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1.0,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
    )  # fmt: skip
    deployment_config = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {
                "Type": "LINEAR",
                "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 50},
                "WaitIntervalInSeconds": 600,
            },
            "MaximumExecutionTimeoutInSeconds": 1800,
        },
        "AutoRollbackConfiguration": {
            "Alarms": [{"AlarmName": "never-created"}, {"AlarmName": "linear-5xx"}]
        },
    }
    with invoking(gateway, "linear") as (failures, answers):
        sagemaker.update_endpoint(
            EndpointName="linear",
            EndpointConfigName="linear-green",
            DeploymentConfig=deployment_config,
        )
        wait_for(lambda: pending_status(sagemaker, "linear") == "Baking", 60, "the first step")
        wait_for(lambda: len(answers) == 2, 30, "both fleets answering")
        cloudwatch.set_alarm_state(
            AlarmName="linear-5xx", StateValue="ALARM", StateReason="the test says so"
        )
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName="linear", WaiterConfig=FAST_WAIT
        )
        print(f"linear: {sum(answers.values())} answered during the update, {len(failures)} failed")
        answers.clear()
        time.sleep(0.5)
    assert failures == []
    assert set(answers) == {blue_answer}
    described = sagemaker.describe_endpoint(EndpointName="linear")
    assert described["EndpointConfigName"] == "linear-blue"
    assert "PendingDeploymentSummary" not in described
    assert described["LastDeploymentConfig"] == deployment_config
    assert described["FailureReason"].startswith(
        'Update rolled back: the alarm(s) "linear-5xx" of AutoRollbackConfiguration'
    )
    assert [v["VariantName"] for v in described["ProductionVariants"]] == ["AllTraffic"]
    assert answer_of(gateway.url, "linear") == blue_answer


def test_a_ramp_moves_a_variant_to_its_target_without_a_failed_request(
    gateway: Gateway, sagemaker: Any
) -> None:
    create_two_variant_endpoint(sagemaker, "ramped")
    arn = sagemaker.describe_endpoint(EndpointName="ramped")["EndpointArn"]
    stop = threading.Event()
    failures: list[BaseException] = []
    variants: Counter[str] = Counter()

    def send() -> None:
        runtime = gateway.client("sagemaker-runtime")
        while not stop.is_set():
            try:
                response = runtime.invoke_endpoint(
                    EndpointName="ramped", Body=BODY, ContentType="text/csv"
                )
                response["Body"].read()
            except Exception as error:
                failures.append(error)
            else:
                variants[response["InvokedProductionVariant"]] += 1

    threads = [threading.Thread(target=send) for _ in range(_CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    try:
        sagemaker.add_tags(
            ResourceArn=arn, Tags=[{"Key": "splitserve:ramp", "Value": "Variant2 100 25 1"}]
        )
        assert sagemaker.describe_endpoint(EndpointName="ramped")["EndpointStatus"] == "Updating"
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName="ramped", WaiterConfig=FAST_WAIT
        )
        print(f"ramp: {sum(variants.values())} answered during the ramp, {len(failures)} failed")
        variants.clear()
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert failures == []
    assert set(variants) == {"Variant2"}
    described = sagemaker.describe_endpoint(EndpointName="ramped")
    assert [v["CurrentWeight"] for v in described["ProductionVariants"]] == [0.0, 2.0]
    history = gateway_weights(gateway, "ramped")
    assert [change["Cause"] for change in history][-2:] == ["Ramp", "Ramp"]


def gateway_weights(gateway: Gateway, endpoint: str) -> list[dict[str, Any]]:
    """The endpoint's weight history (GET /splitserve/endpoints/<name>/weights)."""
    with urllib.request.urlopen(f"{gateway.url}/splitserve/endpoints/{endpoint}/weights") as answer:
        changes: list[dict[str, Any]] = json.load(answer)["WeightChanges"]
    return changes


def test_a_rolling_update_replaces_the_fleet_batch_by_batch_without_a_failed_request(
    gateway: Gateway, sagemaker: Any
) -> None:
    blue_endpoint(sagemaker, "rolling", count=2)
    blue_answer = answer_of(gateway.url, "rolling")
    deployment_config = {
        "RollingUpdatePolicy": {
            "MaximumBatchSize": {"Type": "CAPACITY_PERCENT", "Value": 50},
            "WaitIntervalInSeconds": 5,
        }
    }
    with invoking(gateway, "rolling") as (failures, answers):
        sagemaker.update_endpoint(
            EndpointName="rolling",
            EndpointConfigName="rolling-green",
            DeploymentConfig=deployment_config,
        )
        wait_for(lambda: pending_status(sagemaker, "rolling") == "Baking", 60, "the first batch")
        baking = sagemaker.describe_endpoint(EndpointName="rolling")
        # One new instance took half the requests; one old instance was terminated.
        assert baking["ProductionVariants"][0]["CurrentInstanceCount"] == 1
        pending = baking["PendingDeploymentSummary"]["ProductionVariants"][0]
        assert pending["CurrentInstanceCount"] == 1
        assert pending["CurrentWeight"] == 0.5
        wait_for(lambda: len(answers) == 2, 30, "both fleets answering")
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName="rolling", WaiterConfig=FAST_WAIT
        )
        print(
            f"rolling: {sum(answers.values())} answered during the update, {len(failures)} failed"
        )
        answers.clear()
        time.sleep(0.5)
    assert failures == []
    assert answers
    assert blue_answer not in answers
    described = sagemaker.describe_endpoint(EndpointName="rolling")
    assert described["EndpointConfigName"] == "rolling-green"
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    assert "FailureReason" not in described
    assert described["LastDeploymentConfig"] == deployment_config


def test_a_rolling_update_rolled_back_by_an_alarm_brings_the_old_fleet_back_whole(
    gateway: Gateway, sagemaker: Any
) -> None:
    blue_endpoint(sagemaker, "unrolled", count=2)
    blue_answer = answer_of(gateway.url, "unrolled")
    cloudwatch = gateway.client("cloudwatch")
    cloudwatch.put_metric_alarm(
        AlarmName="unrolled-latency", Namespace="AWS/SageMaker", MetricName="ModelLatency",
        Dimensions=[
            {"Name": "EndpointName", "Value": "unrolled"},
            {"Name": "VariantName", "Value": "AllTraffic"},
        ],
        Statistic="Average", Period=60, EvaluationPeriods=1, Threshold=10_000_000.0,
        ComparisonOperator="GreaterThanThreshold",
    )  # fmt: skip
    with invoking(gateway, "unrolled") as (failures, answers):
        sagemaker.update_endpoint(
            EndpointName="unrolled",
            EndpointConfigName="unrolled-green",
            DeploymentConfig={
                "RollingUpdatePolicy": {
                    "MaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 1},
                    "WaitIntervalInSeconds": 600,
                },
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "unrolled-latency"}]},
            },
        )
        wait_for(lambda: pending_status(sagemaker, "unrolled") == "Baking", 60, "the first batch")
        wait_for(lambda: len(answers) == 2, 30, "both fleets answering")
        cloudwatch.set_alarm_state(
            AlarmName="unrolled-latency", StateValue="ALARM", StateReason="the test says so"
        )
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName="unrolled", WaiterConfig=FAST_WAIT
        )
        print(f"unrolled: {sum(answers.values())} answered, {len(failures)} failed")
        answers.clear()
        time.sleep(0.5)
    assert failures == []
    assert set(answers) == {blue_answer}
    described = sagemaker.describe_endpoint(EndpointName="unrolled")
    assert described["EndpointConfigName"] == "unrolled-blue"
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    assert described["FailureReason"].startswith(
        'Update rolled back: the alarm(s) "unrolled-latency"'
    )
    # boto3 drops splitserve's Instances listing: DescribeEndpoint as the wire has it.
    request = urllib.request.Request(
        gateway.url,
        data=json.dumps({"EndpointName": "unrolled"}).encode(),
        headers={
            "X-Amz-Target": "SageMaker.DescribeEndpoint",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    with urllib.request.urlopen(request) as answer:
        raw = json.load(answer)
    (variant,) = raw["ProductionVariants"]
    assert len(variant["Instances"]) == 2
    assert all("/g1/" in instance["InstanceName"] for instance in variant["Instances"])
