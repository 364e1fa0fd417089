"""sagemaker-runtime's operations splitserve does not serve (InvokeEndpointAsync and
InvokeEndpointWithResponseStream) are refused in the runtime's error shape, not with a bare 404."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from botocore.exceptions import ClientError

from splitserve.app import create_app
from splitserve.config import Settings
from splitserve.wiring.boundary import REQUEST_ID_HEADER

OPERATIONS = [
    ("/endpoints/churn/async-invocations", "InvokeEndpointAsync"),
    ("/endpoints/churn/invocations-response-stream", "InvokeEndpointWithResponseStream"),
]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The real application (no endpoints), served by aiohttp's test server."""
    settings = Settings(state_dir=tmp_path / "state", model_store=tmp_path / "models")
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


@pytest.mark.parametrize(("path", "operation"), OPERATIONS)
async def test_unsupported_operations_are_named_validation_errors(
    client: TestClient[web.Request, web.Application], path: str, operation: str
) -> None:
    response = await client.post(path, data=b"1,2\n")
    assert response.status == 400
    assert response.headers["x-amzn-ErrorType"] == "ValidationError"
    assert response.headers[REQUEST_ID_HEADER]
    body = await response.json()
    assert body["ErrorCode"] == "ValidationError"
    assert body["Message"].startswith(f"{operation} is not supported: ")
    assert body["Message"].endswith(
        "Call InvokeEndpoint (POST /endpoints/churn/invocations) instead."
    )


async def test_boto3_reads_the_refusals(
    client: TestClient[web.Request, web.Application],
) -> None:
    """boto3's own calls of the two operations raise ValidationError carrying the message."""
    runtime = boto3.client(
        "sagemaker-runtime",
        endpoint_url=str(client.make_url("")).rstrip("/"),
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    calls = {
        "InvokeEndpointAsync": lambda: runtime.invoke_endpoint_async(
            EndpointName="churn", InputLocation="s3://bucket/input.csv"
        ),
        "InvokeEndpointWithResponseStream": lambda: runtime.invoke_endpoint_with_response_stream(
            EndpointName="churn", Body=b"1,2"
        ),
    }
    for operation, call in calls.items():
        with pytest.raises(ClientError) as refused:
            await asyncio.to_thread(call)
        error = refused.value.response["Error"]
        assert error["Code"] == "ValidationError"
        assert error["Message"].startswith(f"{operation} is not supported: ")
