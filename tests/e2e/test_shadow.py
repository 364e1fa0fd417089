"""Shadow variants end to end through boto3: callers only ever see production's answers while the
capture holds both, the shadow's metrics carry its own name, and a shadow that sleeps 1 s per
request changes nothing of production's answers (counts and errors; its latency is measured in
docs/benchmarks.md, not asserted here), a shadow's weight and count change like a production
variant's, and with `serve --processes 2` every replica copies its own requests."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.helpers import FAST_WAIT, create_model, csv_rows
from tests.e2e.test_replicas import client, replicas, wait_for
from tests.support.gateway import Gateway, running_gateway
from tests.support.models import ROLE, TrainedModel

pytestmark = pytest.mark.e2e

_T = TypeVar("_T")

FAULT_SERVER = Path(__file__).resolve().parents[1] / "workers" / "fault_server.py"
SLEEPY_IMAGE = "local/sleepy-shadow:1"
DESTINATION = "s3://capture-bucket/shadow"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Any:
    """One gateway for the module, with the fault server as a bring-your-own image."""
    root = tmp_path_factory.mktemp("shadow")
    images = root / "images.toml"
    images.write_text(f'[images."{SLEEPY_IMAGE}"]\ncommand = ["{{python}}", "{FAULT_SERVER}"]\n')
    with running_gateway(root / "state", model_store, "--images", str(images)) as running:
        yield running


@pytest.fixture
def sagemaker(gateway: Gateway) -> Any:
    return gateway.client("sagemaker")


@pytest.fixture
def runtime(gateway: Gateway) -> Any:
    return gateway.client("sagemaker-runtime")


def variant(name: str, model: str, weight: float = 1.0) -> dict[str, Any]:
    return {
        "VariantName": name,
        "ModelName": model,
        "InitialInstanceCount": 1,
        "InstanceType": "ml.t2.medium",
        "InitialVariantWeight": weight,
    }


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 if none)."""
    with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def wait_until(check: Callable[[], _T], timeout: float = 30.0) -> _T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def captured(gateway: Gateway, endpoint: str, variant_name: str) -> list[dict[str, Any]]:
    root = gateway.model_store / "capture-bucket" / "shadow" / endpoint / variant_name
    records = []
    for path in sorted(root.rglob("*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line]
    return records


def test_callers_see_production_while_the_capture_holds_both(
    gateway: Gateway, sagemaker: Any, runtime: Any, models: dict[str, TrainedModel]
) -> None:
    endpoint = "shadowed"
    create_model(sagemaker, "shadow-prod", "v1")
    create_model(sagemaker, "shadow-cand", "v2")
    sagemaker.create_endpoint_config(
        EndpointConfigName=f"{endpoint}-cfg",
        ProductionVariants=[variant("Prod", "shadow-prod")],
        ShadowProductionVariants=[variant("Cand", "shadow-cand")],
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": DESTINATION,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"]},
        },
    )
    config = sagemaker.describe_endpoint_config(EndpointConfigName=f"{endpoint}-cfg")
    assert [v["VariantName"] for v in config["ShadowProductionVariants"]] == ["Cand"]
    sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-cfg")
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=FAST_WAIT)
    described = sagemaker.describe_endpoint(EndpointName=endpoint)
    assert [v["VariantName"] for v in described["ProductionVariants"]] == ["Prod"]
    (shadow,) = described["ShadowProductionVariants"]
    assert (shadow["VariantName"], shadow["CurrentWeight"], shadow["CurrentInstanceCount"]) == (
        "Cand",
        1.0,
        1,
    )

    rows = models["v1"].rows[:20]
    expected = {
        "Prod": models["v1"].predict(rows),
        "Cand": models["v2"].predict(rows),
    }
    for index, row in enumerate(rows):
        response = runtime.invoke_endpoint(
            EndpointName=endpoint,
            Body=csv_rows(row[None, :]),
            ContentType="text/csv",
            InferenceId=f"req-{index}",
        )
        assert response["InvokedProductionVariant"] == "Prod"
        answer = float(response["Body"].read().decode().strip())
        assert answer == pytest.approx(float(expected["Prod"][index]), rel=1e-5)
    # The shadow is never the caller's: naming it is refused as an unknown variant.
    with pytest.raises(ClientError) as targeted:
        runtime.invoke_endpoint(
            EndpointName=endpoint, Body=csv_rows(rows[:1]), TargetVariant="Cand"
        )
    assert targeted.value.response["Error"]["Code"] == "ValidationError"

    # Metrics: the copies count under the shadow's name, never in production's.
    labels = {"endpoint_name": endpoint}
    assert wait_until(
        lambda: metric(gateway, "splitserve_invocations_total", **labels, variant_name="Cand") == 20
    )
    assert metric(gateway, "splitserve_invocations_total", **labels, variant_name="Prod") == 20
    assert metric(gateway, "splitserve_shadow_copies_total", **labels, variant_name="Cand") == 20
    assert metric(gateway, "splitserve_shadow_dropped_total", **labels, variant_name="Cand") == 0
    cloudwatch = gateway.client("cloudwatch")
    now = datetime.now(UTC)

    def invocations(variant_name: str) -> float:
        points = cloudwatch.get_metric_statistics(
            Namespace="AWS/SageMaker",
            MetricName="Invocations",
            Dimensions=[
                {"Name": "EndpointName", "Value": endpoint},
                {"Name": "VariantName", "Value": variant_name},
            ],
            StartTime=now - timedelta(minutes=10),
            EndTime=now + timedelta(minutes=2),
            Period=60,
            Statistics=["Sum"],
        )["Datapoints"]
        return float(sum(point["Sum"] for point in points))

    assert invocations("Cand") == invocations("Prod") == 20

    # The capture holds both answers of every request, joined by eventId and InferenceId.
    production = wait_until(lambda: len(captured(gateway, endpoint, "Prod")) == 20 or None)
    assert production
    copies = wait_until(lambda: (c := captured(gateway, endpoint, "Cand")) and len(c) == 20 and c)
    assert copies
    by_event = {record["eventMetadata"]["eventId"]: record for record in copies}
    for record in captured(gateway, endpoint, "Prod"):
        metadata = record["eventMetadata"]
        twin = by_event[metadata["eventId"]]
        assert twin["eventMetadata"]["inferenceId"] == metadata["inferenceId"]
        assert twin["eventMetadata"]["splitserve"]["shadowOf"] == "Prod"
        index = int(metadata["inferenceId"].removeprefix("req-"))
        for name, answered in (("Prod", record), ("Cand", twin)):
            value = float(answered["captureData"]["endpointOutput"]["data"].strip())
            assert value == pytest.approx(float(expected[name][index]), rel=1e-5)
        assert record["captureData"]["endpointInput"] == twin["captureData"]["endpointInput"]


def test_a_shadow_that_sleeps_changes_nothing_for_callers(
    gateway: Gateway, sagemaker: Any, runtime: Any, models: dict[str, TrainedModel]
) -> None:
    endpoint = "sleepy"
    create_model(sagemaker, "sleepy-prod", "v1")
    sagemaker.create_model(
        ModelName="sleepy-shadow",
        ExecutionRoleArn=ROLE,
        PrimaryContainer={
            "Image": SLEEPY_IMAGE,
            "Environment": {"FAULT_INVOCATION_DELAY_SECONDS": "1"},
        },
    )
    sagemaker.create_endpoint_config(
        EndpointConfigName=f"{endpoint}-cfg",
        ProductionVariants=[variant("Prod", "sleepy-prod")],
        ShadowProductionVariants=[variant("Sleepy", "sleepy-shadow")],
    )
    sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-cfg")
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=FAST_WAIT)

    body = csv_rows(models["v1"].rows[:1])
    count = 400

    def invoke(_: int) -> str:
        response = runtime.invoke_endpoint(EndpointName=endpoint, Body=body, ContentType="text/csv")
        response["Body"].read()
        return str(response["InvokedProductionVariant"])

    with ThreadPoolExecutor(8) as pool:
        answered = list(pool.map(invoke, range(count)))
    assert answered == ["Prod"] * count  # every request answered, none failed
    labels = {"endpoint_name": endpoint}
    assert metric(gateway, "splitserve_invocations_total", **labels, variant_name="Prod") == count
    assert (
        metric(gateway, "splitserve_invocation_model_errors_total", **labels, variant_name="Prod")
        == 0
    )
    # Every request was offered to the shadow; what its queue could not hold was dropped.
    copies = metric(gateway, "splitserve_shadow_copies_total", **labels, variant_name="Sleepy")
    dropped = metric(gateway, "splitserve_shadow_dropped_total", **labels, variant_name="Sleepy")
    assert copies == count
    # The shadow works through its queue at its own pace, one copy a second per sender.
    sent = wait_until(
        lambda: metric(gateway, "splitserve_invocations_total", **labels, variant_name="Sleepy")
    )
    assert 1 <= sent + dropped <= count


def test_a_shadows_weight_and_instances_change_like_a_production_variants(
    gateway: Gateway, sagemaker: Any, runtime: Any, models: dict[str, TrainedModel]
) -> None:
    endpoint = "reshadowed"
    create_model(sagemaker, "reshadow-prod", "v1")
    create_model(sagemaker, "reshadow-cand", "v2")
    sagemaker.create_endpoint_config(
        EndpointConfigName=f"{endpoint}-cfg",
        ProductionVariants=[variant("Prod", "reshadow-prod")],
        ShadowProductionVariants=[variant("Cand", "reshadow-cand")],
    )
    sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-cfg")
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=FAST_WAIT)
    body = csv_rows(models["v1"].rows[:1])
    labels = {"endpoint_name": endpoint, "variant_name": "Cand"}

    def invoke(count: int) -> None:
        for _ in range(count):
            runtime.invoke_endpoint(EndpointName=endpoint, Body=body)["Body"].read()

    invoke(5)
    assert metric(gateway, "splitserve_shadow_copies_total", **labels) == 5
    # Weight 0: no more copies; then two instances and weight 1 again: every request copied.
    sagemaker.update_endpoint_weights_and_capacities(
        EndpointName=endpoint,
        DesiredWeightsAndCapacities=[{"VariantName": "Cand", "DesiredWeight": 0.0}],
    )
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=FAST_WAIT)
    invoke(5)
    assert metric(gateway, "splitserve_shadow_copies_total", **labels) == 5
    sagemaker.update_endpoint_weights_and_capacities(
        EndpointName=endpoint,
        DesiredWeightsAndCapacities=[
            {"VariantName": "Cand", "DesiredWeight": 1.0, "DesiredInstanceCount": 2}
        ],
    )
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=FAST_WAIT)
    (shadow,) = sagemaker.describe_endpoint(EndpointName=endpoint)["ShadowProductionVariants"]
    assert (shadow["CurrentWeight"], shadow["CurrentInstanceCount"]) == (1.0, 2)
    invoke(10)
    assert metric(gateway, "splitserve_shadow_copies_total", **labels) == 15
    assert wait_until(lambda: metric(gateway, "splitserve_invocations_total", **labels) == 15)
    assert metric(gateway, "splitserve_variant_instances", **labels) == 2


def own_sample(url: str, name: str, endpoint: str, variant_name: str) -> float:
    """One series of a replica's own exposition (GET /splitserve/metrics/own)."""
    with urllib.request.urlopen(f"{url}/splitserve/metrics/own", timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
        and sample.labels.get("endpoint_name") == endpoint
        and sample.labels.get("variant_name") == variant_name
    )


def test_every_replica_copies_to_the_shadows(tmp_path: Path, model_store: Path) -> None:
    with running_gateway(tmp_path / "state", model_store, "--processes", "2") as gateway:
        wait_for(lambda: len(replicas(gateway)) == 2, 30, "two replicas listed")
        sagemaker = gateway.client("sagemaker")
        create_model(sagemaker, "rep-prod", "v1")
        create_model(sagemaker, "rep-cand", "v2")
        sagemaker.create_endpoint_config(
            EndpointConfigName="rep-cfg",
            ProductionVariants=[variant("Prod", "rep-prod")],
            ShadowProductionVariants=[variant("Cand", "rep-cand")],
        )
        sagemaker.create_endpoint(EndpointName="rep", EndpointConfigName="rep-cfg")
        sagemaker.get_waiter("endpoint_in_service").wait(EndpointName="rep", WaiterConfig=FAST_WAIT)
        body = csv_rows(np.zeros((1, 13)))
        for replica in replicas(gateway):
            runtime = client("sagemaker-runtime", replica.url)

            def answered(runtime: Any = runtime) -> bool:
                try:
                    runtime.invoke_endpoint(EndpointName="rep", Body=body)["Body"].read()
                except ClientError:
                    return False  # a follower may not route the endpoint yet
                return True

            wait_for(answered, 30, f"replica {replica.replica_id} routes endpoint rep")
            for _ in range(9):
                variant_name = runtime.invoke_endpoint(EndpointName="rep", Body=body)[
                    "InvokedProductionVariant"
                ]
                assert variant_name == "Prod"
        # Each replica copied its own ten requests and counts the shadow's answers itself.
        for replica in replicas(gateway):
            assert own_sample(replica.url, "splitserve_shadow_copies_total", "rep", "Cand") == 10
            wait_for(
                lambda url=replica.url: (
                    own_sample(url, "splitserve_invocations_total", "rep", "Cand") == 10
                ),
                30,
                f"replica {replica.replica_id}'s shadow answered its copies",
            )
            assert own_sample(replica.url, "splitserve_invocations_total", "rep", "Prod") == 10
