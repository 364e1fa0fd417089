"""Each plane's error boundary puts every error on the wire in the form botocore parses for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import botocore.session
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from botocore.awsrequest import HeadersDict
from botocore.parsers import create_parser

from splitserve._router import UnknownInstanceError
from splitserve.errors import (
    InvocationValidationError,
    ModelError,
    ModelErrorDetail,
    ServiceUnavailable,
    ValidationException,
)
from splitserve.wiring.boundary import ErrorBoundary, Plane

_RAISED: dict[str, Exception] = {
    "validation": ValidationException('Could not find model "arn:aws:sagemaker:x:1:model/m".'),
    "invalid-invoke": InvocationValidationError("Endpoint e of account 1 not found."),
    "model": ModelError("Received client error (400)", ModelErrorDetail(400, "bad row", "arn:l")),
    "unhealthy": ServiceUnavailable("variant V1 has no healthy instance"),
    "bug": KeyError("internal detail"),
    # The router's own errors are turned into the API's where they arise; one that escapes is a
    # bug, and its text (which names an instance) stays in the log.
    "router": UnknownInstanceError("instance 'internal-detail-0' is not in the routing table"),
}


async def _raise(request: web.Request) -> web.Response:
    await request.read()
    raise _RAISED[request.match_info["kind"]]


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(client_max_size=16)
    app.router.add_routes(ErrorBoundary(Plane.CONTROL, 16).routes([web.post("/", _raise_control)]))
    app.router.add_routes(
        ErrorBoundary(Plane.RUNTIME, 16).routes([web.post("/endpoints/{kind}/invocations", _raise)])
    )
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def _raise_control(request: web.Request) -> web.Response:
    raise _RAISED[request.headers["X-Kind"]]


def _parse(
    protocol: str, service: str, operation: str, status: int, headers: dict[str, str], body: bytes
) -> dict[str, object]:
    model = botocore.session.get_session().get_service_model(service)
    parsed: dict[str, object] = create_parser(protocol).parse(
        {"status_code": status, "headers": HeadersDict(headers), "body": body},
        model.operation_model(operation).output_shape,
    )
    return parsed


async def test_control_plane_error_body(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.post("/", headers={"X-Kind": "validation"}, data=b"{}")
    body = await response.read()
    assert response.status == 400
    assert response.headers["x-amzn-RequestId"]
    error = _parse("json", "sagemaker", "DescribeModel", 400, dict(response.headers), body)["Error"]
    assert error == {
        "Code": "ValidationException",
        "Message": 'Could not find model "arn:aws:sagemaker:x:1:model/m".',
    }


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("invalid-invoke", 400, "ValidationError"),
        ("model", 424, "ModelError"),
        ("unhealthy", 503, "ServiceUnavailable"),
        ("bug", 500, "InternalFailure"),
        ("router", 500, "InternalFailure"),
    ],
)
async def test_runtime_error_codes(
    client: TestClient[web.Request, web.Application], kind: str, status: int, code: str
) -> None:
    response = await client.post(f"/endpoints/{kind}/invocations", data=b"1")
    body = await response.read()
    assert response.status == status
    parsed = _parse(
        "rest-json", "sagemaker-runtime", "InvokeEndpoint", status, dict(response.headers), body
    )
    assert parsed["Error"]["Code"] == code  # type: ignore[index]


async def test_model_error_carries_the_original(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.post("/endpoints/model/invocations", data=b"1")
    body = await response.json()
    assert body["OriginalStatusCode"] == 400
    assert body["OriginalMessage"] == "bad row"
    assert body["LogStreamArn"] == "arn:l"


async def test_internal_errors_never_reach_the_client(
    client: TestClient[web.Request, web.Application],
) -> None:
    for kind in ("bug", "router"):
        response = await client.post(f"/endpoints/{kind}/invocations", data=b"1")
        text = await response.text()
        assert "internal" not in text.replace("An internal error", "")
        assert response.headers["x-amzn-RequestId"] in text


async def test_oversized_body_is_413(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.post("/endpoints/model/invocations", data=b"x" * 17)
    assert response.status == 413
    assert response.headers["x-amzn-ErrorType"] == "ValidationError"
