"""Data capture end to end: DataCaptureConfig through boto3, JSON Lines files after a clean stop."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.helpers import FAST_WAIT, create_model, csv_rows
from tests.support.gateway import Gateway
from tests.support.models import TrainedModel

pytestmark = pytest.mark.e2e

DESTINATION = "s3://capture-bucket/prefix"


def capture_config(destination: str = DESTINATION) -> dict[str, Any]:
    """What the SageMaker SDK's DataCaptureConfig sends, at 100 %."""
    return {
        "EnableCapture": True,
        "InitialSamplingPercentage": 100,
        "DestinationS3Uri": destination,
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {
            "CsvContentTypes": ["text/csv"],
            "JsonContentTypes": ["application/json"],
        },
    }


def one_variant(model: str) -> list[dict[str, Any]]:
    return [
        {
            "VariantName": "AllTraffic",
            "ModelName": model,
            "InitialInstanceCount": 1,
            "InstanceType": "ml.t2.medium",
        }
    ]


def test_capture_files_after_sigterm(
    gateway: Gateway, sagemaker: Any, runtime: Any, models: dict[str, TrainedModel]
) -> None:
    create_model(sagemaker, "captured-m", "v1")
    sagemaker.create_endpoint_config(
        EndpointConfigName="captured-cfg",
        ProductionVariants=one_variant("captured-m"),
        DataCaptureConfig=capture_config(),
    )
    sagemaker.create_endpoint(EndpointName="captured", EndpointConfigName="captured-cfg")
    sagemaker.get_waiter("endpoint_in_service").wait(
        EndpointName="captured", WaiterConfig=FAST_WAIT
    )
    assert sagemaker.describe_endpoint(EndpointName="captured")["DataCaptureConfig"] == {
        "EnableCapture": True,
        "CaptureStatus": "Started",
        "CurrentSamplingPercentage": 100,
        "DestinationS3Uri": DESTINATION,
    }

    sent: dict[str | None, tuple[bytes, bytes]] = {}
    for index, row in enumerate(models["v1"].rows[:5]):
        body = csv_rows(row[None, :])
        response = runtime.invoke_endpoint(
            EndpointName="captured",
            Body=body,
            ContentType="text/csv",
            Accept="application/json",
            InferenceId=f"request-{index}",
        )
        sent[f"request-{index}"] = (body, response["Body"].read())
    body = csv_rows(models["v1"].rows[5:6])
    response = runtime.invoke_endpoint(EndpointName="captured", Body=body, ContentType="text/csv")
    sent[None] = (body, response["Body"].read())
    # A model error is not captured: there is no model output to monitor.
    with pytest.raises(runtime.exceptions.ModelError):
        runtime.invoke_endpoint(EndpointName="captured", Body=b"1,2\n", ContentType="text/csv")

    assert gateway.stop() == 0
    variant_dir = gateway.model_store / "capture-bucket" / "prefix" / "captured" / "AllTraffic"
    files = sorted(
        variant_dir.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]/[0-9][0-9]/*.jsonl")
    )
    assert files, f"no capture files under {variant_dir}:\n{gateway.log()}"
    records = []
    for path in files:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            hour = time.strptime(record["eventMetadata"]["inferenceTime"], "%Y-%m-%dT%H:%M:%SZ")
            assert path.parent.relative_to(variant_dir).as_posix() == time.strftime(
                "%Y/%m/%d/%H", hour
            )
            records.append(record)
    assert len(records) == len(sent)
    for record in records:
        assert record["eventVersion"] == "0"
        body, answer = sent[record["eventMetadata"].get("inferenceId")]
        assert record["captureData"]["endpointInput"] == {
            "observedContentType": "text/csv",
            "mode": "INPUT",
            "data": body.decode(),
            "encoding": "CSV",
        }
        output = record["captureData"]["endpointOutput"]
        assert output["mode"] == "OUTPUT"
        assert output["data"] == answer.decode()
        if record["eventMetadata"].get("inferenceId") is not None:
            assert output["observedContentType"] == "application/json"
            assert output["encoding"] == "JSON"


def test_capture_destination_must_stay_in_the_model_store(
    gateway: Gateway, sagemaker: Any, tmp_path: Path
) -> None:
    create_model(sagemaker, "escape-m", "v1")
    outside = tmp_path / "outside"
    outside.mkdir()
    link = gateway.model_store / "capture-escape-link"
    link.symlink_to(outside, target_is_directory=True)
    try:
        for destination, reason in (
            ("s3://capture-bucket/../../outside", "'.' or '..'"),
            ("s3://capture-escape-link/prefix", "inside the model store"),
        ):
            with pytest.raises(ClientError) as refused:
                sagemaker.create_endpoint_config(
                    EndpointConfigName="escape-cfg",
                    ProductionVariants=one_variant("escape-m"),
                    DataCaptureConfig=capture_config(destination),
                )
            error = refused.value.response["Error"]
            assert error["Code"] == "ValidationException"
            assert "dataCaptureConfig.destinationS3Uri" in error["Message"]
            assert reason in error["Message"]
    finally:
        link.unlink()
    assert list(outside.iterdir()) == []
