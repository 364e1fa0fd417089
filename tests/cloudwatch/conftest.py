"""A CloudWatch service over minute rings driven by a fake clock, served over HTTP, and botocore's
own serializers and parsers for each of CloudWatch's protocols."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import botocore.parsers
import botocore.serialize
import botocore.session
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from splitserve.cloudwatch import routes as cloudwatch_routes
from splitserve.cloudwatch.gateway import CloudWatchGateway
from splitserve.cloudwatch.live import LiveFigures, MemoryReader
from splitserve.cloudwatch.queries import MetricQueries
from splitserve.cloudwatch.service import CloudWatchService
from splitserve.cloudwatch.store import CloudWatchStore
from splitserve.config import CloudWatchSettings, Settings, StatsSettings
from splitserve.metrics.minutes import MinuteStore
from splitserve.metrics.procstat import CpuSampler
from tests.support.clock import FakeClock

CLOUDWATCH_MODEL = botocore.session.get_session().get_service_model("cloudwatch")
PROTOCOLS = ("smithy-rpc-v2-cbor", "json", "query")


@dataclass
class World:
    """What a test drives: the clock, the rings, the service."""

    clock: FakeClock
    minutes: MinuteStore
    live: LiveFigures
    service: CloudWatchService


def make_world(settings: CloudWatchSettings | None = None) -> World:
    """A service over empty rings at noon (tests.support.clock.NOON)."""
    clock = FakeClock()
    minutes = MinuteStore(StatsSettings(), clock)
    live = LiveFigures(minutes, None, CpuSampler(1.0), clock)
    queries = MetricQueries(settings or CloudWatchSettings(), MemoryReader(live), clock)
    return World(clock, minutes, live, CloudWatchService(queries.operations()))


@pytest.fixture
def world() -> World:
    """A fresh `World`."""
    return make_world()


def app_of(world: World) -> web.Application:
    """An app with CloudWatch's routes (the CBOR path and POST /) over `world`'s service."""
    app = web.Application()
    app.router.add_routes(cloudwatch_routes.routes(world.service, None, 1024 * 1024))
    app.router.add_post("/", cloudwatch_routes.handler(world.service, None, 1024 * 1024))
    return app


@pytest.fixture
async def client(world: World) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """An HTTP client of `app_of(world)`."""
    async with TestClient(TestServer(app_of(world))) as test_client:
        yield test_client


@dataclass(frozen=True)
class Raw:
    """An HTTP answer as it came."""

    status: int
    headers: Mapping[str, str]
    body: bytes


async def send(
    client: TestClient[web.Request, web.Application],
    protocol: str,
    operation: str,
    params: Mapping[str, Any],
) -> tuple[Raw, dict[str, Any]]:
    """Serialize `operation` as botocore does for `protocol`, send it, parse the answer as
    botocore does. Returns the raw answer and the parsed one (errors under "Error")."""
    operation_model = CLOUDWATCH_MODEL.operation_model(operation)
    request = botocore.serialize.create_serializer(protocol).serialize_to_request(
        dict(params), operation_model
    )
    body = request["body"]
    if isinstance(body, dict):  # the query protocol: botocore form-encodes it when sending
        body = urlencode(body).encode()
    response = await client.request(
        request["method"], request["url_path"], headers=request["headers"], data=body or b""
    )
    answer = await response.read()
    headers = {name.lower(): value for name, value in response.headers.items()}
    parsed = botocore.parsers.create_parser(protocol).parse(
        {"status_code": response.status, "headers": headers, "body": answer},
        operation_model.output_shape,
    )
    return Raw(response.status, headers, answer), parsed


@dataclass
class StoredWorld:
    """A CloudWatch gateway over rings, a fake clock and a real state database."""

    clock: FakeClock
    minutes: MinuteStore
    gateway: CloudWatchGateway
    path: Path


def open_stored_world(
    path: Path,
    clock: FakeClock | None = None,
    *,
    source: str | None = None,
    is_controller: Callable[[], bool] = lambda: True,
) -> StoredWorld:
    """A `StoredWorld` over the database at `path` (created when missing): one gateway replica,
    named `source` (a new name when None), the controller while `is_controller()` says so."""
    sqlite3.connect(path).close()
    clock = clock or FakeClock()
    minutes = MinuteStore(StatsSettings(), clock)
    store = CloudWatchStore.open(path)
    gateway = CloudWatchGateway(
        Settings(state_dir=path.parent),
        store,
        minutes,
        None,
        clock,
        source=source or uuid.uuid4().hex,
        is_controller=is_controller,
    )
    return StoredWorld(clock, minutes, gateway, path)


@pytest.fixture
async def stored(tmp_path: Path) -> AsyncIterator[StoredWorld]:
    """A `StoredWorld` with its alarms loaded, closed at the end."""
    world = open_stored_world(tmp_path / "state.sqlite3")
    await world.gateway.alarms.load()
    try:
        yield world
    finally:
        await world.gateway.close()
