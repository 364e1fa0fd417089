"""The connection edge: the body budget and the limits directly, then the server over real sockets
(the real application behind `EdgeRunner` on a free loopback port)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
import resource
import subprocess
import sys
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from splitserve.app import create_app
from splitserve.config import EdgeSettings, Settings
from splitserve.wiring.edge import (
    BodyBudget,
    EdgeLimitError,
    EdgeLimits,
    EdgeProtocol,
    EdgeRunner,
    EdgeServer,
    MemoryTrimmer,
    freeze_start_up,
)

_MIB = 1024 * 1024
# How long a test waits for something the server does on its own (generous: a busy machine).
_PATIENCE_SECONDS = 15.0


# --- the budget and the limits, directly -----------------------------------------------------


def test_budget_admits_bodies_until_the_limit_and_takes_back_what_is_released() -> None:
    budget = BodyBudget(1000)
    assert budget.reserve(600)
    assert budget.reserve(400)
    assert not budget.reserve(1)  # full
    assert budget.in_flight == 1000  # a refusal counts nothing
    budget.release(600)
    assert budget.reserve(500)
    assert not budget.reserve(101)
    budget.release(400)
    budget.release(500)
    assert budget.in_flight == 0


def test_budget_always_admits_a_lone_body() -> None:
    # A limit below one body's size serialises such bodies but never refuses one for ever.
    budget = BodyBudget(10)
    assert budget.reserve(6 * _MIB)
    assert not budget.reserve(1)
    budget.release(6 * _MIB)
    assert budget.reserve(6 * _MIB)


def test_limits_derive_from_descriptors_and_memory() -> None:
    edge = EdgeSettings()
    limits = EdgeLimits.derive(edge, descriptor_limit=1024, memory_bytes=4096 * _MIB)
    # Two descriptors per connection (its own and its forward to a worker) after the reserve.
    assert limits.max_connections == (1024 - edge.descriptor_reserve) // 2
    assert limits.max_inflight_body_bytes == 512 * _MIB  # 1/8 of memory
    large = EdgeLimits.derive(edge, descriptor_limit=1024, memory_bytes=1024 * 1024 * _MIB)
    assert large.max_inflight_body_bytes == edge.inflight_body_bytes_cap
    given = EdgeLimits.derive(
        replace(edge, max_connections=10, max_inflight_body_bytes=123),
        descriptor_limit=1024,
        memory_bytes=4096 * _MIB,
    )
    assert (given.max_connections, given.max_inflight_body_bytes) == (10, 123)


def test_a_descriptor_limit_below_the_reserve_is_refused_by_name() -> None:
    edge = EdgeSettings()
    with pytest.raises(EdgeLimitError, match=r"file descriptor limit \(200\).*ulimit -n"):
        EdgeLimits.derive(edge, descriptor_limit=200, memory_bytes=4096 * _MIB)
    # With the cap given, the operator has chosen: it starts (and warns).
    assert (
        EdgeLimits.derive(
            replace(edge, max_connections=5), descriptor_limit=200, memory_bytes=4096 * _MIB
        ).max_connections
        == 5
    )


def _python_with_descriptor_limit(soft: int, hard: int, code: str) -> list[str]:
    """A Python command that lowers its own descriptor limit to (soft, hard), then runs `code`
    (the child does it itself: no preexec_fn in the test process)."""
    lower = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))"
    return [sys.executable, "-c", f"{lower}\n{code}"]


def test_serve_refuses_to_start_with_too_few_descriptors(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    command = _python_with_descriptor_limit(
        200,
        200,  # hard too, so that it cannot be raised
        "from splitserve.cli import main\n"
        f"raise SystemExit(main(['serve', '--port', '0', '--state-dir', {state!r}]))",
    )
    child = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert child.returncode == 2, child.stderr
    assert "file descriptor limit (200)" in child.stderr
    assert "ulimit -n" in child.stderr


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 300:
        pytest.skip("the hard limit leaves no room to lower the soft one")
    lowered = 300
    command = _python_with_descriptor_limit(
        lowered,
        hard,
        "from splitserve.wiring.edge import raise_descriptor_limit\n"
        "print(*raise_descriptor_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])",
    )
    child = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    before, after, in_force = map(int, child.stdout.split())
    assert before == lowered
    assert after == in_force
    assert in_force == hard if hard != resource.RLIM_INFINITY else in_force > lowered


async def test_the_trimmer_trims_once_per_interval() -> None:
    trimmer = MemoryTrimmer(asyncio.get_running_loop(), 0.01)
    for _ in range(10):
        trimmer.request()  # one trim is due: the others fold into it
    await _eventually(lambda: trimmer.trims == 1)
    await asyncio.sleep(0.05)
    assert trimmer.trims == 1
    trimmer.request()
    trimmer.close()  # cancelled before it was due
    await asyncio.sleep(0.05)
    assert trimmer.trims == 1


# --- the server, over sockets ------------------------------------------------------------------


class Edge:
    """A gateway application served by an `EdgeServer` on a free loopback port."""

    def __init__(self, server: EdgeServer, port: int) -> None:
        self.server = server
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw connection to the server."""
        return await asyncio.open_connection("127.0.0.1", self.port)


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **edge: object) -> AsyncIterator[Edge]:
    """The real application (no endpoints) behind the edge, with `edge` settings changed."""
    settings = Settings(
        state_dir=tmp_path / "state",
        model_store=tmp_path / "models",
        edge=replace(EdgeSettings(), **edge),  # type: ignore[arg-type]
    )
    limits = EdgeLimits.derive(settings.edge, descriptor_limit=4096, memory_bytes=4096 * _MIB)
    runner = EdgeRunner(create_app(settings), settings, limits)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield Edge(runner.edge, site.port)
    finally:
        await runner.cleanup()


async def _eventually(condition: Callable[[], bool]) -> None:
    """Wait until `condition` holds (the server acts on its own loop turns and timers)."""
    async with asyncio.timeout(_PATIENCE_SECONDS):
        while not condition():  # noqa: ASYNC110 (the server's state has no event to wait on)
            await asyncio.sleep(0.01)


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """What the server sends until it closes the connection."""
    received = b""
    async with asyncio.timeout(_PATIENCE_SECONDS):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                received += chunk
    return received


def _invocation_head(length: int, endpoint: str = "e") -> bytes:
    return (
        f"POST /endpoints/{endpoint}/invocations HTTP/1.1\r\nHost: gateway\r\n"
        f"Content-Type: text/csv\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def _ping(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/ping") as response:
        return response.status


async def test_bodies_beyond_the_budget_get_503_with_retry_after(tmp_path: Path) -> None:
    async with serving(tmp_path, max_inflight_body_bytes=1000) as edge:
        # One request holds 900 bytes of the budget: its body has not all arrived yet.
        reader, writer = await edge.connect()
        writer.write(_invocation_head(900) + b"1" * 100)
        await writer.drain()
        await _eventually(lambda: edge.server.budget.in_flight == 900)
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{edge.url}/endpoints/e/invocations",
                data=b"1" * 200,
                headers={"Content-Type": "text/csv"},
            ) as refused:
                assert refused.status == 503
                assert refused.headers["Retry-After"] == "1"
                assert refused.headers["x-amzn-ErrorType"] == "ServiceUnavailable"
                assert refused.headers["x-amzn-RequestId"]
                body = await refused.json()
                assert body["ErrorCode"] == "ServiceUnavailable"
                assert "memory" in body["Message"]
            # The control plane answers in its own format.
            async with session.post(
                edge.url,
                data=b"{" + b" " * 198 + b"}",
                headers={
                    "X-Amz-Target": "SageMaker.ListEndpoints",
                    "Content-Type": "application/x-amz-json-1.1",
                },
            ) as control:
                assert control.status == 503
                assert control.headers["Retry-After"] == "1"
                assert (await control.json(content_type=None))["__type"] == "ServiceUnavailable"
            # Requests without a body pass.
            async with session.get(f"{edge.url}/ping") as ping:
                assert ping.status == 200
            # The held request completes; what it reserved comes back.
            writer.write(b"1" * 800)
            await writer.drain()
            answer = await reader.readuntil(b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 ")  # endpoint e does not exist
            await _eventually(lambda: edge.server.budget.in_flight == 0)
            async with session.post(
                f"{edge.url}/endpoints/e/invocations",
                data=b"1" * 200,
                headers={"Content-Type": "text/csv"},
            ) as admitted:
                assert admitted.status == 400
        writer.close()
        assert edge.server.refused_bodies == 2


async def test_a_request_abandoned_mid_body_gives_its_budget_back(tmp_path: Path) -> None:
    async with serving(tmp_path, max_inflight_body_bytes=1000) as edge:
        _, writer = await edge.connect()
        writer.write(_invocation_head(900) + b"1" * 10)
        await writer.drain()
        await _eventually(lambda: edge.server.budget.in_flight == 900)
        writer.transport.abort()  # the client goes away
        await _eventually(lambda: edge.server.budget.in_flight == 0)


async def test_chunked_bodies_count_as_the_largest_body(tmp_path: Path) -> None:
    async with serving(tmp_path, max_inflight_body_bytes=7 * _MIB) as edge:
        reader, writer = await edge.connect()
        writer.write(
            b"POST /endpoints/e/invocations HTTP/1.1\r\nHost: gateway\r\n"
            b"Content-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n1,2\r\n"
        )
        await writer.drain()
        await _eventually(lambda: edge.server.budget.in_flight == 6 * _MIB)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        await _eventually(lambda: edge.server.budget.in_flight == 0)
        writer.close()


async def test_large_bodies_released_trigger_a_memory_trim(tmp_path: Path) -> None:
    async with serving(tmp_path, memory_trim_interval_seconds=0.01) as edge:
        async with aiohttp.ClientSession() as session:
            for size in (100, 2 * _MIB, 2 * _MIB):
                async with session.post(
                    f"{edge.url}/endpoints/e/invocations",
                    data=io.BytesIO(b"1" * size),
                    headers={"Content-Type": "text/csv", "Content-Length": str(size)},
                ) as response:
                    assert response.status == 400
        await _eventually(lambda: edge.server.trimmer.trims >= 1)


async def test_a_trickled_head_is_closed_while_others_are_served(tmp_path: Path) -> None:
    async with serving(tmp_path, header_read_timeout_seconds=0.4) as edge:
        reader, writer = await edge.connect()
        head = _invocation_head(3)

        async def trickle() -> None:
            # A header byte every 50 ms: the head would take ~5 s, far past the timeout.
            with contextlib.suppress(ConnectionError):
                for byte in head:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle())
        # Meanwhile the gateway serves everyone else.
        for _ in range(3):
            assert await _ping(edge.url) == 200
        assert await _closed_by_server(reader) == b""  # closed without an answer
        assert not trickling.done(), "the head was sent whole before the connection closed"
        trickling.cancel()
        assert edge.server.slow_heads_closed == 1
        # A connection that sends nothing is closed too.
        silent_reader, silent = await edge.connect()
        assert await _closed_by_server(silent_reader) == b""
        silent.close()
        writer.close()


async def test_kept_alive_connections_are_not_timed_between_requests(tmp_path: Path) -> None:
    async with serving(tmp_path, header_read_timeout_seconds=0.2) as edge:
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.get(f"{edge.url}/ping") as response:
                    assert response.status == 200
                # Idle longer than the header timeout: idle is the keep-alive timeout's business.
                await asyncio.sleep(0.5)
        assert edge.server.slow_heads_closed == 0
        # Nor are a body's bytes arriving over several reads taken for the start of a head.
        reader, writer = await edge.connect()
        for _ in range(2):
            writer.write(_invocation_head(4))
            await writer.drain()
            for part in (b"1,", b"2\n"):
                await asyncio.sleep(0.05)
                writer.write(part)
                await writer.drain()
            answer = await reader.readuntil(b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400 ")
            length = int(answer.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            await asyncio.sleep(0.5)
        assert edge.server.slow_heads_closed == 0
        writer.close()


async def test_at_the_cap_idle_connections_are_closed_least_recently_active_first(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, max_connections=4, header_read_timeout_seconds=60.0) as edge:
        idle = [await edge.connect() for _ in range(4)]
        await _eventually(lambda: len(edge.server.clients) == 4)
        # The oldest becomes the most recently active: a request on it.
        reader, writer = idle[0]
        writer.write(b"GET /ping HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        await reader.readexactly(2)  # "ok"
        # A fifth connection: the least recently active idle one (the second opened) is closed.
        assert await _ping(edge.url) == 200
        assert await _closed_by_server(idle[1][0]) == b""
        assert edge.server.evicted_connections >= 1
        writer.write(b"GET /ping HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        for _, other in idle:
            other.close()


async def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(tmp_path: Path) -> None:
    async with serving(tmp_path, max_connections=3, header_read_timeout_seconds=60.0) as edge:
        busy = []
        for _ in range(3):
            reader, writer = await edge.connect()
            writer.write(_invocation_head(10) + b"1")  # a request in progress: body awaited
            await writer.drain()
            busy.append((reader, writer))
        await _eventually(lambda: edge.server.budget.in_flight == 30)
        refused_reader, refused = await edge.connect()
        answer = await _closed_by_server(refused_reader)
        assert answer.startswith(b"HTTP/1.1 503 ")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"Retry-After: 1" in head
        assert b"Connection: close" in head
        assert json.loads(body)["ErrorCode"] == "ServiceUnavailable"
        assert edge.server.refused_connections == 1
        # The busy ones carry on and finish.
        for reader, writer in busy:
            writer.write(b"1" * 9)
            await writer.drain()
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
            writer.close()
        refused.close()


async def test_a_request_read_whole_costs_one_pass_through_the_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiohttp's body reader asks the protocol to resume reading after each read, paused or not;
    # with nothing paused, the edge does not feed its parser an empty read for it.
    reads: list[int] = []
    received = EdgeProtocol.data_received

    def counted(self: EdgeProtocol, data: bytes) -> None:
        reads.append(len(data))
        received(self, data)

    monkeypatch.setattr(EdgeProtocol, "data_received", counted)
    async with serving(tmp_path) as edge:
        reader, writer = await edge.connect()
        request = _invocation_head(3) + b"1,2"
        for _ in range(3):
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 ")  # endpoint e does not exist
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()
    assert reads == [len(request)] * 3


async def test_a_body_over_the_read_buffer_pauses_and_resumes_reading(tmp_path: Path) -> None:
    # A body larger than aiohttp's read buffer pauses the connection while it waits to be read;
    # reading resumes (through aiohttp's own resume_reading) and the whole body is taken.
    async with serving(tmp_path) as edge, aiohttp.ClientSession() as session:
        for size in (4 * _MIB, 100):
            async with session.post(
                f"{edge.url}/endpoints/e/invocations",
                data=io.BytesIO(b"1" * size),
                headers={"Content-Type": "text/csv", "Content-Length": str(size)},
            ) as response:
                assert response.status == 400
                assert "not found" in (await response.json())["Message"]
        assert edge.server.budget.in_flight == 0


class _Node:
    """An object in a reference cycle: only the collector frees it."""

    def __init__(self) -> None:
        self.itself = self


def test_start_up_is_collected_then_frozen_out_of_later_collections() -> None:
    kept: list[list[int]] = [[] for _ in range(100)]  # what start-up keeps: tracked lists
    cycle = _Node()
    collected = weakref.ref(cycle)
    del cycle
    try:
        freeze_start_up()
        assert collected() is None  # garbage is collected, not frozen
        assert gc.get_freeze_count() >= len(kept)
        tracked = {id(item) for item in gc.get_objects()}
        assert not any(id(item) in tracked for item in kept)  # later collections skip them
    finally:
        gc.unfreeze()
