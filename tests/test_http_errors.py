"""The gateway's answers without a middleware: every route answers its own errors, every answer
carries a request id, and what no route takes gets aiohttp's own 404 or 405."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from splitserve.app import create_app
from splitserve.config import Settings
from splitserve.wiring.boundary import REQUEST_ID_HEADER, next_request_id


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
    # A middleware would cost every invocation a chain of coroutines (see http_errors).
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
