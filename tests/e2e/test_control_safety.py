"""The control plane's guards through boto3 and the real CLI: reserved Environment variables,
instance limits, a private state file, and a damaged state file stopping the start cleanly."""

from __future__ import annotations

import signal
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.support.gateway import Gateway, start_gateway
from tests.support.models import ROLE, XGBOOST_IMAGE

pytestmark = pytest.mark.e2e


def _container(**environment: str) -> dict[str, object]:
    return {
        "Image": XGBOOST_IMAGE,
        "ModelDataUrl": "s3://models/v1/model.tar.gz",
        "Environment": environment,
    }


def test_reserved_environment_and_instance_limits(gateway: Gateway, sagemaker: Any) -> None:
    with pytest.raises(ClientError) as refused:
        sagemaker.create_model(
            ModelName="preload",
            ExecutionRoleArn=ROLE,
            PrimaryContainer=_container(LD_PRELOAD="/tmp/x.so", SAGEMAKER_PROGRAM="serve.py"),
        )
    error = refused.value.response["Error"]
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Code"] == "ValidationException"
    assert error["Message"].startswith(
        "The Environment variable LD_PRELOAD (at 'primaryContainer.environment') may not be set"
    )
    with pytest.raises(ClientError, match="Could not find model"):
        sagemaker.describe_model(ModelName="preload")

    sagemaker.create_model(
        ModelName="tuned", ExecutionRoleArn=ROLE, PrimaryContainer=_container(OMP_NUM_THREADS="1")
    )
    # Stored as SageMaker stores it; CreateEndpoint is where the count is refused.
    sagemaker.create_endpoint_config(
        EndpointConfigName="huge",
        ProductionVariants=[
            {
                "VariantName": "All",
                "ModelName": "tuned",
                "InitialInstanceCount": 1000,
                "InstanceType": "ml.t2.medium",
            }
        ],
    )
    with pytest.raises(ClientError) as limited:
        sagemaker.create_endpoint(EndpointName="huge", EndpointConfigName="huge")
    assert limited.value.response["Error"]["Code"] == "ResourceLimitExceeded"
    assert "limit of 16 instances per variant" in limited.value.response["Error"]["Message"]
    assert sagemaker.list_endpoints()["Endpoints"] == []

    state = gateway.state_dir / "state.sqlite3"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600


def test_a_damaged_row_stops_the_start_with_a_clear_message(
    gateway: Gateway, sagemaker: Any, tmp_path: Path
) -> None:
    sagemaker.create_model(ModelName="m", ExecutionRoleArn=ROLE, PrimaryContainer=_container())
    assert gateway.stop(signal.SIGTERM) == 0, gateway.log()
    state = gateway.state_dir / "state.sqlite3"
    connection = sqlite3.connect(state)
    connection.execute("UPDATE models SET document = 'not json'")
    connection.commit()
    connection.close()

    with pytest.raises(RuntimeError) as stopped:
        start_gateway(gateway.state_dir, gateway.model_store)
    printed = str(stopped.value)
    assert "gateway exited with 2" in printed
    assert f"splitserve: state file {state} is corrupt: model 'm': " in printed
    assert "Traceback" not in printed
