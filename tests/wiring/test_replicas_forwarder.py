"""`ControllerForwarder`: a control-plane request a replica that is not the controller receives
goes to the controller's internal listener as it came, and the answer comes back as it is; with
no controller to reach, the client is told to retry (503 ServiceUnavailable).

The replica is a real `ReplicaNode` over an SQLite state whose controller lease another holder
keeps, so it stays a follower; the controller is an aiohttp test server whose row the test
writes in the replicas' table."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from splitserve.cluster.lease import FileLease
from splitserve.cluster.state import ClusterState, ReplicaRecord
from splitserve.config import ReplicaSettings, Settings
from splitserve.database import open_database
from splitserve.errors import ServiceUnavailable, wire_error
from splitserve.metrics.minutes import MinuteStore
from splitserve.runtime.registry import EndpointRegistry
from splitserve.wiring.follower import RoutingFollower
from splitserve.wiring.forwarder import FORWARDED_HEADER, ControllerForwarder
from splitserve.wiring.live import LiveParts
from splitserve.wiring.replicas import ReplicaNode
from tests.cluster.conftest import sqlite_url
from tests.support.http import free_port

REPLICA_ID = "follower-1"


@dataclass
class Replica:
    """The replica under test and the state it shares."""

    node: ReplicaNode
    cluster: ClusterState
    forwarder: ControllerForwarder

    def controller_at(self, url: str, *, heartbeat: float | None = None) -> None:
        """Write the row of a controller listening at `url`, heard of at `heartbeat` (now)."""
        now = time.time() if heartbeat is None else heartbeat
        self.cluster.heartbeat(
            ReplicaRecord("controller-1", "host", 1, url, now, now, 0, controller=True)
        )


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[Replica]:
    """A started replica that is not the controller (another holder keeps the lease)."""
    database = open_database(sqlite_url(tmp_path))
    cluster = ClusterState.open(database)
    lock = tmp_path / "controller.lock"
    held = FileLease(lock)
    assert held.try_acquire()
    settings = Settings()
    node = ReplicaNode(settings.replicas, REPLICA_ID)
    follower = RoutingFollower(
        settings, EndpointRegistry(), LiveParts(settings, MinuteStore(settings.stats), None)
    )

    async def become_controller(takeover: bool) -> None:
        raise AssertionError("the replica under test must not take control")

    forwarder = ControllerForwarder(
        node, ReplicaSettings(forward_timeout_seconds=5.0, controller_wait_seconds=2.0)
    )
    try:
        await node.start(
            cluster, FileLease(lock), follower, "http://127.0.0.1:1", become_controller
        )
        yield Replica(node, cluster, forwarder)
    finally:
        await forwarder.close()
        await node.close()
        held.release()
        database.close()


@dataclass
class Received:
    """What the fake controller received."""

    requests: list[tuple[str, str, CIMultiDict[str], bytes]] = field(default_factory=list)


ANSWER_BODY = b'{"__type":"ValidationException","message":"no such endpoint \xc3\xa9"}'


@pytest.fixture
async def controller() -> AsyncIterator[tuple[TestServer, Received]]:
    """A fake controller: records every request and answers 400 with headers of its own."""
    received = Received()

    async def handle(request: web.Request) -> web.Response:
        received.requests.append(
            (request.method, request.raw_path, CIMultiDict(request.headers), await request.read())
        )
        return web.Response(
            status=400,
            body=ANSWER_BODY,
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "x-amzn-RequestId": "request-1",
                "X-Controller": "yes",
                "Connection": "keep-alive",
                "Keep-Alive": "timeout=5",
            },
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app)
    await server.start_server()
    try:
        yield server, received
    finally:
        await server.close()


@pytest.fixture
async def front(replica: Replica) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The replica's front: every request goes through its forwarder; ServiceUnavailable is
    answered with its wire status and message, as the error boundary would."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await replica.forwarder.forward(request)
        except ServiceUnavailable as error:
            return web.Response(status=wire_error(error).status, text=error.message)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with TestClient(TestServer(app)) as client:
        yield client


SIGNED_HEADERS = {
    "Authorization": "AWS4-HMAC-SHA256 Credential=test/20261203/us-east-1/sagemaker/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=0123",
    "X-Amz-Date": "20261203T120000Z",
    "X-Amz-Target": "SageMaker.DescribeEndpoint",
    "Content-Type": "application/x-amz-json-1.1",
}
HOP_BY_HOP = {
    "Keep-Alive": "timeout=5",
    "Proxy-Connection": "keep-alive",
    "TE": "trailers",
    "Trailer": "X-Checksum",
}


async def test_a_request_reaches_the_controller_as_it_came_and_its_answer_comes_back(
    replica: Replica,
    controller: tuple[TestServer, Received],
    front: TestClient[web.Request, web.Application],
) -> None:
    server, received = controller
    replica.controller_at(str(server.make_url("")).rstrip("/"))
    body = b'{"EndpointName": "ab\xc3\xa9"}'
    answer = await front.post(
        "/some/path%2Fquoted?b=2&a=1", data=body, headers={**SIGNED_HEADERS, **HOP_BY_HOP}
    )
    assert answer.status == 400
    assert await answer.read() == ANSWER_BODY
    assert answer.headers["Content-Type"] == "application/x-amz-json-1.1"
    assert answer.headers["x-amzn-RequestId"] == "request-1"
    assert answer.headers["X-Controller"] == "yes"
    assert "Keep-Alive" not in answer.headers  # the controller's hop, not the client's

    [(method, path, headers, sent)] = received.requests
    assert (method, path, sent) == ("POST", "/some/path%2Fquoted?b=2&a=1", body)
    for name, value in SIGNED_HEADERS.items():
        assert headers[name] == value  # the signature is the controller's to check
    for name in HOP_BY_HOP:
        assert name not in headers
    assert headers[FORWARDED_HEADER] == REPLICA_ID
    assert headers["Content-Length"] == str(len(body))


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
async def test_every_method_is_passed_on(
    replica: Replica,
    controller: tuple[TestServer, Received],
    front: TestClient[web.Request, web.Application],
    method: str,
) -> None:
    server, received = controller
    replica.controller_at(str(server.make_url("")).rstrip("/"))
    answer = await front.request(method, "/splitserve/stats/ab")
    assert answer.status == 400
    assert [(m, p) for m, p, _, _ in received.requests] == [(method, "/splitserve/stats/ab")]


async def test_a_compressed_body_reaches_the_controller_as_the_client_meant_it(
    replica: Replica,
    controller: tuple[TestServer, Received],
    front: TestClient[web.Request, web.Application],
) -> None:
    server, received = controller
    replica.controller_at(str(server.make_url("")).rstrip("/"))
    body = b'{"MetricData": []}' * 100
    # The replica's server decoded it: the controller gets the body decoded, and no header
    # telling it to decode it again (it would refuse it).
    answer = await front.post("/", data=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert answer.status == 400
    # An encoding aiohttp does not decode goes on as it came, header and bytes.
    answer = await front.post("/", data=b"\x01\x02", headers={"Content-Encoding": "x-custom"})
    assert answer.status == 400
    [(_, _, first, decoded), (_, _, second, raw)] = received.requests
    assert (decoded, "Content-Encoding" in first) == (body, False)
    assert (raw, second["Content-Encoding"]) == (b"\x01\x02", "x-custom")


async def test_without_a_live_controller_the_client_is_told_to_retry(
    replica: Replica, front: TestClient[web.Request, web.Application]
) -> None:
    answer = await front.post("/", data=b"{}")
    assert answer.status == 503
    assert "No replica controls the endpoints" in await answer.text()
    # A controller silent for longer than the replica timeout is no controller either.
    replica.controller_at("http://127.0.0.1:1", heartbeat=time.time() - 3600.0)
    answer = await front.post("/", data=b"{}")
    assert answer.status == 503
    assert "No replica controls the endpoints" in await answer.text()


async def test_a_request_already_passed_on_is_not_passed_again(
    replica: Replica,
    controller: tuple[TestServer, Received],
    front: TestClient[web.Request, web.Application],
) -> None:
    server, received = controller
    replica.controller_at(str(server.make_url("")).rstrip("/"))
    answer = await front.post("/", data=b"{}", headers={FORWARDED_HEADER: "another-replica"})
    assert answer.status == 503
    assert "no longer controls the endpoints" in await answer.text()
    assert received.requests == []


async def test_an_unreachable_controller_is_a_503(
    replica: Replica, front: TestClient[web.Request, web.Application]
) -> None:
    replica.controller_at(f"http://127.0.0.1:{free_port()}")
    answer = await front.post("/", data=b"{}")
    assert answer.status == 503
    assert "did not answer" in await answer.text()


async def test_a_controller_that_answers_too_late_is_a_503(
    replica: Replica, front: TestClient[web.Request, web.Application]
) -> None:
    # A controller that never answers: a listening socket nobody accepts from.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host, port = silent.getsockname()
        replica.forwarder = ControllerForwarder(
            replica.node, ReplicaSettings(forward_timeout_seconds=0.2)
        )
        try:
            replica.controller_at(f"http://{host}:{port}")
            answer = await front.post("/", data=b"{}")
        finally:
            await replica.forwarder.close()
    assert answer.status == 503
    assert "did not answer" in await answer.text()


async def test_a_controller_not_yet_listening_gets_the_request_once_it_does(
    replica: Replica, front: TestClient[web.Request, web.Application]
) -> None:
    # A replica that has just taken control is announced before its internal listener accepts.
    received = Received()

    async def handle(request: web.Request) -> web.Response:
        received.requests.append(
            (request.method, request.raw_path, CIMultiDict(request.headers), await request.read())
        )
        return web.Response(status=200, text="late but there")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    port = free_port()
    replica.controller_at(f"http://127.0.0.1:{port}")
    sent = asyncio.create_task(front.post("/", data=b"{}"))
    await asyncio.sleep(0.5)
    assert not sent.done()
    server = TestServer(app, port=port)
    await server.start_server()
    try:
        answer = await sent
        assert answer.status == 200
        assert await answer.text() == "late but there"
    finally:
        await server.close()
    assert len(received.requests) == 1


async def test_a_request_waits_for_a_controller_to_appear(
    replica: Replica,
    front: TestClient[web.Request, web.Application],
    controller: tuple[TestServer, Received],
) -> None:
    # Between a controller's death and the takeover, or until its heartbeat resumes after a
    # database outage, no row names a live controller.
    server, received = controller
    sent = asyncio.create_task(front.post("/", data=b"{}"))
    await asyncio.sleep(0.5)
    assert not sent.done()
    replica.controller_at(str(server.make_url("")).rstrip("/"))
    answer = await sent
    assert answer.status == 400
    assert await answer.read() == ANSWER_BODY
    assert len(received.requests) == 1
