"""The worker's HTTP/1.1 server, in process on a Unix socket, spoken to over raw sockets.

Every read is bounded by a timeout, so a server that hangs fails the test instead of stalling it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from splitserve.workers import http_server
from splitserve.workers.http_server import (
    HttpLimits,
    WorkerRequest,
    WorkerResponse,
)

TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Answer:
    """One parsed response."""

    status: int
    headers: dict[str, str]
    body: bytes


async def echo(request: WorkerRequest) -> WorkerResponse:
    """The request's method, path, query and body, and its Content-Type echoed verbatim."""
    content_type = request.header("content-type") or "application/octet-stream"
    body = f"{request.method} {request.path} {request.query} ".encode() + request.body
    return WorkerResponse(200, body, (("Content-Type", content_type),))


async def fail(_request: WorkerRequest) -> WorkerResponse:
    """A handler with a bug."""
    raise RuntimeError("secret internal detail")


ROUTES: dict[tuple[str, str], http_server.Handler] = {
    ("POST", "/echo"): echo,
    ("GET", "/echo"): echo,
    ("GET", "/fail"): fail,
}


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path,
    routes: dict[tuple[str, str], http_server.Handler] | None = None,
    limits: HttpLimits | None = None,
) -> AsyncIterator[tuple[Path, http_server.WorkerServer]]:
    """A server on a Unix socket in tmp_path, shut down on exit."""
    path = tmp_path / "http.sock"
    server = await http_server.start(
        ROUTES if routes is None else routes, unix_path=path, limits=limits
    )
    try:
        yield path, server
    finally:
        await server.shutdown(TIMEOUT_SECONDS)


@contextlib.asynccontextmanager
async def connection(
    path: Path,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw client connection."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """Read one response (it must have a Content-Length)."""
    async with asyncio.timeout(TIMEOUT_SECONDS):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
    return Answer(int(status_line.split()[1]), headers, body)


async def read_closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection (nothing more arrives)."""
    async with asyncio.timeout(TIMEOUT_SECONDS):
        return await reader.read() == b""


def request(
    method: str, path: str, body: bytes = b"", *headers: str, version: str = "1.1"
) -> bytes:
    """A request with a Content-Length."""
    lines = [f"{method} {path} HTTP/{version}", "Host: worker", *headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --- pipelining ---------------------------------------------------------------------------------


@pytest.mark.parametrize("eager", [True, False], ids=["eager-tasks", "plain-tasks"])
async def test_pipelined_requests_run_concurrently_and_are_answered_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, eager: bool
) -> None:
    if not eager:
        monkeypatch.setattr(http_server, "_task_factory", None)
    first_started = asyncio.Event()
    second_finished = asyncio.Event()

    async def first(_request: WorkerRequest) -> WorkerResponse:
        first_started.set()
        await second_finished.wait()  # a deadlock if the requests ran one after the other
        return WorkerResponse(200, b"first")

    async def second(_request: WorkerRequest) -> WorkerResponse:
        await first_started.wait()
        second_finished.set()
        return WorkerResponse(200, b"second")  # ready first, but must leave second

    routes: dict[tuple[str, str], http_server.Handler] = {
        ("GET", "/first"): first,
        ("GET", "/second"): second,
    }
    async with serving(tmp_path, routes) as (path, _), connection(path) as (reader, writer):
        writer.write(request("GET", "/first") + request("GET", "/second"))
        answers = [await read_answer(reader), await read_answer(reader)]
    assert [answer.body for answer in answers] == [b"first", b"second"]


class CountingTransport:
    """A transport that records each write (the server's writes, as they are made)."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    def writelines(self, parts: list[bytes]) -> None:
        self.writes.append(b"".join(parts))
        self.inner.writelines(parts)

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_answers_ready_together_leave_in_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transports: list[CountingTransport] = []
    connection_made = http_server._Connection.connection_made

    def counting(self: http_server._Connection, transport: Any) -> None:
        transports.append(CountingTransport(transport))
        connection_made(self, transports[-1])  # type: ignore[arg-type]

    monkeypatch.setattr(http_server._Connection, "connection_made", counting)
    release = asyncio.Event()

    async def held(request: WorkerRequest) -> WorkerResponse:
        await release.wait()
        return WorkerResponse(200, request.query.encode())

    routes: dict[tuple[str, str], http_server.Handler] = {("GET", "/held"): held}
    async with serving(tmp_path, routes) as (path, _), connection(path) as (reader, writer):
        writer.write(b"".join(request("GET", f"/held?{index}") for index in range(3)))
        await writer.drain()
        await asyncio.sleep(0.1)  # all three are in flight
        release.set()
        answers = [await read_answer(reader) for _ in range(3)]
    assert [answer.body for answer in answers] == [b"0", b"1", b"2"]
    assert len(transports[0].writes) == 1
    assert transports[0].writes[0].count(b"HTTP/1.1 200 OK") == 3


async def test_reading_pauses_at_max_pipelined_requests(tmp_path: Path) -> None:
    release = asyncio.Event()
    started: list[str] = []

    async def held(request: WorkerRequest) -> WorkerResponse:
        started.append(request.query)
        await release.wait()
        return WorkerResponse(200, request.query.encode())

    routes: dict[tuple[str, str], http_server.Handler] = {("GET", "/held"): held}
    limits = HttpLimits(max_pipelined=2)
    async with serving(tmp_path, routes, limits) as (path, _), connection(path) as (reader, writer):
        # Each request in its own write, so that the server reads them one by one.
        for index in range(5):
            writer.write(request("GET", f"/held?{index}"))
            await writer.drain()
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert started == ["0", "1"]
        release.set()
        answers = [await read_answer(reader) for _ in range(5)]
    assert [answer.body for answer in answers] == [b"0", b"1", b"2", b"3", b"4"]


# --- connection management ----------------------------------------------------------------------


async def test_every_answer_has_content_length_date_and_server(tmp_path: Path) -> None:
    async with serving(tmp_path) as (path, _), connection(path) as (reader, writer):
        writer.write(
            request("POST", "/echo?x=1", b"hello", "Content-Type: text/csv; charset=utf-8")
        )
        answer = await read_answer(reader)
    assert answer.status == 200
    assert answer.body == b"POST /echo x=1 hello"
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert answer.headers["content-length"] == "20"
    assert answer.headers["date"].endswith(" GMT")
    assert answer.headers["server"] == "splitserve"
    assert "connection" not in answer.headers  # HTTP/1.1: kept alive


async def test_connection_close_is_answered_then_closed(tmp_path: Path) -> None:
    async with serving(tmp_path) as (path, _), connection(path) as (reader, writer):
        writer.write(request("GET", "/echo", b"", "Connection: close"))
        answer = await read_answer(reader)
        assert answer.status == 200
        assert answer.headers["connection"] == "close"
        assert await read_closed(reader)


async def test_requests_pipelined_after_connection_close_are_not_read(tmp_path: Path) -> None:
    async with serving(tmp_path) as (path, _), connection(path) as (reader, writer):
        writer.write(
            request("GET", "/echo?1", b"", "Connection: close") + request("GET", "/echo?2")
        )
        answer = await read_answer(reader)
        assert answer.body == b"GET /echo 1 "
        assert await read_closed(reader)


async def test_a_half_closed_client_gets_its_answers(tmp_path: Path) -> None:
    async with serving(tmp_path) as (path, _), connection(path) as (reader, writer):
        writer.write(request("GET", "/echo?1") + request("GET", "/echo?2"))
        writer.write_eof()
        answers = [await read_answer(reader), await read_answer(reader)]
        assert [answer.body for answer in answers] == [b"GET /echo 1 ", b"GET /echo 2 "]
        assert await read_closed(reader)


async def test_http10_closes_unless_kept_alive(tmp_path: Path) -> None:
    async with serving(tmp_path) as (path, _):
        async with connection(path) as (reader, writer):
            writer.write(request("GET", "/echo", version="1.0"))
            assert (await read_answer(reader)).headers["connection"] == "close"
            assert await read_closed(reader)
        async with connection(path) as (reader, writer):
            writer.write(request("GET", "/echo", b"", "Connection: keep-alive", version="1.0"))
            assert (await read_answer(reader)).headers["connection"] == "keep-alive"
            writer.write(request("GET", "/echo", version="1.0"))
            assert (await read_answer(reader)).status == 200


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(tmp_path: Path) -> None:
    limits = HttpLimits(keepalive_timeout=0.2)
    async with serving(tmp_path, limits=limits) as (path, _), connection(path) as (reader, writer):
        writer.write(request("GET", "/echo"))
        assert (await read_answer(reader)).status == 200
        assert await read_closed(reader)


async def test_a_request_that_does_not_arrive_in_time_is_408(tmp_path: Path) -> None:
    limits = HttpLimits(request_timeout=0.2)
    async with serving(tmp_path, limits=limits) as (path, _), connection(path) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")  # 7 bytes short
        answer = await read_answer(reader)
        assert answer.status == 408
        assert answer.headers["connection"] == "close"
        assert await read_closed(reader)


# --- limits and errors --------------------------------------------------------------------------


async def test_a_content_length_over_the_limit_is_413_before_the_body(tmp_path: Path) -> None:
    async with serving(tmp_path) as (path, _), connection(path) as (reader, writer):
        length = http_server.MAX_BODY_BYTES + 1
        writer.write(f"POST /echo HTTP/1.1\r\nContent-Length: {length}\r\n\r\n".encode())
        answer = await read_answer(reader)  # the body is never sent
        assert answer.status == 413
        assert b"6291456-byte (6 MiB) limit" in answer.body
        assert await read_closed(reader)


async def test_a_chunked_body_over_the_limit_is_413(tmp_path: Path) -> None:
    limits = HttpLimits(max_body_bytes=1000)
    chunk = b"258\r\n" + b"x" * 600 + b"\r\n"  # 0x258 = 600 bytes
    async with serving(tmp_path, limits=limits) as (path, _), connection(path) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk)
        await writer.drain()
        writer.write(chunk)
        answer = await read_answer(reader)
        assert answer.status == 413
        assert await read_closed(reader)


async def test_a_chunked_body_within_the_limit_is_read_whole(tmp_path: Path) -> None:
    async with serving(tmp_path) as (path, _), connection(path) as (reader, writer):
        writer.write(
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        answer = await read_answer(reader)
    assert answer.body == b"POST /echo  abcde"


async def test_expect_100_continue(tmp_path: Path) -> None:
    async with serving(tmp_path) as (path, _), connection(path) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        async with asyncio.timeout(TIMEOUT_SECONDS):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"body")
        answer = await read_answer(reader)
        assert answer.status == 200
        assert answer.body == b"POST /echo  body"
        # Too large: a 413 and no 100.
        length = http_server.MAX_BODY_BYTES + 1
        head = f"POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {length}\r\n\r\n"
        writer.write(head.encode())
        assert (await read_answer(reader)).status == 413


async def test_another_expectation_is_417(tmp_path: Path) -> None:
    async with serving(tmp_path) as (path, _), connection(path) as (reader, writer):
        writer.write(request("POST", "/echo", b"x", "Expect: something-else"))
        answer = await read_answer(reader)
        assert answer.status == 417
        assert await read_closed(reader)


async def test_malformed_bytes_are_400_and_close(tmp_path: Path) -> None:
    async with serving(tmp_path) as (path, _), connection(path) as (reader, writer):
        writer.write(b"THIS IS NOT\x00 HTTP\r\n\r\n")
        answer = await read_answer(reader)
        assert answer.status == 400
        assert await read_closed(reader)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (
            b"GET /echo HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
            431,
        ),
    ],
    ids=["request-line", "header-field", "too-many-fields"],
)
async def test_oversized_heads_are_refused(tmp_path: Path, head: bytes, status: int) -> None:
    async with serving(tmp_path) as (path, _), connection(path) as (reader, writer):
        writer.write(head)
        answer = await read_answer(reader)
        assert answer.status == status
        assert await read_closed(reader)


async def test_a_header_line_that_never_ends_is_refused(tmp_path: Path) -> None:
    async with serving(tmp_path) as (path, _), connection(path) as (reader, writer):
        writer.write(b"GET /echo HTTP/1.1\r\nX-Endless: ")
        for _ in range(20):
            writer.write(b"a" * 1000)  # no line break, ever
            await writer.drain()
            await asyncio.sleep(0.005)
        answer = await read_answer(reader)
        assert answer.status == 431
        assert await read_closed(reader)


async def test_404_and_405(tmp_path: Path) -> None:
    async with serving(tmp_path) as (path, _), connection(path) as (reader, writer):
        writer.write(request("GET", "/nowhere") + request("DELETE", "/echo"))
        missing = await read_answer(reader)
        wrong_method = await read_answer(reader)
    assert missing.status == 404
    assert wrong_method.status == 405
    assert wrong_method.headers["allow"] == "GET, POST"


async def test_a_handler_that_raises_is_500_and_the_connection_stays_usable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(tmp_path) as (path, _), connection(path) as (reader, writer):
        writer.write(request("GET", "/fail"))
        failed = await read_answer(reader)
        writer.write(request("GET", "/echo"))
        after = await read_answer(reader)
    assert failed.status == 500
    assert b"secret" not in failed.body
    assert "secret internal detail" in caplog.text
    assert after.status == 200


# --- shutdown -----------------------------------------------------------------------------------


async def test_shutdown_answers_the_requests_in_flight_then_closes(tmp_path: Path) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def held(_request: WorkerRequest) -> WorkerResponse:
        started.set()
        await release.wait()
        return WorkerResponse(200, b"done")

    routes: dict[tuple[str, str], http_server.Handler] = {("GET", "/held"): held}
    path = tmp_path / "http.sock"
    server = await http_server.start(routes, unix_path=path)
    async with connection(path) as (reader, writer), connection(path) as (idle_reader, _):
        writer.write(request("GET", "/held"))
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await started.wait()
        shutdown = asyncio.create_task(server.shutdown(TIMEOUT_SECONDS))
        assert await read_closed(idle_reader)  # an idle connection closes at once
        with pytest.raises((ConnectionRefusedError, FileNotFoundError)):
            await asyncio.open_unix_connection(str(path))  # no longer accepting
        assert not shutdown.done()
        release.set()
        answer = await read_answer(reader)
        assert answer.body == b"done"
        assert answer.headers["connection"] == "close"
        assert await read_closed(reader)
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await shutdown


async def test_shutdown_aborts_what_outlasts_the_grace_period(tmp_path: Path) -> None:
    async def forever(_request: WorkerRequest) -> WorkerResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    routes: dict[tuple[str, str], http_server.Handler] = {("GET", "/forever"): forever}
    path = tmp_path / "http.sock"
    server = await http_server.start(routes, unix_path=path)
    async with connection(path) as (reader, writer):
        writer.write(request("GET", "/forever"))
        await writer.drain()
        await asyncio.sleep(0.05)
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await server.shutdown(0.2)
        assert await reader.read() == b""
