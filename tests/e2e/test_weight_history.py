"""The weight history end to end: recorded through boto3's calls, served over HTTP and by
`splitserve weights`, kept across a restart; a targeted request is marked in its capture record."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.e2e.helpers import FAST_WAIT, create_model, csv_rows
from tests.e2e.test_capture import capture_config
from tests.support.gateway import Gateway, running_gateway
from tests.support.models import TrainedModel

pytestmark = pytest.mark.e2e


def _history(url: str, endpoint: str) -> list[tuple[str, dict[str, float]]]:
    with urllib.request.urlopen(f"{url}/splitserve/endpoints/{endpoint}/weights") as response:
        document = json.load(response)
    return [
        (change["Cause"], {w["VariantName"]: w["Weight"] for w in change["Weights"]})
        for change in document["WeightChanges"]
    ]


def test_weight_changes_are_recorded_served_and_kept(
    gateway: Gateway, sagemaker: Any, runtime: Any, models: dict[str, TrainedModel]
) -> None:
    create_model(sagemaker, "shift-m1", "v1")
    create_model(sagemaker, "shift-m2", "v2")
    sagemaker.create_endpoint_config(
        EndpointConfigName="shift-cfg",
        ProductionVariants=[
            {
                "VariantName": f"Variant{index}",
                "ModelName": f"shift-m{index}",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.t2.medium",
                "InitialVariantWeight": 1.0,
            }
            for index in (1, 2)
        ],
        DataCaptureConfig=capture_config(),
    )
    sagemaker.create_endpoint(EndpointName="shift", EndpointConfigName="shift-cfg")
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName="shift", WaiterConfig=FAST_WAIT)
    sagemaker.update_endpoint_weights_and_capacities(
        EndpointName="shift",
        DesiredWeightsAndCapacities=[
            {"VariantName": "Variant1", "DesiredWeight": 1.0},
            {"VariantName": "Variant2", "DesiredWeight": 3.0},
        ],
    )
    expected = [
        ("CreateEndpoint", {"Variant1": 1.0, "Variant2": 1.0}),
        ("UpdateEndpointWeightsAndCapacities", {"Variant1": 1.0, "Variant2": 3.0}),
    ]
    assert _history(gateway.url, "shift") == expected

    body = csv_rows(models["v1"].rows[:1])
    for index, target in enumerate((None, "Variant1")):
        extra = {} if target is None else {"TargetVariant": target}
        runtime.invoke_endpoint(
            EndpointName="shift", Body=body, ContentType="text/csv",
            InferenceId=f"r-{index}", **extra,
        )["Body"].read()  # fmt: skip

    table = subprocess.run(
        [sys.executable, "-m", "splitserve.cli", "weights", "shift", "--url", gateway.url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "UpdateEndpointWeightsAndCapacities" in table.stdout
    assert "3 (75%)" in table.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "splitserve.cli", "weights", "nope", "--url", gateway.url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 1
    assert "Could not find endpoint" in missing.stderr

    assert gateway.stop() == 0
    records = [
        json.loads(line)
        for path in (gateway.model_store / "capture-bucket" / "prefix" / "shift").rglob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    metadata = {r["eventMetadata"]["inferenceId"]: r["eventMetadata"] for r in records}
    assert "splitserve" not in metadata["r-0"]
    assert metadata["r-1"]["splitserve"] == {"targeted": True}

    # The history is in the state file: a restart keeps it and adds the weights it gives again.
    with running_gateway(gateway.state_dir, gateway.model_store) as restarted:
        restarted.client("sagemaker").get_waiter("endpoint_in_service").wait(
            EndpointName="shift", WaiterConfig=FAST_WAIT
        )
        assert _history(restarted.url, "shift") == [
            *expected,
            ("GatewayRestart", {"Variant1": 1.0, "Variant2": 3.0}),
        ]


def test_unknown_endpoint_is_a_json_error(gateway: Gateway) -> None:
    request = urllib.request.Request(f"{gateway.url}/splitserve/endpoints/nope/weights")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request)
    assert raised.value.code == 400
    body = json.load(raised.value)
    assert body["__type"] == "ValidationException"
    assert "Could not find endpoint" in body["Message"]
