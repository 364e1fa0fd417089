"""The forwarding client against real servers: aiohttp on a Unix socket and on loopback TCP, and raw
asyncio servers that misbehave on purpose (stale keep-alive, cut-off, malformed and silent answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest
from aiohttp import web

from splitserve.contract.upstream import (
    UpstreamAddress,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)

SIX_MIB = 6 * 1024 * 1024
TIMEOUT = 5.0


# --- servers --------------------------------------------------------------------------------------


@dataclass
class Counter:
    """What a test server saw: one entry per accepted connection, the requests on each.

    The aiohttp server counts requests; the raw servers count connections (their entries stay 0)
    and the connections that ended (`closed`).
    """

    requests_per_connection: list[int] = field(default_factory=list)
    closed: int = 0

    @property
    def connections(self) -> int:
        return len(self.requests_per_connection)

    @property
    def requests(self) -> int:
        return sum(self.requests_per_connection)


def _echo_app(counter: Counter) -> web.Application:
    """The model-worker stand-in: echoes the body and the x-echo-* headers back."""
    seen: dict[object, int] = {}

    def count(request: web.Request) -> None:
        key = request.transport
        if key not in seen:
            seen[key] = len(counter.requests_per_connection)
            counter.requests_per_connection.append(0)
        counter.requests_per_connection[seen[key]] += 1

    async def invocations(request: web.Request) -> web.Response:
        count(request)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith("x-echo-")}
        headers["X-Content-Type-Seen"] = request.headers.get("Content-Type", "")
        headers["X-Host-Seen"] = request.headers.get("Host", "")
        return web.Response(body=body, headers=headers, content_type="application/octet-stream")

    async def ping(request: web.Request) -> web.Response:
        count(request)
        return web.Response(text="pong")

    async def chunked(request: web.Request) -> web.StreamResponse:
        count(request)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for piece in (b"first,", b"second,", b"x" * 100_000, b"last"):
            await response.write(piece)
        await response.write_eof()
        return response

    async def close(request: web.Request) -> web.Response:
        count(request)
        response = web.Response(body=b"bye")
        response.force_close()
        return response

    async def big(request: web.Request) -> web.StreamResponse:
        count(request)
        size = int(request.query["size"])
        if request.query.get("chunked"):
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(size // 1000):
                await response.write(b"y" * 1000)
            await response.write_eof()
            return response
        return web.Response(body=b"y" * size)

    app = web.Application(client_max_size=SIX_MIB + 1024)
    app.router.add_post("/invocations", invocations)
    app.router.add_get("/ping", ping)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/close", close)
    app.router.add_get("/big", big)
    return app


@contextlib.asynccontextmanager
async def aiohttp_server(
    address_kind: str, tmp_path: Path, keepalive_timeout: float = 75.0
) -> AsyncIterator[tuple[UpstreamAddress, Counter]]:
    """An aiohttp echo server on a Unix socket in tmp_path, or a free port of 127.0.0.1 or ::1."""
    counter = Counter()
    runner = web.AppRunner(_echo_app(counter), keepalive_timeout=keepalive_timeout)
    await runner.setup()
    try:
        if address_kind == "unix":
            path = str(tmp_path / "worker.sock")
            await web.UnixSite(runner, path).start()
            yield UpstreamAddress.unix(path), counter
        else:
            family, host = (
                (socket.AF_INET6, "::1")
                if address_kind == "tcp6"
                else (socket.AF_INET, "127.0.0.1")
            )
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.bind((host, 0))
            except OSError:
                sock.close()
                pytest.skip(f"cannot listen on {host}")
            port = sock.getsockname()[1]
            await web.SockSite(runner, sock).start()
            yield UpstreamAddress.tcp(host, port), counter
    finally:
        await runner.cleanup()


Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Handler = Callable[[Reader, Writer, int], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's body off a raw connection; None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return await reader.readexactly(length)


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@contextlib.asynccontextmanager
async def raw_server(tmp_path: Path, handler: Handler) -> AsyncIterator[Counter]:
    """A raw asyncio server on a Unix socket; handler(reader, writer, connection_index) speaks."""
    counter = Counter()
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = counter.connections
        counter.requests_per_connection.append(0)
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Stopped by the teardown below. Ending normally keeps Python 3.11's start_server
            # callback from reporting the cancellation as an unhandled error.
            pass
        finally:
            counter.closed += 1
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_unix_server(serve, path=str(tmp_path / "raw.sock"))
    try:
        yield counter
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await server.wait_closed()


def raw_address(tmp_path: Path) -> UpstreamAddress:
    return UpstreamAddress.unix(str(tmp_path / "raw.sock"))


class MakePool(Protocol):
    """The `pools` fixture: UpstreamPool's constructor with test defaults."""

    def __call__(
        self,
        address: UpstreamAddress,
        *,
        max_idle: int = ...,
        connect_timeout: float = ...,
        max_response_bytes: int = ...,
        max_connections: int | None = ...,
    ) -> UpstreamPool: ...


@pytest.fixture
async def pools() -> AsyncIterator[MakePool]:
    """Make pools with test defaults; every one is closed at the end of the test."""
    made: list[UpstreamPool] = []

    def make(
        address: UpstreamAddress,
        *,
        max_idle: int = 8,
        connect_timeout: float = 2.0,
        max_response_bytes: int = SIX_MIB,
        max_connections: int | None = None,
    ) -> UpstreamPool:
        pool = UpstreamPool(
            address,
            max_idle=max_idle,
            connect_timeout=connect_timeout,
            max_response_bytes=max_response_bytes,
            max_connections=max_connections,
        )
        made.append(pool)
        return pool

    yield make
    for pool in made:
        await pool.close()


async def post(pool: UpstreamPool, body: bytes, seconds: float = TIMEOUT) -> UpstreamResponse:
    return await pool.request(
        b"POST",
        b"/invocations",
        [(b"Content-Type", b"application/octet-stream")],
        body,
        seconds,
    )


async def get(pool: UpstreamPool, path: bytes) -> UpstreamResponse:
    return await pool.request(b"GET", path, (), b"", TIMEOUT)


# --- the address ----------------------------------------------------------------------------------


def test_address_str_and_validation() -> None:
    assert str(UpstreamAddress.unix("/run/w.sock")) == "unix:/run/w.sock"
    assert str(UpstreamAddress.tcp("127.0.0.1", 8080)) == "127.0.0.1:8080"
    with pytest.raises(ValueError, match="unix_path"):
        UpstreamAddress(unix_path="/a", host="h", port=1)
    with pytest.raises(ValueError, match="unix_path"):
        UpstreamAddress(unix_path=None, host="h", port=None)


# --- well-behaved servers -------------------------------------------------------------------------


@pytest.mark.parametrize("address_kind", ["unix", "tcp", "tcp6"])
async def test_round_trip(address_kind: str, tmp_path: Path, pools: MakePool) -> None:
    async with aiohttp_server(address_kind, tmp_path) as (address, _):
        pool = pools(address)
        response = await pool.request(
            b"POST",
            b"/invocations",
            [(b"Content-Type", b"text/csv"), (b"X-Echo-Custom", b"attr=1; other=2")],
            b"1,2,3\n",
            TIMEOUT,
        )
        assert response.status == 200
        assert response.body == b"1,2,3\n"
        assert response.header(b"x-echo-custom") == b"attr=1; other=2"
        assert response.header(b"X-Echo-Custom") == b"attr=1; other=2"
        assert response.header(b"x-content-type-seen") == b"text/csv"
        expected_host = {"unix": "localhost", "tcp": str(address)}.get(
            address_kind, f"[{address.host}]:{address.port}"
        )
        assert response.header(b"x-host-seen") == expected_host.encode()
        assert response.header(b"x-missing") is None
        assert all(name == name.lower() for name, _ in response.headers)
        assert (b"content-length", b"6") in response.headers

        ping = await get(pool, b"/ping")
        assert (ping.status, ping.body) == (200, b"pong")
        not_found = await get(pool, b"/nowhere")
        assert not_found.status == 404


@pytest.mark.parametrize(
    "body",
    [b"", bytes(range(256)) * 4, b"\r\n\r\n\x00HTTP/1.1 200 OK\r\n", os.urandom(SIX_MIB)],
    ids=["empty", "binary", "crlf", "6MiB"],
)
async def test_bodies_are_exact(body: bytes, tmp_path: Path, pools: MakePool) -> None:
    async with aiohttp_server("unix", tmp_path) as (address, counter):
        pool = pools(address)
        for _ in range(2):
            response = await post(pool, body)
            assert response.status == 200
            assert response.body == body
        assert counter.connections == 1


async def test_chunked_response(tmp_path: Path, pools: MakePool) -> None:
    async with aiohttp_server("unix", tmp_path) as (address, counter):
        pool = pools(address)
        response = await get(pool, b"/chunked")
        assert response.header(b"transfer-encoding") == b"chunked"
        assert response.body == b"first,second," + b"x" * 100_000 + b"last"
        assert (await get(pool, b"/chunked")).body == response.body
        assert counter.connections == 1


async def test_connection_close_is_honoured(tmp_path: Path, pools: MakePool) -> None:
    async with aiohttp_server("unix", tmp_path) as (address, counter):
        pool = pools(address)
        for _ in range(3):
            response = await get(pool, b"/close")
            assert (response.status, response.body) == (200, b"bye")
            assert pool.idle_connections == 0
        assert counter.connections == 3


@pytest.mark.parametrize("address_kind", ["unix", "tcp"])
async def test_sequential_requests_reuse_one_connection(
    address_kind: str, tmp_path: Path, pools: MakePool
) -> None:
    async with aiohttp_server(address_kind, tmp_path) as (address, counter):
        pool = pools(address)
        for index in range(20):
            assert (await post(pool, b"n=%d" % index)).body == b"n=%d" % index
            assert pool.idle_connections == 1
        assert counter.requests_per_connection == [20]


async def test_concurrent_requests_get_their_own_answers(tmp_path: Path, pools: MakePool) -> None:
    async with aiohttp_server("unix", tmp_path) as (address, counter):
        pool = pools(address, max_idle=4)
        bodies = [os.urandom(16 + index * 997) for index in range(32)]
        for _ in range(2):
            responses = await asyncio.gather(*(post(pool, body) for body in bodies))
            assert [response.body for response in responses] == bodies
            assert pool.idle_connections <= 4
        assert counter.requests == 64


async def test_max_idle_zero_keeps_nothing(tmp_path: Path, pools: MakePool) -> None:
    async with aiohttp_server("unix", tmp_path) as (address, counter):
        pool = pools(address, max_idle=0)
        for _ in range(3):
            assert (await post(pool, b"x")).body == b"x"
        assert pool.idle_connections == 0
        assert counter.connections == 3


# --- stale keep-alive -----------------------------------------------------------------------------


async def test_idle_connection_closed_by_server_is_replaced(
    tmp_path: Path, pools: MakePool
) -> None:
    async with aiohttp_server("unix", tmp_path, keepalive_timeout=0.05) as (address, counter):
        pool = pools(address)
        assert (await post(pool, b"one")).body == b"one"
        await asyncio.sleep(0.3)  # the server's keep-alive timeout closes the idle connection
        assert pool.idle_connections == 0
        assert (await post(pool, b"two")).body == b"two"
        assert counter.requests_per_connection == [1, 1]


async def test_stale_connection_is_retried_once(tmp_path: Path, pools: MakePool) -> None:
    # Answers the first request of each connection, then drops the connection on the next one
    # without a byte of answer: what a server that closed an idle connection looks like to us.
    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        assert await read_request(reader) is not None
        writer.write(ok(b"first on %d" % index))
        await reader.readexactly(1)
        writer.transport.abort()

    async with raw_server(tmp_path, handler) as counter:
        pool = pools(raw_address(tmp_path))
        assert (await post(pool, b"a")).body == b"first on 0"
        assert (await post(pool, b"b")).body == b"first on 1"
        assert counter.connections == 2


async def test_stale_retry_happens_only_once(tmp_path: Path, pools: MakePool) -> None:
    # Answers only the very first request; every later request loses its connection unanswered.
    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        if index == 0:
            assert await read_request(reader) is not None
            writer.write(ok(b"only"))
        await reader.readexactly(1)
        writer.transport.abort()

    async with raw_server(tmp_path, handler) as counter:
        pool = pools(raw_address(tmp_path))
        assert (await post(pool, b"a")).body == b"only"
        with pytest.raises(UpstreamProtocolError, match="before any byte"):
            await post(pool, b"b")
        assert counter.connections == 2  # the reused one and exactly one fresh retry
        # A fresh connection failing the same way is not retried at all.
        with pytest.raises(UpstreamProtocolError, match="before any byte"):
            await post(pool, b"c")
        assert counter.connections == 3


async def test_an_instance_gone_while_holding_the_request_is_no_connect_error(
    tmp_path: Path, pools: MakePool
) -> None:
    # The instance reads the second request, hangs, and is killed (a SIGSTOPped worker replaced
    # after failing its health checks): its socket is gone when the pool retries the request.
    # The request reached it, so this must not look like "never reached the worker" (which the
    # runtime answers with a retryable 503 and a client would send again).
    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        assert await read_request(reader) is not None
        writer.write(ok(b"first"))
        assert await read_request(reader) is not None
        (tmp_path / "raw.sock").unlink()
        writer.transport.abort()

    async with raw_server(tmp_path, handler) as counter:
        pool = pools(raw_address(tmp_path))
        assert (await post(pool, b"a")).body == b"first"
        with pytest.raises(UpstreamProtocolError, match="refused a new one") as raised:
            await post(pool, b"b")
        assert isinstance(raised.value.__cause__, UpstreamConnectError)
        assert counter.connections == 1


async def test_no_retry_after_part_of_a_response(tmp_path: Path, pools: MakePool) -> None:
    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        assert await read_request(reader) is not None
        writer.write(ok(b"fine"))
        assert await read_request(reader) is not None
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        await writer.drain()
        writer.transport.abort()

    async with raw_server(tmp_path, handler) as counter:
        pool = pools(raw_address(tmp_path))
        assert (await post(pool, b"a")).body == b"fine"
        with pytest.raises(UpstreamProtocolError, match="mid-response"):
            await post(pool, b"b")
        assert counter.connections == 1
        assert pool.idle_connections == 0


async def test_body_cut_short_is_a_protocol_error(tmp_path: Path, pools: MakePool) -> None:
    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        assert await read_request(reader) is not None
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part")
        await writer.drain()

    async with raw_server(tmp_path, handler):
        pool = pools(raw_address(tmp_path))
        with pytest.raises(UpstreamProtocolError, match="mid-response"):
            await post(pool, b"a")


# --- unusual but valid responses ------------------------------------------------------------------


async def test_close_delimited_response(tmp_path: Path, pools: MakePool) -> None:
    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        assert await read_request(reader) is not None
        writer.write(b"HTTP/1.1 200 OK\r\nX-Kind: eof\r\n\r\n")
        for _ in range(5):
            writer.write(b"z" * 70_000)
            await writer.drain()

    async with raw_server(tmp_path, handler) as counter:
        pool = pools(raw_address(tmp_path))
        for _ in range(2):
            response = await post(pool, b"a")
            assert response.header(b"x-kind") == b"eof"
            assert response.body == b"z" * 350_000
            assert pool.idle_connections == 0
        assert counter.connections == 2


async def test_interim_100_continue_is_skipped(tmp_path: Path, pools: MakePool) -> None:
    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n" + ok(b"final"))

    async with raw_server(tmp_path, handler) as counter:
        pool = pools(raw_address(tmp_path))
        for _ in range(2):
            response = await post(pool, b"a")
            assert (response.status, response.body) == (200, b"final")
            assert response.header(b"x-interim") is None
        assert counter.connections == 1


async def test_unsolicited_second_response_is_not_reused(tmp_path: Path, pools: MakePool) -> None:
    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        while await read_request(reader) is not None:
            writer.write(ok(b"answer %d" % index) + ok(b"unasked"))

    async with raw_server(tmp_path, handler) as counter:
        pool = pools(raw_address(tmp_path))
        assert (await post(pool, b"a")).body == b"answer 0"
        assert (await post(pool, b"b")).body == b"answer 1"
        assert counter.connections == 2


async def test_early_answer_with_body_unread_is_not_reused(tmp_path: Path, pools: MakePool) -> None:
    # A server that refuses a large body without reading it: our write buffer still holds the rest
    # of the body, which the server would take for the next request.
    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        await asyncio.sleep(TIMEOUT)

    async with raw_server(tmp_path, handler):
        pool = pools(raw_address(tmp_path))
        response = await post(pool, os.urandom(SIX_MIB))
        assert response.status == 413
        assert pool.idle_connections == 0


# --- failures -------------------------------------------------------------------------------------


async def test_timeout_closes_the_connection(tmp_path: Path, pools: MakePool) -> None:
    # The first request is answered only after a long silence; the others at once.
    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        while (body := await read_request(reader)) is not None:
            if body == b"slow":
                await asyncio.sleep(0.5)
                writer.write(ok(b"old answer"))
            else:
                writer.write(ok(b"new answer"))

    async with raw_server(tmp_path, handler) as counter:
        pool = pools(raw_address(tmp_path))
        assert (await post(pool, b"fast")).body == b"new answer"
        started = time.perf_counter()
        with pytest.raises(UpstreamTimeout):
            await post(pool, b"slow", seconds=0.2)
        # Not early (uvloop's timers have millisecond resolution: 1 ms early is allowed). Not late
        # either, without timing it: the answer comes at 0.5 s, and the call raised instead.
        assert time.perf_counter() - started >= 0.199
        assert pool.idle_connections == 0
        assert (await post(pool, b"fast")).body == b"new answer"
        await asyncio.sleep(0.5)  # the old answer, if it were read, would be there by now
        assert (await post(pool, b"fast")).body == b"new answer"
        assert counter.connections == 2


async def test_timeouts_of_different_lengths_on_one_connection(
    tmp_path: Path, pools: MakePool
) -> None:
    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        while (body := await read_request(reader)) is not None:
            await asyncio.sleep(float(body))
            writer.write(ok(body))

    async with raw_server(tmp_path, handler) as counter:
        pool = pools(raw_address(tmp_path))
        # A short timeout after a long one on the same connection still fires on time...
        assert (await post(pool, b"0", seconds=TIMEOUT)).body == b"0"
        started = time.perf_counter()
        with pytest.raises(UpstreamTimeout):
            await post(pool, b"1.0", seconds=0.1)
        # The answer would have come at 1.0 s, inside the earlier request's 5 s: raising at all
        # shows the 0.1 s deadline fired; only "not early" is a time to check.
        assert time.perf_counter() - started >= 0.099
        # ...and a long one after a short one is not cut off by the short one's deadline.
        assert (await post(pool, b"0", seconds=0.1)).body == b"0"
        assert (await post(pool, b"0.3", seconds=TIMEOUT)).body == b"0.3"
        assert (await post(pool, b"0.3", seconds=TIMEOUT)).body == b"0.3"
        # A timer that fires on an idle connection disarms; the next request arms a new one.
        assert (await post(pool, b"0", seconds=0.05)).body == b"0"
        await asyncio.sleep(0.1)
        with pytest.raises(UpstreamTimeout):
            await post(pool, b"1.0", seconds=0.1)
        assert counter.connections == 2  # the first timeout closed connection 1; 2 took the rest


async def test_server_that_never_answers(tmp_path: Path, pools: MakePool) -> None:
    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        while await reader.read(65536):
            pass  # reads everything, answers nothing

    async with raw_server(tmp_path, handler) as counter:
        pool = pools(raw_address(tmp_path))
        started = time.perf_counter()
        with pytest.raises(UpstreamTimeout):
            await post(pool, b"a", seconds=0.1)
        # The server never answers: only the deadline could end the call; not before it.
        assert time.perf_counter() - started >= 0.099
        await asyncio.sleep(0.05)
        assert counter.closed == 1  # the timed-out connection was closed, not kept


async def test_connect_error_no_socket_file(tmp_path: Path, pools: MakePool) -> None:
    pool = pools(UpstreamAddress.unix(str(tmp_path / "absent.sock")))
    with pytest.raises(UpstreamConnectError, match=r"absent\.sock"):
        await post(pool, b"a")


async def test_connect_error_refused_tcp(pools: MakePool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but never listening: connections are refused
        pool = pools(UpstreamAddress.tcp("127.0.0.1", port))
        with pytest.raises(UpstreamConnectError) as caught:
            await post(pool, b"a")
        assert isinstance(caught.value.__cause__, ConnectionRefusedError)


@pytest.fixture
def unresponsive_tcp_port() -> Iterator[int]:
    """A loopback port whose listener never accepts and whose queue is full: connects hang there."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        # Linux drops a SYN while the accept queue is full, so later connects stay in SYN-SENT.
        for _ in range(4):
            filler = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        yield port


async def test_connect_timeout(unresponsive_tcp_port: int, pools: MakePool) -> None:
    pool = pools(UpstreamAddress.tcp("127.0.0.1", unresponsive_tcp_port), connect_timeout=0.1)
    started = time.perf_counter()
    with pytest.raises(UpstreamConnectError, match="timed out"):
        await post(pool, b"a", seconds=TIMEOUT)
    # The connect timeout, not the 5 s request timeout (that one raises UpstreamTimeout); not early.
    assert time.perf_counter() - started >= 0.099


async def test_request_timeout_shorter_than_connect_timeout(
    unresponsive_tcp_port: int, pools: MakePool
) -> None:
    pool = pools(UpstreamAddress.tcp("127.0.0.1", unresponsive_tcp_port), connect_timeout=5.0)
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeout):
        await post(pool, b"a", seconds=0.1)
    # The request's deadline, not the 5 s connect timeout (that one raises UpstreamConnectError).
    assert time.perf_counter() - started >= 0.099


@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ],
    ids=["garbage", "status", "content-length", "chunk-size", "upgrade"],
)
async def test_malformed_response(answer: bytes, tmp_path: Path, pools: MakePool) -> None:
    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        if index == 0:
            assert await read_request(reader) is not None
            writer.write(answer)
            await asyncio.sleep(TIMEOUT)
        while await read_request(reader) is not None:
            writer.write(ok(b"sane"))

    async with raw_server(tmp_path, handler) as counter:
        pool = pools(raw_address(tmp_path))
        with pytest.raises(UpstreamProtocolError, match="malformed"):
            await post(pool, b"a")
        assert pool.idle_connections == 0
        assert (await post(pool, b"b")).body == b"sane"
        assert counter.connections == 2


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_response_over_the_limit(chunked: bool, tmp_path: Path, pools: MakePool) -> None:
    async with aiohttp_server("unix", tmp_path) as (address, counter):
        pool = pools(address, max_response_bytes=10_000)
        query = b"&chunked=1" if chunked else b""
        assert len((await get(pool, b"/big?size=10000" + query)).body) == 10_000
        with pytest.raises(UpstreamProtocolError, match="over the limit of 10000 bytes"):
            await get(pool, b"/big?size=200000" + query)
        assert pool.idle_connections == 0
        assert len((await get(pool, b"/big?size=5000" + query)).body) == 5_000
        assert counter.connections == 2


async def test_header_injection_is_refused(tmp_path: Path, pools: MakePool) -> None:
    async with aiohttp_server("unix", tmp_path) as (address, counter):
        pool = pools(address)
        for header in [(b"X-A", b"1\r\nX-Injected: 1"), (b"X-A\n", b"1"), (b"X-A", b"\r")]:
            with pytest.raises(ValueError, match="CR or LF"):
                await pool.request(b"POST", b"/invocations", [header], b"\r\n", TIMEOUT)
        with pytest.raises(ValueError, match="CR or LF"):
            await pool.request(b"POST", b"/x HTTP/1.1\r\nX-A: 1", [], b"", TIMEOUT)
        with pytest.raises(ValueError, match="CR or LF"):
            await pool.request(b"POST", b"/invocations", [(b"X-A", b"\n")], os.urandom(SIX_MIB), 1)
        assert counter.connections == 0


async def test_bytes_while_idle_retire_the_connection(tmp_path: Path, pools: MakePool) -> None:
    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        while await read_request(reader) is not None:
            writer.write(ok(b"answer %d" % index))
            await asyncio.sleep(0.02)
            writer.write(b"stray bytes")

    async with raw_server(tmp_path, handler) as counter:
        pool = pools(raw_address(tmp_path))
        assert (await post(pool, b"a")).body == b"answer 0"
        await asyncio.sleep(0.1)
        assert pool.idle_connections == 0
        assert (await post(pool, b"b")).body == b"answer 1"
        assert counter.connections == 2


async def test_cancelled_request_closes_its_connection(tmp_path: Path, pools: MakePool) -> None:
    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        while (body := await read_request(reader)) is not None:
            if body == b"slow":
                await asyncio.sleep(0.3)
            writer.write(ok(body))

    async with raw_server(tmp_path, handler) as counter:
        pool = pools(raw_address(tmp_path))
        assert (await post(pool, b"a")).body == b"a"
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await post(pool, b"slow")
        assert pool.idle_connections == 0
        await asyncio.sleep(0.4)  # the late answer to "slow" reaches no one
        assert (await post(pool, b"b")).body == b"b"
        assert counter.connections == 2


# --- the connection cap ---------------------------------------------------------------------------


def held_server(release: asyncio.Event) -> Handler:
    """A raw handler that answers each request once `release` is set; b"close" also closes."""

    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        while (body := await read_request(reader)) is not None:
            await release.wait()
            if body.startswith(b"close"):
                writer.write(
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
                return
            writer.write(ok(body))

    return handler


@pytest.mark.parametrize("close", [False, True], ids=["kept-alive", "server-closes"])
async def test_requests_beyond_the_cap_wait_their_turn(
    close: bool, tmp_path: Path, pools: MakePool
) -> None:
    release = asyncio.Event()
    async with raw_server(tmp_path, held_server(release)) as counter:
        pool = pools(raw_address(tmp_path), max_connections=2)
        prefix = b"close" if close else b"keep"
        requests = [asyncio.ensure_future(post(pool, prefix + b"%d" % i)) for i in range(10)]
        await asyncio.sleep(0.1)
        assert counter.connections == 2  # the other eight wait in the pool, not on new sockets
        release.set()
        answers = await asyncio.gather(*requests)
        assert [answer.body for answer in answers] == [prefix + b"%d" % i for i in range(10)]
        # Kept alive, the two connections carried everything; closed after each answer, each
        # closing one freed its slot for a waiter.
        assert counter.connections == (10 if close else 2)


@dataclass
class OneBusyConnection:
    """A pool capped at one connection, that connection busy with `first` until `release`."""

    pool: UpstreamPool
    counter: Counter
    release: asyncio.Event
    first: asyncio.Future[UpstreamResponse]


@contextlib.asynccontextmanager
async def one_busy_connection(tmp_path: Path, pools: MakePool) -> AsyncIterator[OneBusyConnection]:
    release = asyncio.Event()
    async with raw_server(tmp_path, held_server(release)) as counter:
        pool = pools(raw_address(tmp_path), max_connections=1)
        first = asyncio.ensure_future(post(pool, b"first"))
        await asyncio.sleep(0.05)
        yield OneBusyConnection(pool, counter, release, first)


async def test_a_waiting_request_times_out_and_gives_its_turn_away(
    tmp_path: Path, pools: MakePool
) -> None:
    async with one_busy_connection(tmp_path, pools) as busy:
        pool, counter, release, first = busy.pool, busy.counter, busy.release, busy.first
        with pytest.raises(UpstreamTimeout, match=r"all 1 connections .* stayed busy"):
            await post(pool, b"too late", seconds=0.1)
        third = asyncio.ensure_future(post(pool, b"third"))
        await asyncio.sleep(0.05)
        release.set()
        assert (await first).body == b"first"
        assert (await third).body == b"third"  # the connection went to it, not to the one gone
        assert counter.connections == 1
        assert pool.idle_connections == 1


async def test_a_turn_handed_to_a_request_that_gave_up_goes_to_the_next(
    tmp_path: Path, pools: MakePool
) -> None:
    async with one_busy_connection(tmp_path, pools) as busy:
        pool, counter, release, first = busy.pool, busy.counter, busy.release, busy.first
        gone = asyncio.ensure_future(post(pool, b"gone"))
        third = asyncio.ensure_future(post(pool, b"third"))
        await asyncio.sleep(0.05)
        # A slot comes free (as when a connection closes) and goes to `gone`, which is cancelled
        # in the same step, before it could use it: the slot must reach `third`, not be lost.
        pool._hand_over(None)
        gone.cancel()
        await asyncio.sleep(0.05)
        assert counter.connections == 2  # `third` opened the slot's connection
        release.set()
        assert (await first).body == b"first"
        assert (await third).body == b"third"
        with pytest.raises(asyncio.CancelledError):
            await gone


async def test_close_fails_the_waiting_requests(tmp_path: Path) -> None:
    release = asyncio.Event()
    async with raw_server(tmp_path, held_server(release)):
        pool = UpstreamPool(
            raw_address(tmp_path),
            max_idle=8,
            connect_timeout=1.0,
            max_response_bytes=1000,
            max_connections=1,
        )
        requests = [asyncio.ensure_future(post(pool, b"%d" % i)) for i in range(3)]
        await asyncio.sleep(0.05)
        await pool.close()
        for request in requests:
            with pytest.raises(UpstreamClosed):
                await request
        release.set()


def test_max_connections_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_connections must be at least 1"):
        UpstreamPool(
            UpstreamAddress.unix("/x"),
            max_idle=1,
            connect_timeout=1.0,
            max_response_bytes=1,
            max_connections=0,
        )


async def test_a_full_unix_backlog_is_waited_out(tmp_path: Path, pools: MakePool) -> None:
    # A listener that accepts nothing yet, its backlog filled: a Unix socket refuses the next
    # connect with EAGAIN at once, where TCP would make it wait. The pool waits as TCP would.
    path = str(tmp_path / "busy.sock")
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        listener.bind(path)
        listener.listen(0)
        fillers = []
        while True:
            filler = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            filler.setblocking(False)
            if filler.connect_ex(path) != 0:
                break  # the backlog is full now
            fillers.append(filler)
        pool = pools(UpstreamAddress.unix(path), connect_timeout=2.0)
        request = asyncio.ensure_future(post(pool, b"after the wait"))
        await asyncio.sleep(0.2)
        assert not request.done()  # still trying, not failed

        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        for _ in fillers:  # drain the backlog; the pool's next try gets in
            (await loop.sock_accept(listener))[0].close()
        connection, _ = await loop.sock_accept(listener)
        with connection:
            connection.setblocking(False)
            received = b""
            while not received.endswith(b"after the wait"):
                received += await loop.sock_recv(connection, 4096)
            await loop.sock_sendall(connection, ok(b"served"))
            assert (await request).body == b"served"


# --- close ----------------------------------------------------------------------------------------


async def test_close(tmp_path: Path) -> None:
    answer_now = asyncio.Event()

    async def handler(reader: Reader, writer: Writer, index: int) -> None:
        while (body := await read_request(reader)) is not None:
            if body == b"wait":
                await answer_now.wait()
            writer.write(ok(body))

    async with raw_server(tmp_path, handler) as counter:
        pool = UpstreamPool(
            raw_address(tmp_path), max_idle=8, connect_timeout=1.0, max_response_bytes=1000
        )
        await asyncio.gather(post(pool, b"1"), post(pool, b"2"))
        assert pool.idle_connections == 2
        in_flight = asyncio.ensure_future(post(pool, b"wait"))
        await asyncio.sleep(0.05)
        assert pool.idle_connections == 1

        await pool.close()
        assert pool.idle_connections == 0
        with pytest.raises(UpstreamClosed):
            await in_flight
        with pytest.raises(UpstreamClosed):
            await post(pool, b"3")
        answer_now.set()
        await asyncio.sleep(0.05)
        assert counter.closed == 2  # both connections ended by close()
        await pool.close()  # closing twice is harmless


async def test_close_while_connecting(tmp_path: Path) -> None:
    async with aiohttp_server("unix", tmp_path) as (address, counter):
        pool = UpstreamPool(address, max_idle=8, connect_timeout=1.0, max_response_bytes=1000)
        connecting = asyncio.ensure_future(post(pool, b"1"))
        await asyncio.sleep(0)  # the request is now waiting for its connection
        await pool.close()
        with pytest.raises(UpstreamClosed):
            await connecting
        assert counter.requests == 0
