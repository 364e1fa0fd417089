"""The forwarding client against aiohttp's ClientSession: one POST /invocations of 100 bytes each.

Both clients send to the same aiohttp echo server, which runs in a subprocess on a Unix socket so
that the client's process holds only client work. Each benchmark round makes N sequential requests
in one uvloop event loop, and the timer is the process's CPU time divided by N: the table reads
CPU seconds per request spent by the client, the figure the gateway's per-request budget is set
in. The wall-clock time per request (which includes the server) goes to `extra_info`. A third
entry, a bare Protocol that writes a prebuilt request and waits for the echo without parsing it,
shows what the socket round trip and the event loop cost on their own.

Run: `make bench` (or `.venv/bin/pytest benches/bench_upstream.py --benchmark-enable`).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from pytest_benchmark.fixture import BenchmarkFixture

from splitserve.contract.upstream import UpstreamAddress, UpstreamPool

#: Requests per benchmark round.
N = 200
#: Rounds per benchmark, fixed: the CPU timer reads far less than wall time, so pytest-benchmark's
#: own round count (max_time, measured with that timer) would run for many minutes.
ROUNDS = 30
WARMUP_ROUNDS = 2
BODY = bytes(range(100))
TIMEOUT = 5.0
SERVER_START_SECONDS = 30.0

#: The echo server, run with `python -c SERVER <socket path>`.
SERVER = """
import asyncio, sys
import uvloop
from aiohttp import web

async def echo(request):
    return web.Response(body=await request.read(), content_type="application/octet-stream")

async def main(path):
    app = web.Application()
    app.router.add_post("/invocations", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    await asyncio.Event().wait()

uvloop.run(main(sys.argv[1]))
"""


def cpu_seconds_per_request() -> float:
    """The benchmark timer: process CPU time scaled by 1/N, so one round reads as one request."""
    return time.process_time() / N


def accepts_connections(path: Path) -> bool:
    """Whether something listens on the Unix socket at `path` (the file appears before listen())."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def echo_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The path of the echo server's socket; the server is stopped (terminate, kill) afterwards."""
    path = tmp_path_factory.mktemp("bench") / "echo.sock"
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(path)])
    try:
        started = time.perf_counter()
        while not accepts_connections(path):
            if server.poll() is not None or time.perf_counter() - started > SERVER_START_SECONDS:
                raise RuntimeError("the echo server did not start")
            time.sleep(0.02)
        yield str(path)
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One uvloop event loop for all rounds of the module's benchmarks."""
    event_loop = uvloop.new_event_loop()
    yield event_loop
    event_loop.close()


def run_rounds(
    benchmark: BenchmarkFixture,
    loop: asyncio.AbstractEventLoop,
    forward: Callable[[], Coroutine[Any, Any, bytes]],
) -> None:
    """Benchmark N sequential forwards per round and check that every answer echoed the body."""
    wall: list[float] = []
    failures: list[bytes] = []

    def one_round() -> None:
        async def forwards() -> None:
            for _ in range(N):
                body = await forward()
                if body != BODY:
                    failures.append(body)

        started = time.perf_counter()
        loop.run_until_complete(forwards())
        wall.append((time.perf_counter() - started) / N)

    # pytest-benchmark's pedantic() carries no annotations.
    benchmark.pedantic(  # type: ignore[no-untyped-call]
        one_round, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS
    )
    assert not failures
    benchmark.extra_info["requests_per_round"] = N
    benchmark.extra_info["wall_us_per_request"] = round(statistics.median(wall) * 1e6, 1)


@pytest.mark.benchmark(group="upstream - forward", timer=cpu_seconds_per_request)
def test_forward_upstream_pool(
    benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop, echo_socket: str
) -> None:
    """splitserve's UpstreamPool."""
    pool = UpstreamPool(
        UpstreamAddress.unix(echo_socket),
        max_idle=4,
        connect_timeout=TIMEOUT,
        max_response_bytes=1 << 20,
    )
    headers = ((b"content-type", b"application/octet-stream"),)

    async def forward() -> bytes:
        response = await pool.request(b"POST", b"/invocations", headers, BODY, TIMEOUT)
        return response.body

    try:
        run_rounds(benchmark, loop, forward)
    finally:
        loop.run_until_complete(pool.close())


@pytest.mark.benchmark(group="upstream - forward", timer=cpu_seconds_per_request)
def test_forward_aiohttp_client_session(
    benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop, echo_socket: str
) -> None:
    """The reference: a plain aiohttp.ClientSession over a UnixConnector."""

    async def open_session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=echo_socket))

    session = loop.run_until_complete(open_session())
    headers = {"Content-Type": "application/octet-stream"}
    client_timeout = aiohttp.ClientTimeout(total=TIMEOUT)

    async def forward() -> bytes:
        async with session.post(
            "http://localhost/invocations", data=BODY, headers=headers, timeout=client_timeout
        ) as response:
            return await response.read()

    try:
        run_rounds(benchmark, loop, forward)
    finally:
        loop.run_until_complete(session.close())


class _RawEcho(asyncio.Protocol):
    """The floor: a prebuilt request out, bytes in until the echoed body is there; no parsing."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.received += data
        head_end = self.received.find(b"\r\n\r\n")
        if head_end >= 0 and len(self.received) >= head_end + 4 + len(BODY) and self.waiter:
            self.waiter.set_result(bytes(self.received[-len(BODY) :]))
            self.received.clear()


@pytest.mark.benchmark(group="upstream - forward", timer=cpu_seconds_per_request)
def test_forward_raw_protocol_floor(
    benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop, echo_socket: str
) -> None:
    """What the socket round trip and the event loop cost on their own, for scale."""
    transport, protocol = loop.run_until_complete(
        loop.create_unix_connection(_RawEcho, echo_socket)
    )
    request = (
        b"POST /invocations HTTP/1.1\r\nhost: localhost\r\n"
        b"content-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n%s"
    ) % (len(BODY), BODY)

    async def forward() -> bytes:
        protocol.waiter = loop.create_future()
        transport.write(request)
        return await protocol.waiter

    try:
        run_rounds(benchmark, loop, forward)
    finally:
        transport.close()
        loop.run_until_complete(protocol.lost)
