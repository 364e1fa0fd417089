"""The SageMaker Python SDK (v2) helpers of the production-variants walkthrough, unmodified."""

from __future__ import annotations

import os
from typing import Any

import boto3
import numpy as np
import pytest

from tests.e2e.helpers import FAST_WAIT
from tests.support.gateway import Gateway
from tests.support.models import ROLE, XGBOOST_IMAGE, TrainedModel

pytestmark = pytest.mark.e2e


def test_walkthrough_helpers(gateway: Gateway, models: dict[str, TrainedModel]) -> None:
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    import sagemaker
    from sagemaker.deserializers import CSVDeserializer
    from sagemaker.serializers import CSVSerializer
    from sagemaker.session import production_variant

    sm: Any = gateway.client("sagemaker")
    session = sagemaker.Session(
        boto_session=boto3.Session(
            region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
        ),
        sagemaker_client=sm,
        sagemaker_runtime_client=gateway.client("sagemaker-runtime"),
        default_bucket="unused",  # keeps the SDK from asking S3 for a bucket
    )
    for name, key in (("sdk-m1", "v1"), ("sdk-m2", "v2")):
        session.create_model(
            name,
            role=ROLE,
            container_defs={
                "Image": XGBOOST_IMAGE,
                "ModelDataUrl": f"s3://models/{key}/model.tar.gz",
            },
        )
    variants = [
        production_variant(
            model_name=f"sdk-m{index}",
            instance_type="ml.m5.xlarge",
            initial_instance_count=1,
            variant_name=f"Variant{index}",
            initial_weight=1,
        )
        for index in (1, 2)
    ]
    session.endpoint_from_production_variants(
        name="sdk-ep", production_variants=variants, wait=False
    )
    sm.get_waiter("endpoint_in_service").wait(EndpointName="sdk-ep", WaiterConfig=FAST_WAIT)

    predictor = sagemaker.predictor.Predictor(
        endpoint_name="sdk-ep",
        sagemaker_session=session,
        serializer=CSVSerializer(),
        deserializer=CSVDeserializer(),
    )
    model = models["v1"]
    rows = model.rows[:5]
    answer = predictor.predict(rows, target_variant="Variant1")
    scores = np.array([float(line[0]) for line in answer])
    np.testing.assert_allclose(scores, model.predict(rows), atol=1e-6)
