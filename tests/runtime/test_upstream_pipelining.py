"""The forwarding client with pipelining on (`UpstreamPool(pipeline_depth=K)`), against a raw server
that parses requests itself, so the tests can see how requests arrived (how many in one read, on
how many connections) and make answers late, missing or cut off on purpose."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from splitserve.contract.upstream import (
    UpstreamAddress,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)
from tests.runtime.test_upstream import aiohttp_server

TIMEOUT = 5.0


def ok(body: bytes, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (connection, len(body), body)


@dataclass
class Seen:
    """What the raw server saw: per connection, how many whole requests each read completed,
    and every request body in the order it arrived."""

    reads: list[list[int]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    transports: list[asyncio.Transport] = field(default_factory=list)


#: What the server does with one request body: the bytes to answer (b"" answers nothing), and
#: whether to close the connection after writing them.
Behaviour = Callable[[bytes], tuple[bytes, bool]]


def echo(body: bytes) -> tuple[bytes, bool]:
    return ok(body), False


class _RawProtocol(asyncio.Protocol):
    """Parses Content-Length requests out of the byte stream and answers each in order."""

    def __init__(self, seen: Seen, behaviour: Behaviour) -> None:
        self._seen = seen
        self._behaviour = behaviour
        self._buffer = b""
        self._reads: list[int] = []
        seen.reads.append(self._reads)
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it.
        self._transport = cast(asyncio.Transport, transport)
        self._seen.transports.append(self._transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        complete = 0
        while b"\r\n\r\n" in self._buffer:
            head, _, rest = self._buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                break
            body, self._buffer = rest[:length], rest[length:]
            complete += 1
            self._seen.bodies.append(body)
            answer, close = self._behaviour(body)
            if answer:
                self._transport.write(answer)
            if close:
                self._transport.close()
                break
        self._reads.append(complete)


@contextlib.asynccontextmanager
async def raw_pipelining_server(
    tmp_path: Path, behaviour: Behaviour = echo
) -> AsyncIterator[tuple[UpstreamAddress, Seen]]:
    seen = Seen()
    path = str(tmp_path / "pipelined.sock")
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: _RawProtocol(seen, behaviour), path)
    try:
        yield UpstreamAddress.unix(path), seen
    finally:
        server.close()
        for transport in seen.transports:
            transport.abort()
        await server.wait_closed()


def pipelined_pool(address: UpstreamAddress, depth: int = 8, **options: int) -> UpstreamPool:
    return UpstreamPool(
        address,
        max_idle=options.get("max_idle", 8),
        connect_timeout=2.0,
        max_response_bytes=1024 * 1024,
        max_connections=options.get("max_connections", 64),
        pipeline_depth=depth,
    )


async def post(pool: UpstreamPool, body: bytes, seconds: float = TIMEOUT) -> UpstreamResponse:
    return await pool.request(b"POST", b"/invocations", (), body, seconds)


async def warm(pool: UpstreamPool, seen: Seen) -> None:
    """One exchange first, so the pool has a kept-alive connection: requests that find the pool
    without one each open their own (they are not held back behind a connect)."""
    assert (await post(pool, b"warm")).body == b"warm"
    seen.bodies.clear()


async def test_requests_sent_together_share_one_connection_and_one_write(tmp_path: Path) -> None:
    async with raw_pipelining_server(tmp_path) as (address, seen):
        pool = pipelined_pool(address, depth=8)
        try:
            await warm(pool, seen)
            bodies = [b"request %d" % i for i in range(8)]
            responses = await asyncio.gather(*(post(pool, body) for body in bodies))
            assert [response.body for response in responses] == bodies
            assert len(seen.reads) == 1  # one connection
            assert seen.reads[0] == [1, 8]  # the warm-up, then all eight in one read
            assert seen.bodies == bodies  # in the order they were sent
            # The connection is parked once every answer is in, and reused.
            assert pool.idle_connections == 1
            assert (await post(pool, b"again")).body == b"again"
            assert len(seen.reads) == 1
        finally:
            await pool.close()


async def test_depth_bounds_the_requests_on_one_connection(tmp_path: Path) -> None:
    async with raw_pipelining_server(tmp_path) as (address, seen):
        pool = pipelined_pool(address, depth=3)
        try:
            await warm(pool, seen)
            bodies = [b"%d" % i for i in range(7)]
            responses = await asyncio.gather(*(post(pool, body) for body in bodies))
            assert [response.body for response in responses] == bodies
            # Three on the warm connection (4 requests with the warm-up), and the four the
            # connection had no room for each on a new one (requests that open a connection do
            # not wait for each other's connect).
            assert sorted(sum(reads) for reads in seen.reads) == [1, 1, 1, 1, 4]
        finally:
            await pool.close()


async def test_at_the_cap_requests_queue_on_busy_connections_then_wait(tmp_path: Path) -> None:
    held: list[bytes] = []

    def late(body: bytes) -> tuple[bytes, bool]:
        if body == b"warm":
            return ok(body), False
        held.append(body)
        return b"", False  # answered by the test, below

    async with raw_pipelining_server(tmp_path, late) as (address, seen):
        pool = pipelined_pool(address, depth=2, max_connections=1)
        tasks: list[asyncio.Task[UpstreamResponse]] = []
        try:
            await warm(pool, seen)
            tasks = [asyncio.create_task(post(pool, b"%d" % i)) for i in range(5)]
            answered = 0
            while answered < 5:
                await asyncio.sleep(0.05)
                # Never more than the depth open on the one connection.
                assert 0 < len(held) - answered <= 2
                for body in held[answered:]:
                    seen.transports[0].write(ok(body))
                answered = len(held)
            results = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
            assert [result.body for result in results] == [b"%d" % i for i in range(5)]
            assert len(seen.reads) == 1
        finally:
            for task in tasks:
                task.cancel()
            await pool.close()


async def test_a_busy_connection_takes_waiting_requests_as_answers_come(tmp_path: Path) -> None:
    async with aiohttp_server("unix", tmp_path) as (address, counter):
        # aiohttp's server answers a connection's pipelined requests one after the other: right,
        # only slower. With one connection of depth 2, seven requests all get their own answer.
        pool = pipelined_pool(address, depth=2, max_connections=1)
        try:
            bodies = [b"body %d" % i for i in range(7)]
            responses = await asyncio.gather(*(post(pool, body) for body in bodies))
            assert [response.body for response in responses] == bodies
            assert counter.connections == 1
            assert counter.requests == 7
        finally:
            await pool.close()


async def test_a_timeout_fails_the_requests_queued_behind_it(tmp_path: Path) -> None:
    stuck: list[bytes] = []

    def silent_first(body: bytes) -> tuple[bytes, bool]:
        # Stuck on "slow": answers in order, so nothing behind it is answered either.
        if body == b"slow" or stuck:
            stuck.append(body)
            return b"", False
        return ok(body), False

    async with raw_pipelining_server(tmp_path, silent_first) as (address, seen):
        pool = pipelined_pool(address, depth=4)
        try:
            await warm(pool, seen)
            results = await asyncio.gather(
                post(pool, b"slow", 0.3),
                post(pool, b"second", 0.3),
                post(pool, b"third", 0.3),
                return_exceptions=True,
            )
            assert isinstance(results[0], UpstreamTimeout)
            for result in results[1:]:
                # The server read them (it answered them, but behind the missing answer): they
                # fail as broken exchanges, never retried.
                assert isinstance(result, UpstreamProtocolError)
                assert "another request on the same connection failed" in str(result)
            assert seen.bodies == [b"slow", b"second", b"third"]
            stuck.clear()
            assert (await post(pool, b"later")).body == b"later"
            assert len(seen.reads) == 2  # on a new connection
        finally:
            await pool.close()


async def test_a_connection_ending_behind_an_answer_is_never_retried(tmp_path: Path) -> None:
    def crash_after_first(body: bytes) -> tuple[bytes, bool]:
        # Reads all three, answers the first, then the connection ends (a crash): the other
        # two may have run, so running them again could double a side effect.
        return (ok(body), False) if body in (b"warm", b"first") else (b"", body == b"third")

    async with raw_pipelining_server(tmp_path, crash_after_first) as (address, seen):
        pool = pipelined_pool(address, depth=4)
        try:
            await warm(pool, seen)
            results = await asyncio.gather(
                post(pool, b"first"),
                post(pool, b"second"),
                post(pool, b"third"),
                return_exceptions=True,
            )
            assert isinstance(results[0], UpstreamResponse)
            assert results[0].body == b"first"
            for result in results[1:]:
                assert isinstance(result, UpstreamProtocolError)
                assert "before its answer began" in str(result)
            assert seen.bodies == [b"first", b"second", b"third"]  # each ran once
        finally:
            await pool.close()


async def test_requests_behind_a_closing_answer_fail(tmp_path: Path) -> None:
    def close_on_first(body: bytes) -> tuple[bytes, bool]:
        return (ok(body, close=True), False) if body == b"first" else (ok(body), False)

    async with raw_pipelining_server(tmp_path, close_on_first) as (address, seen):
        pool = pipelined_pool(address, depth=4)
        try:
            await warm(pool, seen)
            results = await asyncio.gather(
                post(pool, b"first"), post(pool, b"second"), return_exceptions=True
            )
            assert isinstance(results[0], UpstreamResponse)
            assert isinstance(results[1], UpstreamProtocolError)
            assert "closed the connection with pipelined requests still open" in str(results[1])
        finally:
            await pool.close()


async def test_a_stale_kept_alive_connection_is_retried_for_every_request_on_it(
    tmp_path: Path,
) -> None:
    dropped: list[bytes] = []

    def drop_once(body: bytes) -> tuple[bytes, bool]:
        if body == b"a" and not dropped:
            # The server ends the kept-alive connection as the batch arrives, before reading
            # it (its keep-alive timeout running out just then): no byte of any answer.
            dropped.append(body)
            return b"", True
        return ok(body), False

    async with raw_pipelining_server(tmp_path, drop_once) as (address, seen):
        pool = pipelined_pool(address, depth=4)
        try:
            assert (await post(pool, b"warm")).body == b"warm"
            results = await asyncio.gather(post(pool, b"a"), post(pool, b"b"))
            assert [result.body for result in results] == [b"a", b"b"]
            assert len(seen.reads) >= 2  # the retries went over fresh connections
            assert sorted(seen.bodies) == [b"a", b"a", b"b", b"warm"]
        finally:
            await pool.close()


async def test_an_abandoned_request_leaves_the_others_on_its_connection(tmp_path: Path) -> None:
    async with raw_pipelining_server(tmp_path) as (address, seen):
        pool = pipelined_pool(address, depth=4)
        try:
            await warm(pool, seen)
            first = asyncio.create_task(post(pool, b"first"))
            second = asyncio.create_task(post(pool, b"second"))
            third = asyncio.create_task(post(pool, b"third"))
            await asyncio.sleep(0)  # all three sent, in one write
            second.cancel()
            assert (await first).body == b"first"
            assert (await third).body == b"third"
            with pytest.raises(asyncio.CancelledError):
                await second
            assert len(seen.reads) == 1
            assert (await post(pool, b"fourth")).body == b"fourth"
            assert len(seen.reads) == 1  # the connection stayed good for the next one
        finally:
            await pool.close()


def test_pipeline_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="pipeline_depth"):
        pipelined_pool(UpstreamAddress.unix("/nowhere"), depth=0)
