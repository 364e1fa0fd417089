"""`splitserve replay` against the real gateway: production's captured requests sent again to the
other variant (TargetVariant), the comparison printed, and the refusals that need a gateway to be
known (an endpoint it does not have, a variant the endpoint does not have) exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import create_two_variant_endpoint, csv_rows
from tests.support.gateway import Gateway
from tests.support.models import TrainedModel

pytestmark = pytest.mark.e2e

ENDPOINT = "replayed"
REQUESTS = 12


def _capture_records(root: Path) -> int:
    return sum(
        len(path.read_text().splitlines()) for path in root.rglob("*.jsonl") if path.is_file()
    )


def _replay(gateway: Gateway, capture: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "splitserve.cli", "replay", "--capture", str(capture),
            "--url", gateway.url, *extra,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_replay_to_the_candidate_prints_the_comparison(
    gateway: Gateway, sagemaker: Any, runtime: Any, models: dict[str, TrainedModel]
) -> None:
    create_two_variant_endpoint(sagemaker, ENDPOINT)
    sagemaker.create_endpoint_config(
        EndpointConfigName=f"{ENDPOINT}-captured",
        ProductionVariants=sagemaker.describe_endpoint_config(EndpointConfigName=f"{ENDPOINT}-cfg")[
            "ProductionVariants"
        ],
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": "s3://capture-bucket/replay",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"]},
        },
    )
    sagemaker.update_endpoint(EndpointName=ENDPOINT, EndpointConfigName=f"{ENDPOINT}-captured")
    sagemaker.get_waiter("endpoint_in_service").wait(
        EndpointName=ENDPOINT, WaiterConfig={"Delay": 1, "MaxAttempts": 90}
    )
    rows = models["v1"].rows[:REQUESTS]
    for index, row in enumerate(rows):
        runtime.invoke_endpoint(
            EndpointName=ENDPOINT,
            Body=csv_rows(row[None, :]),
            ContentType="text/csv",
            TargetVariant="Variant1",
            InferenceId=f"replay-{index}",
        )["Body"].read()
    capture = gateway.model_store / "capture-bucket" / "replay"
    deadline = time.monotonic() + 30
    while _capture_records(capture) < REQUESTS and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _capture_records(capture) == REQUESTS, gateway.log()

    done = _replay(
        gateway, capture, "--endpoint", ENDPOINT, "--variant", "Variant2", "--rate", "50",
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["replay"]["sent"] == REQUESTS
    assert document["replay"]["answered"] == REQUESTS
    assert document["replay"]["failed"] == {}
    (comparison,) = document["shadow"]["shadows"]
    assert (comparison["shadow"], comparison["production"]) == ("Variant2", "Variant1")
    assert comparison["pairs"] == REQUESTS
    # The answers are the two models' own predictions, so the differences are known exactly.
    expected = models["v2"].predict(rows) - models["v1"].predict(rows)
    assert comparison["score_difference"]["value"] == pytest.approx(
        float(expected.mean()), abs=1e-5
    )
    assert f"{REQUESTS}/{REQUESTS}" in done.stderr  # the progress bar's last line

    # The replayed requests went to Variant2 and were captured as targeted requests there.
    deadline = time.monotonic() + 30
    while _capture_records(capture / ENDPOINT / "Variant2") < REQUESTS:
        assert time.monotonic() < deadline, gateway.log()
        time.sleep(0.1)

    unknown_variant = _replay(gateway, capture, "--endpoint", ENDPOINT, "--variant", "Nope")
    assert unknown_variant.returncode == 2
    assert "Nope is not a production variant of endpoint replayed" in unknown_variant.stderr
    assert "Variant1, Variant2" in unknown_variant.stderr

    sagemaker.delete_endpoint(EndpointName=ENDPOINT)
    gone = _replay(gateway, capture, "--endpoint", ENDPOINT, "--variant", "Variant2")
    assert gone.returncode == 2
    assert "DescribeEndpoint" in gone.stderr
    assert ENDPOINT in gone.stderr
