"""A shadow test (inference experiment) end to end through boto3: created on a live endpoint, it
waits for its scheduled start; started, the endpoint copies every request to the shadow while
callers only ever get production's answers; resized to 0 %, the copies stop; stopped with
Promote, the production variant answers with the former shadow's model. Requests sent all along
never fail. A running test survives a restart of the gateway, and the kill -9 of the controller
replica under `serve --processes 2`."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.helpers import FAST_WAIT, create_model, create_two_variant_endpoint, csv_rows
from tests.e2e.test_replicas import client as replica_client
from tests.e2e.test_replicas import replicas, wait_for
from tests.e2e.test_shadow import captured, metric, variant, wait_until
from tests.support.gateway import Gateway, running_gateway
from tests.support.models import ROLE, TrainedModel

pytestmark = pytest.mark.e2e

ENDPOINT = "experimented"
DESTINATION = "s3://capture-bucket/shadow"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[Gateway]:
    """One gateway for the module."""
    root = tmp_path_factory.mktemp("experiments")
    with running_gateway(root / "state", model_store) as running:
        yield running


def model_variant(name: str, model: str) -> dict[str, Any]:
    return {
        "ModelName": model,
        "VariantName": name,
        "InfrastructureConfig": {
            "InfrastructureType": "RealTimeInference",
            "RealTimeInferenceConfig": {"InstanceType": "ml.t2.medium", "InstanceCount": 1},
        },
    }


def sampling(percentage: int) -> dict[str, Any]:
    return {
        "SourceModelVariantName": "Prod",
        "ShadowModelVariants": [
            {"ShadowModelVariantName": "Cand", "SamplingPercentage": percentage}
        ],
    }


class Caller:
    """Invokes the endpoint without pause from a thread; keeps every answer and failure."""

    def __init__(self, runtime: Any, body: bytes) -> None:
        self.answers: list[tuple[str, float]] = []
        self.failures: list[str] = []
        self._runtime = runtime
        self._body = body
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Caller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self._runtime.invoke_endpoint(
                    EndpointName=ENDPOINT, Body=self._body, ContentType="text/csv"
                )
                answer = float(response["Body"].read().decode().strip())
                self.answers.append((str(response["InvokedProductionVariant"]), answer))
            except ClientError as error:
                self.failures.append(str(error))


def wait_for_status(sagemaker: Any, name: str, status: str) -> dict[str, Any]:
    described: dict[str, Any] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        described = sagemaker.describe_inference_experiment(Name=name)
        if described["Status"] == status:
            return described
        assert described["Status"] not in ("Cancelled", "Completed"), described
        time.sleep(0.2)
    raise AssertionError(f"still {described.get('Status')}: {described}")


def test_a_shadow_test_started_resized_and_promoted(
    gateway: Gateway, models: dict[str, TrainedModel]
) -> None:
    sagemaker = gateway.client("sagemaker")
    runtime = gateway.client("sagemaker-runtime")
    create_model(sagemaker, "exp-prod", "v1")
    create_model(sagemaker, "exp-cand", "v2")
    sagemaker.create_endpoint_config(
        EndpointConfigName=f"{ENDPOINT}-cfg", ProductionVariants=[variant("Prod", "exp-prod")]
    )
    sagemaker.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName=f"{ENDPOINT}-cfg")
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName=ENDPOINT, WaiterConfig=FAST_WAIT)

    rows = models["v1"].rows[:1]
    body = csv_rows(rows)
    production = float(models["v1"].predict(rows)[0])
    candidate = float(models["v2"].predict(rows)[0])
    assert production != pytest.approx(candidate, rel=1e-5)

    now = datetime.now(UTC)
    arn = sagemaker.create_inference_experiment(
        Name="cand-shadow",
        Type="ShadowMode",
        RoleArn=ROLE,
        EndpointName=ENDPOINT,
        Schedule={"StartTime": now + timedelta(hours=1), "EndTime": now + timedelta(days=2)},
        ModelVariants=[model_variant("Prod", "exp-prod"), model_variant("Cand", "exp-cand")],
        ShadowModeConfig=sampling(100),
        DataStorageConfig={"Destination": DESTINATION},
    )["InferenceExperimentArn"]
    assert arn.endswith(":inference-experiment/cand-shadow")
    # Its start is an hour away: it waits, and the endpoint is as it was.
    time.sleep(1.5)  # the runner looks every second: give it a look
    assert sagemaker.describe_inference_experiment(Name="cand-shadow")["Status"] == "Created"
    assert "ShadowProductionVariants" not in sagemaker.describe_endpoint(EndpointName=ENDPOINT)
    listed = sagemaker.list_inference_experiments(StatusEquals="Created")["InferenceExperiments"]
    assert [item["Name"] for item in listed] == ["cand-shadow"]

    labels = {"endpoint_name": ENDPOINT, "variant_name": "Cand"}
    with Caller(runtime, body) as caller:
        sagemaker.start_inference_experiment(Name="cand-shadow")
        described = wait_for_status(sagemaker, "cand-shadow", "Running")
        assert [v["Status"] for v in described["ModelVariants"]] == ["InService", "InService"]
        endpoint = sagemaker.describe_endpoint(EndpointName=ENDPOINT)
        assert [v["VariantName"] for v in endpoint["ShadowProductionVariants"]] == ["Cand"]

        # 100 %: the shadow gets a copy of every request.
        copies = metric(gateway, "splitserve_shadow_copies_total", **labels)
        for _ in range(20):
            runtime.invoke_endpoint(EndpointName=ENDPOINT, Body=body, ContentType="text/csv")[
                "Body"
            ].read()
        assert metric(gateway, "splitserve_shadow_copies_total", **labels) >= copies + 20

        # Resized to 0 %: the copies stop, without a redeployment.
        config_name = endpoint["EndpointConfigName"]
        sagemaker.update_inference_experiment(Name="cand-shadow", ShadowModeConfig=sampling(0))
        wait_for_status(sagemaker, "cand-shadow", "Running")
        endpoint = sagemaker.describe_endpoint(EndpointName=ENDPOINT)
        assert endpoint["EndpointConfigName"] == config_name
        assert endpoint["ShadowProductionVariants"][0]["CurrentWeight"] == 0.0
        copies = metric(gateway, "splitserve_shadow_copies_total", **labels)
        for _ in range(20):
            runtime.invoke_endpoint(EndpointName=ENDPOINT, Body=body, ContentType="text/csv")[
                "Body"
            ].read()
        # The caller's thread sends too: none of its requests is copied either (a copy is
        # counted when the request is answered).
        assert metric(gateway, "splitserve_shadow_copies_total", **labels) == copies
        before_stop = len(caller.answers)

        # Promote: production answers with the shadow's model from then on.
        sagemaker.stop_inference_experiment(
            Name="cand-shadow",
            ModelVariantActions={"Prod": "Remove", "Cand": "Promote"},
            Reason="the candidate is better",
        )
        described = wait_for_status(sagemaker, "cand-shadow", "Completed")
        assert described["StatusReason"] == "the candidate is better"
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName=ENDPOINT, WaiterConfig=FAST_WAIT
        )
        time.sleep(0.5)  # a few more requests on the promoted model
    assert caller.failures == []
    assert before_stop > 0
    # Callers never saw a shadow answer: production's variant and model until the promotion,
    # then production's variant with the promoted model.
    assert {variant_name for variant_name, _ in caller.answers} == {"Prod"}
    for _, answer in caller.answers[:before_stop]:
        assert answer == pytest.approx(production, rel=1e-5)
    for _, answer in caller.answers[before_stop:]:
        assert answer == pytest.approx(production, rel=1e-5) or answer == pytest.approx(
            candidate, rel=1e-5
        )
    endpoint = sagemaker.describe_endpoint(EndpointName=ENDPOINT)
    assert [v["VariantName"] for v in endpoint["ProductionVariants"]] == ["Prod"]
    assert "ShadowProductionVariants" not in endpoint
    response = runtime.invoke_endpoint(EndpointName=ENDPOINT, Body=body, ContentType="text/csv")
    assert response["InvokedProductionVariant"] == "Prod"
    assert float(response["Body"].read().decode().strip()) == pytest.approx(candidate, rel=1e-5)
    # DataStorageConfig: the experiment captured both variants under its destination.
    assert wait_until(lambda: captured(gateway, ENDPOINT, "Cand"))
    assert wait_until(lambda: captured(gateway, ENDPOINT, "Prod"))

    # Over, it cannot start again (ConflictException), but it can be deleted; the endpoint stays.
    with pytest.raises(ClientError) as conflict:
        sagemaker.start_inference_experiment(Name="cand-shadow")
    assert conflict.value.response["Error"]["Code"] == "ConflictException"
    sagemaker.delete_inference_experiment(Name="cand-shadow")
    with pytest.raises(ClientError) as missing:
        sagemaker.describe_inference_experiment(Name="cand-shadow")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFound"
    assert sagemaker.describe_endpoint(EndpointName=ENDPOINT)["EndpointStatus"] == "InService"


def test_a_running_shadow_test_survives_a_restart(
    tmp_path: Path, model_store: Path, models: dict[str, TrainedModel]
) -> None:
    state = tmp_path / "state"
    with running_gateway(state, model_store) as gateway:
        sagemaker = gateway.client("sagemaker")
        create_model(sagemaker, "exp-prod", "v1")
        create_model(sagemaker, "exp-cand", "v2")
        sagemaker.create_endpoint_config(
            EndpointConfigName=f"{ENDPOINT}-cfg", ProductionVariants=[variant("Prod", "exp-prod")]
        )
        sagemaker.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName=f"{ENDPOINT}-cfg")
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName=ENDPOINT, WaiterConfig=FAST_WAIT
        )
        sagemaker.create_inference_experiment(  # no Schedule: it starts at once
            Name="survivor",
            Type="ShadowMode",
            RoleArn=ROLE,
            EndpointName=ENDPOINT,
            ModelVariants=[model_variant("Prod", "exp-prod"), model_variant("Cand", "exp-cand")],
            ShadowModeConfig=sampling(100),
        )
        wait_for_status(sagemaker, "survivor", "Running")
    with running_gateway(state, model_store) as gateway:
        sagemaker = gateway.client("sagemaker")
        runtime = gateway.client("sagemaker-runtime")
        assert sagemaker.describe_inference_experiment(Name="survivor")["Status"] == "Running"
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName=ENDPOINT, WaiterConfig=FAST_WAIT
        )
        body = csv_rows(models["v1"].rows[:1])
        labels = {"endpoint_name": ENDPOINT, "variant_name": "Cand"}
        response = runtime.invoke_endpoint(EndpointName=ENDPOINT, Body=body, ContentType="text/csv")
        response["Body"].read()
        assert response["InvokedProductionVariant"] == "Prod"
        assert metric(gateway, "splitserve_shadow_copies_total", **labels) == 1
        sagemaker.stop_inference_experiment(
            Name="survivor", ModelVariantActions={"Cand": "Remove"}, DesiredState="Cancelled"
        )
        wait_for_status(sagemaker, "survivor", "Cancelled")
        assert "ShadowProductionVariants" not in sagemaker.describe_endpoint(EndpointName=ENDPOINT)


def test_a_shadow_test_carries_on_under_a_new_controller(tmp_path: Path, model_store: Path) -> None:
    """`serve --processes 2`: the controller replica is killed while the test runs; the other
    replica takes control, and the test goes on there (Running, resized, stopped)."""
    with running_gateway(tmp_path / "state", model_store, "--processes", "2") as gateway:
        wait_for(lambda: len(replicas(gateway)) == 2, 30, "two replicas listed")
        create_two_variant_endpoint(gateway.client("sagemaker"), "ab")
        sagemaker = gateway.client("sagemaker")
        sagemaker.create_inference_experiment(
            Name="handed-over",
            Type="ShadowMode",
            RoleArn=ROLE,
            EndpointName="ab",
            ModelVariants=[model_variant("Variant1", "ab-m1"), model_variant("Cand", "ab-m2")],
            ShadowModeConfig={
                "SourceModelVariantName": "Variant1",
                "ShadowModelVariants": [
                    {"ShadowModelVariantName": "Cand", "SamplingPercentage": 100}
                ],
            },
        )
        wait_for_status(sagemaker, "handed-over", "Running")
        controller = next(r for r in replicas(gateway) if r.controller)
        survivor = next(r for r in replicas(gateway) if not r.controller)
        os.kill(controller.pid, signal.SIGKILL)
        wait_for(
            lambda: any(r.controller and r.pid != controller.pid for r in replicas(gateway)),
            30,
            "another replica controlling",
        )
        sagemaker = replica_client("sagemaker", survivor.url)
        assert sagemaker.describe_inference_experiment(Name="handed-over")["Status"] == "Running"
        sagemaker.update_inference_experiment(
            Name="handed-over",
            ShadowModeConfig={
                "SourceModelVariantName": "Variant1",
                "ShadowModelVariants": [
                    {"ShadowModelVariantName": "Cand", "SamplingPercentage": 0}
                ],
            },
        )
        wait_for_status(sagemaker, "handed-over", "Running")
        (shadow,) = sagemaker.describe_endpoint(EndpointName="ab")["ShadowProductionVariants"]
        assert shadow["DesiredWeight"] == 0.0
        sagemaker.stop_inference_experiment(
            Name="handed-over", ModelVariantActions={"Cand": "Remove"}
        )
        wait_for_status(sagemaker, "handed-over", "Completed")
        endpoint = sagemaker.describe_endpoint(EndpointName="ab")
        assert "ShadowProductionVariants" not in endpoint
        assert [v["VariantName"] for v in endpoint["ProductionVariants"]] == [
            "Variant1",
            "Variant2",
        ]
