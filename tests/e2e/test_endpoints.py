"""The production-variants workflow with unmodified boto3 against a real `splitserve serve`."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from botocore.exceptions import ClientError
from scipy.stats import binom

from tests.e2e.helpers import (
    FAST_WAIT,
    create_two_variant_endpoint,
    csv_rows,
    invoke_many,
)
from tests.support.gateway import Gateway, start_gateway
from tests.support.models import ROLE, TrainedModel

pytestmark = pytest.mark.e2e

# Two-sided bounds that a correct router breaks with probability 1e-6 per check.
_ALPHA = 1e-6


def assert_share(count: int, total: int, share: float) -> None:
    """`count` out of `total` is what a split with probability `share` can give."""
    low, high = binom.interval(1 - _ALPHA, total, share)
    assert low <= count <= high, f"{count}/{total} is not a {share:.0%} share"


def test_split_target_and_live_shift(sagemaker: Any, runtime: Any) -> None:
    create_two_variant_endpoint(sagemaker, "ab")
    body = csv_rows(np.zeros((1, 13), dtype=np.float32))

    seen = invoke_many(runtime, "ab", body, 400)
    assert set(seen) == {"Variant1", "Variant2"}
    assert_share(seen["Variant1"], 400, 0.5)

    assert invoke_many(runtime, "ab", body, 30, TargetVariant="Variant2") == {"Variant2": 30}

    sagemaker.update_endpoint_weights_and_capacities(
        EndpointName="ab",
        DesiredWeightsAndCapacities=[
            {"VariantName": "Variant1", "DesiredWeight": 25},
            {"VariantName": "Variant2", "DesiredWeight": 75},
        ],
    )
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName="ab", WaiterConfig=FAST_WAIT)
    described = sagemaker.describe_endpoint(EndpointName="ab")
    weights = {v["VariantName"]: v["CurrentWeight"] for v in described["ProductionVariants"]}
    assert weights == {"Variant1": 25.0, "Variant2": 75.0}
    seen = invoke_many(runtime, "ab", body, 400)
    assert_share(seen["Variant1"], 400, 0.25)


def test_predictions_equal_xgboost(
    sagemaker: Any, runtime: Any, models: dict[str, TrainedModel]
) -> None:
    create_two_variant_endpoint(sagemaker, "preds")
    for variant, model in (("Variant1", models["v1"]), ("Variant2", models["v2"])):
        response = runtime.invoke_endpoint(
            EndpointName="preds",
            Body=csv_rows(model.rows),
            ContentType="text/csv",
            Accept="application/json",
            TargetVariant=variant,
        )
        assert response["InvokedProductionVariant"] == variant
        scores = [p["score"] for p in json.loads(response["Body"].read())["predictions"]]
        np.testing.assert_allclose(scores, model.predict(model.rows), atol=1e-6)


async def test_requests_arriving_together_each_get_their_own_prediction(
    gateway: Gateway, sagemaker: Any, models: dict[str, TrainedModel]
) -> None:
    # 64 at once: the gateway pipelines those that meet on an instance (the built-in worker's
    # default), and the worker batches them; every answer must still be its own request's.
    create_two_variant_endpoint(sagemaker, "together")
    model = models["v1"]
    rows = np.random.default_rng(5).normal(size=(256, 13)).astype(np.float32)
    expected = model.predict(rows)
    url = f"{gateway.url}/endpoints/together/invocations"
    headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Variant": "Variant1"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def score(index: int) -> float:
            async with session.post(
                url, data=csv_rows(rows[index : index + 1]), headers=headers
            ) as r:
                assert r.status == 200, await r.text()
                return float(await r.text())

        scores = await asyncio.gather(*(score(index) for index in range(len(rows))))
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_runtime_errors_as_boto3_parses_them(sagemaker: Any, runtime: Any) -> None:
    create_two_variant_endpoint(sagemaker, "errs")
    body = csv_rows(np.zeros((1, 13), dtype=np.float32))

    with pytest.raises(runtime.exceptions.ValidationError, match="Endpoint nope of account"):
        runtime.invoke_endpoint(EndpointName="nope", Body=body, ContentType="text/csv")
    with pytest.raises(runtime.exceptions.ValidationError, match="Variant3"):
        runtime.invoke_endpoint(
            EndpointName="errs", Body=body, ContentType="text/csv", TargetVariant="Variant3"
        )
    with pytest.raises(runtime.exceptions.ModelError) as model_error:
        runtime.invoke_endpoint(EndpointName="errs", Body=b"1,2,3\n", ContentType="text/csv")
    assert model_error.value.response["OriginalStatusCode"] == 400
    assert "13" in model_error.value.response["OriginalMessage"]
    with pytest.raises(ClientError) as too_large:
        runtime.invoke_endpoint(
            EndpointName="errs", Body=b"0" * (6 * 1024 * 1024 + 1), ContentType="text/csv"
        )
    assert too_large.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


def test_control_plane_errors(sagemaker: Any) -> None:
    with pytest.raises(ClientError, match='Could not find endpoint "arn:aws:sagemaker:'):
        sagemaker.describe_endpoint(EndpointName="Missing")
    create_two_variant_endpoint(sagemaker, "dup")
    with pytest.raises(ClientError, match="Cannot create already existing endpoint"):
        sagemaker.create_endpoint(EndpointName="dup", EndpointConfigName="dup-cfg")
    with pytest.raises(ClientError, match="not present within endpoint configuration"):
        sagemaker.update_endpoint_weights_and_capacities(
            EndpointName="dup",
            DesiredWeightsAndCapacities=[{"VariantName": "Nope", "DesiredWeight": 1}],
        )


def test_delete_endpoint_waiter(sagemaker: Any) -> None:
    create_two_variant_endpoint(sagemaker, "gone")
    sagemaker.delete_endpoint(EndpointName="gone")
    sagemaker.get_waiter("endpoint_deleted").wait(EndpointName="gone", WaiterConfig=FAST_WAIT)
    # Configs and models stay.
    sagemaker.describe_endpoint_config(EndpointConfigName="gone-cfg")
    sagemaker.describe_model(ModelName="gone-m1")


def test_failed_endpoint_names_the_missing_artifact(sagemaker: Any) -> None:
    sagemaker.create_model(
        ModelName="broken",
        ExecutionRoleArn=ROLE,
        PrimaryContainer={
            "Image": "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1",
            "ModelDataUrl": "s3://models/absent/model.tar.gz",
        },
    )
    sagemaker.create_endpoint_config(
        EndpointConfigName="broken",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": "broken",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.t2.medium",
            }
        ],
    )
    sagemaker.create_endpoint(EndpointName="broken", EndpointConfigName="broken")
    with pytest.raises(Exception, match="Failed"):
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName="broken", WaiterConfig=FAST_WAIT
        )
    reason = sagemaker.describe_endpoint(EndpointName="broken")["FailureReason"]
    assert "absent/model.tar.gz" in reason


def test_restart_keeps_endpoints_and_weights(
    gateway: Gateway, sagemaker: Any, tmp_path: Path
) -> None:
    create_two_variant_endpoint(sagemaker, "kept", weights=(1.0, 3.0))
    assert gateway.stop(signal.SIGTERM) == 0, gateway.log()

    again = start_gateway(gateway.state_dir, gateway.model_store)
    try:
        client = again.client("sagemaker")
        client.get_waiter("endpoint_in_service").wait(EndpointName="kept", WaiterConfig=FAST_WAIT)
        described = client.describe_endpoint(EndpointName="kept")
        weights = {v["VariantName"]: v["CurrentWeight"] for v in described["ProductionVariants"]}
        assert weights == {"Variant1": 1.0, "Variant2": 3.0}
        body = csv_rows(np.zeros((1, 13), dtype=np.float32))
        seen = invoke_many(again.client("sagemaker-runtime"), "kept", body, 200)
        assert_share(seen["Variant1"], 200, 0.25)
    finally:
        again.stop()


def test_sticky_key_keeps_a_user_on_one_variant(gateway: Gateway, sagemaker: Any) -> None:
    create_two_variant_endpoint(sagemaker, "sticky")
    body = csv_rows(np.zeros((1, 13), dtype=np.float32))
    runtime = gateway.client("sagemaker-runtime")
    assigned: dict[str, set[str]] = {}

    def add_key_header(request: Any, **_: Any) -> None:
        request.headers["X-Splitserve-Sticky-Key"] = current_user

    runtime.meta.events.register("before-sign.sagemaker-runtime.InvokeEndpoint", add_key_header)
    for user in range(40):
        current_user = f"user-{user}"
        for _ in range(3):
            response = runtime.invoke_endpoint(
                EndpointName="sticky", Body=body, ContentType="text/csv"
            )
            assigned.setdefault(current_user, set()).add(response["InvokedProductionVariant"])
    assert all(len(variants) == 1 for variants in assigned.values())
    # Both variants get users: the key's hash, not a constant, decides.
    assert {next(iter(v)) for v in assigned.values()} == {"Variant1", "Variant2"}


def test_list_operations_paginate_and_filter(sagemaker: Any) -> None:
    for index in range(5):
        sagemaker.create_model(
            ModelName=f"listed-{index}",
            ExecutionRoleArn=ROLE,
            PrimaryContainer={
                "Image": "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1",
                "ModelDataUrl": "s3://models/v1/model.tar.gz",
            },
        )
    pages = list(
        sagemaker.get_paginator("list_models").paginate(
            NameContains="listed",
            SortBy="Name",
            SortOrder="Ascending",
            PaginationConfig={"PageSize": 2},
        )
    )
    assert [len(page["Models"]) for page in pages] == [2, 2, 1]
    names = [model["ModelName"] for page in pages for model in page["Models"]]
    assert names == [f"listed-{index}" for index in range(5)]
    create_two_variant_endpoint(sagemaker, "listing")
    endpoints = sagemaker.list_endpoints(StatusEquals="InService")["Endpoints"]
    assert [e["EndpointName"] for e in endpoints] == ["listing"]
    configs = sagemaker.list_endpoint_configs(NameContains="listing")["EndpointConfigs"]
    assert [c["EndpointConfigName"] for c in configs] == ["listing-cfg"]
    sagemaker.delete_model(ModelName="listed-0")
    with pytest.raises(ClientError, match="Could not find model"):
        sagemaker.describe_model(ModelName="listed-0")
