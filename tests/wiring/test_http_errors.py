"""The gateway's answers without a middleware: each plane's error boundary answers its routes'
errors (counting what no variant took), every answer carries a request id, what no route takes
gets aiohttp's own 404 or 405, and hostile bytes in headers or bodies are a 400, never a 500."""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from splitserve._router import Router, VariantSpec
from splitserve.app import create_app
from splitserve.config import Settings
from splitserve.contract.upstream import UpstreamConnectError
from splitserve.control import routes as control_routes
from splitserve.errors import (
    InvocationValidationError,
    ModelError,
    ModelErrorDetail,
    ServiceUnavailable,
    ValidationException,
)
from splitserve.metrics.minutes import VariantMinutes
from splitserve.metrics.prometheus import REGISTRY, remove_variant_series
from splitserve.metrics.recorder import VariantRecorder
from splitserve.runtime import routes as runtime_routes
from splitserve.runtime.registry import EndpointRegistry, LiveEndpoint
from splitserve.runtime.service import InvocationService
from splitserve.wiring.boundary import (
    REQUEST_ID_HEADER,
    ErrorBoundary,
    Plane,
    control_error_response,
    next_request_id,
    runtime_error_response,
)
from tests.support.runtime import FakeClient


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The real application (no endpoints), served by aiohttp's test server."""
    settings = Settings(state_dir=tmp_path / "state", model_store=tmp_path / "models")
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


def test_request_ids_are_unique_uuids() -> None:
    ids = [next_request_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert all(str(uuid.UUID(request_id)) == request_id for request_id in ids)


def test_the_app_has_no_middleware(tmp_path: Path) -> None:
    # A middleware would cost every invocation a chain of coroutines (see wiring.boundary).
    assert not create_app(Settings(state_dir=tmp_path)).middlewares


async def test_unknown_path_is_aiohttps_404_with_a_request_id(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/nowhere")
    assert response.status == 404
    assert response.headers[REQUEST_ID_HEADER]


async def test_wrong_method_is_aiohttps_405_with_a_request_id(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/endpoints/e/invocations")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert response.headers[REQUEST_ID_HEADER]
    control = await client.put("/", data=b"{}")
    assert control.status == 405
    assert control.headers["Allow"] == "POST"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/ping", 200),
        ("GET", "/metrics", 200),
        ("GET", "/splitserve/stats/e?since=x", 400),
        ("POST", "/", 400),
        ("POST", "/endpoints/absent/invocations", 400),
    ],
)
async def test_every_answer_has_its_own_request_id(
    client: TestClient[web.Request, web.Application], method: str, path: str, status: int
) -> None:
    first = await client.request(method, path, data=b"1,2\n")
    second = await client.request(method, path, data=b"1,2\n")
    assert first.status == second.status == status
    assert first.headers[REQUEST_ID_HEADER] != second.headers[REQUEST_ID_HEADER]


async def test_invoke_endpoint_errors_are_runtime_errors(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.post("/endpoints/absent/invocations", data=b"1,2\n")
    assert response.headers["x-amzn-ErrorType"] == "ValidationError"
    assert (await response.json())["ErrorCode"] == "ValidationError"


# --- the boundary --------------------------------------------------------------------------------


def _gateway_errors(code: str) -> float:
    return REGISTRY.get_sample_value("splitserve_gateway_errors_total", {"code": code}) or 0.0


def test_the_formatters_have_no_side_effects() -> None:
    before = _gateway_errors("ValidationError")
    response = runtime_error_response(InvocationValidationError("bad"))
    assert response.status == 400
    assert response.headers["x-amzn-ErrorType"] == "ValidationError"
    assert REQUEST_ID_HEADER not in response.headers
    assert control_error_response(ValidationException("bad")).status == 400
    assert _gateway_errors("ValidationError") == before


def test_the_runtime_boundary_counts_only_what_no_variant_took() -> None:
    boundary = ErrorBoundary(Plane.RUNTIME, 16)
    refused, unavailable = _gateway_errors("ValidationError"), _gateway_errors("ServiceUnavailable")
    boundary.answer(InvocationValidationError("refused"))
    assert _gateway_errors("ValidationError") == refused + 1
    # After routing, the variant's recorder counted it: a ModelError, or an error raised from
    # the client's failure.
    model = _gateway_errors("ModelError")
    boundary.answer(ModelError("model", ModelErrorDetail(0, "broke", "arn:l")))
    assert _gateway_errors("ModelError") == model
    try:
        raise ServiceUnavailable("unreachable") from UpstreamConnectError("refused")
    except ServiceUnavailable as error:
        boundary.answer(error)
    assert _gateway_errors("ServiceUnavailable") == unavailable
    # The control plane counts nothing there.
    ErrorBoundary(Plane.CONTROL, 16).answer(ValidationException("control"))
    assert _gateway_errors("ValidationException") == 0


def test_the_boundary_wraps_only_function_handlers() -> None:
    class View(web.View):
        pass

    with pytest.raises(TypeError, match="class-based views"):
        ErrorBoundary(Plane.CONTROL, 16).routes([web.view("/v", View)])


# --- hostile bytes on the runtime plane -----------------------------------------------------------


@pytest.fixture
async def runtime() -> AsyncIterator[tuple[TestServer, FakeClient]]:
    """The runtime plane as create_app builds it, over one endpoint "e" of one fake instance."""
    client = FakeClient()
    registry = EndpointRegistry()
    settings = Settings()
    registry.publish(
        LiveEndpoint(
            name="e",
            generation=1,
            router=Router(
                [VariantSpec("A", 1.0, ["a-0"], "RANDOM")], salt="e", seed=1, failover=False
            ),
            pools={"a-0": client},
            recorders={"A": VariantRecorder.resolve("e", "A", VariantMinutes(2))},
            log_stream_arn="arn:l",
        )
    )
    app = web.Application(client_max_size=settings.max_payload_bytes)
    boundary = ErrorBoundary(Plane.RUNTIME, settings.max_payload_bytes)
    app.router.add_routes(
        boundary.routes(runtime_routes.routes(InvocationService(settings, registry), settings))
    )
    app.router.add_routes(
        ErrorBoundary(Plane.CONTROL, settings.max_payload_bytes).routes(
            control_routes.routes(_NoControl())
        )
    )
    server = TestServer(app)
    async with server:
        yield server, client
    remove_variant_series("e", "A")


class _NoControl:
    async def dispatch(self, operation: str, body: dict[str, object]) -> dict[str, object]:
        return {}


async def _raw(server: TestServer, path: bytes, head: bytes, body: bytes) -> tuple[int, bytes]:
    """POST `body` with the raw header lines `head`; the status and the answer's body."""
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n" % len(body) + head + b"\r\n" + body
        )
        answer = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, answered = rest.partition(b"\r\n\r\n")
    assert REQUEST_ID_HEADER.lower().encode() in headers.lower()
    return int(status_line.split()[1]), answered


@pytest.mark.parametrize(
    "header",
    [b"Content-Type", b"Accept", b"X-Amzn-SageMaker-Custom-Attributes", b"X-Splitserve-Sticky-Key"],
)
@pytest.mark.parametrize("value", [b"text/\xff\xfecsv", "caf\u00e9".encode()])  # bad UTF-8; UTF-8
async def test_non_ascii_header_bytes_are_a_400_naming_the_header(
    runtime: tuple[TestServer, FakeClient], header: bytes, value: bytes
) -> None:
    server, client = runtime
    status, body = await _raw(
        server, b"/endpoints/e/invocations", header + b": " + value + b"\r\n", b"1"
    )
    assert status == 400
    error = json.loads(body)
    assert error["ErrorCode"] == "ValidationError"
    assert header.decode() in error["Message"]
    assert not client.sent


async def test_a_body_that_is_not_its_content_encoding_is_a_400(
    runtime: tuple[TestServer, FakeClient],
) -> None:
    server, client = runtime
    status, body = await _raw(
        server, b"/endpoints/e/invocations", b"Content-Encoding: gzip\r\n", b"1,2,3"
    )
    assert status == 400
    error = json.loads(body)
    assert error["ErrorCode"] == "ValidationError"
    assert "Content-Encoding header (gzip)" in error["Message"]
    assert not client.sent
    # The control plane answers the same body in its own form, never a 500.
    status, body = await _raw(
        server, b"/", b"Content-Encoding: gzip\r\nX-Amz-Target: SageMaker.ListModels\r\n", b"{}"
    )
    assert status == 400
    assert json.loads(body)["__type"] == "SerializationException"


async def test_a_gzip_body_reaches_the_worker_decoded(
    runtime: tuple[TestServer, FakeClient],
) -> None:
    server, client = runtime
    status, _ = await _raw(
        server, b"/endpoints/e/invocations", b"Content-Encoding: gzip\r\n", gzip.compress(b"1,2,3")
    )
    assert status == 200
    assert client.sent[0][3] == b"1,2,3"
