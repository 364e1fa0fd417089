"""Small helpers for end-to-end tests that drive the gateway with boto3."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from tests.support.models import ROLE, XGBOOST_IMAGE

FAST_WAIT = {"Delay": 1, "MaxAttempts": 90}


def create_model(sagemaker: Any, name: str, key: str) -> None:
    """CreateModel with the built-in XGBoost image over s3://models/<key>/model.tar.gz."""
    sagemaker.create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={
            "Image": XGBOOST_IMAGE,
            "ModelDataUrl": f"s3://models/{key}/model.tar.gz",
        },
    )


def create_two_variant_endpoint(
    sagemaker: Any, endpoint: str, weights: tuple[float, float] = (1.0, 1.0)
) -> None:
    """Two models, a config with Variant1/Variant2 at `weights`, an endpoint; wait for InService."""
    create_model(sagemaker, f"{endpoint}-m1", "v1")
    create_model(sagemaker, f"{endpoint}-m2", "v2")
    sagemaker.create_endpoint_config(
        EndpointConfigName=f"{endpoint}-cfg",
        ProductionVariants=[
            {
                "VariantName": f"Variant{index}",
                "ModelName": f"{endpoint}-m{index}",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.t2.medium",
                "InitialVariantWeight": weight,
            }
            for index, weight in enumerate(weights, start=1)
        ],
    )
    sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-cfg")
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=FAST_WAIT)


def csv_rows(rows: np.ndarray) -> bytes:
    """Rows as the text/csv body SageMaker's XGBoost container takes."""
    return "".join(",".join(repr(float(v)) for v in row) + "\n" for row in rows).encode()


def invoke_many(runtime: Any, endpoint: str, body: bytes, count: int, **extra: Any) -> Counter[str]:
    """Send `count` identical invocations; count the variants that answered."""
    seen: Counter[str] = Counter()
    for _ in range(count):
        response = runtime.invoke_endpoint(
            EndpointName=endpoint, Body=body, ContentType="text/csv", **extra
        )
        response["Body"].read()
        seen[response["InvokedProductionVariant"]] += 1
    return seen
