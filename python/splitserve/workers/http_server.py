"""A small HTTP/1.1 server for the built-in worker, where pipelined requests run concurrently.

Why not aiohttp: its server handles the requests pipelined on one connection one after another (it
awaits each handler before it starts the next), so the requests the gateway pipelines on one
kept-alive connection (contract/upstream.py) would never meet in one of the worker's batches
(batching.py). Here every request starts, in its own task, as soon as its message is complete;
the answers still leave in request order, as HTTP/1.1 requires, and answers that are ready
together leave in one write.

It runs on asyncio's Protocol API (uvloop in the worker) and parses with httptools (llhttp). It
reads each request body whole before the handler runs; it has no streaming, upgrades or HTTP/2.

Limits, each answered, never a crash or a hang (the numbers are `HttpLimits`' defaults):
- a request line over 8190 bytes: 400; a header field (name and value) over 8190 bytes, or more
  than 100 header fields: 431; bytes that are not HTTP/1.x: 400. Each closes the connection.
- a Content-Length over 6 MiB: 413 at once, without reading the body, then close; a chunked body
  that grows past 6 MiB: 413 and close.
- `Expect: 100-continue`: `100 Continue` once the head passed these checks; any other Expect: 417
  and close.
- an unknown path: 404; a known path with another method: 405 with Allow; a handler that raises:
  500 with a generic message (the traceback goes to the log), and the connection stays usable, as
  the request was read whole.
- a kept-alive connection idle for 75 s is closed; a head or body not complete within 60 s gets a
  408 and the connection is closed (slow clients cannot hold it); with 64 requests in flight on
  one connection, or the transport's write buffer full, reading pauses until answers drain.

Every answer has Content-Length, Date and Server. A connection is kept alive by default for
HTTP/1.1 and closes after an answer to `Connection: close` (or to HTTP/1.0 without keep-alive).
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import http
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, cast

import httptools

from splitserve.config import MAX_PAYLOAD_BYTES

#: SageMaker's InvokeEndpoint body limit, as the container's MAX_CONTENT_LENGTH: 6 MiB.
MAX_BODY_BYTES: Final = MAX_PAYLOAD_BYTES

_log = logging.getLogger("splitserve.workers.http_server")


@dataclass(frozen=True)
class HttpLimits:
    """What one connection may send, and how long it may take.

    Attributes:
        max_line_bytes: the longest request line, and the longest header field (name plus value).
        max_headers: the most header fields in one request.
        max_body_bytes: the largest request body (a larger one is answered 413).
        max_pipelined: requests in flight on one connection before reading pauses.
        keepalive_timeout: seconds an idle kept-alive connection stays open (aiohttp's 75).
        request_timeout: seconds a request's head and body may take to arrive.
        linger_timeout: seconds a connection closing after its last answer still reads (and
            drops) what the client sends, so that its unread bytes do not reset the answer away.
    """

    max_line_bytes: int = 8190
    max_headers: int = 100
    max_body_bytes: int = MAX_BODY_BYTES
    max_pipelined: int = 64
    keepalive_timeout: float = 75.0
    request_timeout: float = 60.0
    linger_timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class WorkerRequest:
    """One request, read whole.

    Attributes:
        method: e.g. "POST".
        path: the request target's path, without the query string.
        query: the query string, without the "?" ("" when none).
        headers: lower-cased field names to values; repeated fields are joined with ", ".
        body: the request body.
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """The value of the header field `name` (any case), or None when the request has none."""
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True)
class WorkerResponse:
    """One answer. Content-Length, Date, Server and Connection are added when it is written.

    Attributes:
        status: the HTTP status code.
        body: the response body.
        headers: (name, value) pairs, written as given (so a Content-Type is kept verbatim).
    """

    status: int = 200
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = ()


#: An async handler of one route.
Handler = Callable[[WorkerRequest], Awaitable[WorkerResponse]]
#: The route table: (method, path) -> handler.
Routes = Mapping[tuple[str, str], Handler]


def text_response(status: int, message: str) -> WorkerResponse:
    """A plain-text answer: `message` and a newline."""
    return WorkerResponse(
        status, (message + "\n").encode(), (("Content-Type", "text/plain; charset=utf-8"),)
    )


class _RequestParser(Protocol):
    """The part of `httptools.HttpRequestParser` this module uses (httptools ships no stubs)."""

    def feed_data(self, data: bytes) -> None: ...
    def get_method(self) -> bytes: ...
    def get_http_version(self) -> str: ...
    def should_keep_alive(self) -> bool: ...
    def should_upgrade(self) -> bool: ...


#: What `feed_data` raises on bytes that are not an HTTP/1.x request (or when a callback of ours
#: stopped it); HttpParserUpgrade is not an HttpParserError.
_PARSER_ERRORS: tuple[type[Exception], ...] = (
    httptools.HttpParserError,
    httptools.HttpParserUpgrade,
)

_REASONS: Final = {status.value: status.phrase.encode("ascii") for status in http.HTTPStatus}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_INTERNAL_ERROR: Final = text_response(500, "internal server error")

# Started eagerly where the loop has it (Python 3.12+): a handler runs up to its first await
# while its request is parsed, so an answer ready at once (/ping) leaves with the others.
_task_factory: Callable[..., asyncio.Task[None]] | None = getattr(
    asyncio, "eager_task_factory", None
)


class _Stop(Exception):
    """Raised from a parser callback to stop httptools: the connection reads no more requests."""


class _DateHeader:
    """The Date header line (RFC 9110 IMF-fixdate), formatted at most once a second."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        # Wall-clock time on purpose: Date is a calendar date, not a duration.
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._line = b"Date: %s\r\n" % email.utils.formatdate(second, usegmt=True).encode()
        return self._line


class _ServerState:
    """What the connections of one server share."""

    def __init__(self, routes: Routes, limits: HttpLimits, server_name: str) -> None:
        self.routes = dict(routes)
        self.allowed: dict[str, str] = {}
        for method, path in sorted(self.routes):
            self.allowed[path] = (
                f"{self.allowed[path]}, {method}" if path in self.allowed else method
            )
        self.limits = limits
        self.server_line = b"Server: %s\r\n" % server_name.encode("ascii")
        self.date = _DateHeader()
        self.connections: set[_Connection] = set()
        # Strong references: the loop keeps only weak ones to running tasks.
        self.tasks: set[asyncio.Task[None]] = set()
        self.all_closed = asyncio.Event()
        self.shutting_down = False

    def connection_closed(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        if self.shutting_down and not self.connections:
            self.all_closed.set()


class _Exchange:
    """One request of a connection, from its head to its answer; answers leave in this order."""

    __slots__ = ("http10", "interim", "keep_alive", "response")

    def __init__(self, keep_alive: bool, http10: bool) -> None:
        self.keep_alive = keep_alive
        self.http10 = http10
        #: `100 Continue`, to be written when every earlier answer has been.
        self.interim: bytes | None = None
        self.response: WorkerResponse | None = None


def _encode(
    response: WorkerResponse, exchange: _Exchange, common: bytes, parts: list[bytes]
) -> None:
    """Append the status line, header fields and body of `response` to `parts`.

    `common` is the Date and Server lines, the same for every answer of one write.
    """
    body = response.body
    head = [
        b"HTTP/1.1 %d %s\r\n" % (response.status, _REASONS.get(response.status, b"Unknown")),
        common,
    ]
    head.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in response.headers)
    head.append(b"Content-Length: %d\r\n" % len(body))
    if not exchange.keep_alive:
        head.append(b"Connection: close\r\n\r\n")
    elif exchange.http10:
        head.append(b"Connection: keep-alive\r\n\r\n")
    else:
        head.append(b"\r\n")
    parts.append(b"".join(head))
    if body:
        parts.append(body)


def _check_headers(response: WorkerResponse) -> None:
    # A handler could echo a value into a header; a line break there would forge header fields.
    for name, value in response.headers:
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"header field {name!r} contains a line break")


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs their handlers, writes answers in order."""

    def __init__(self, state: _ServerState) -> None:
        self._state = state
        self._limits = state.limits
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser: _RequestParser = httptools.HttpRequestParser(self)
        #: Requests not answered yet, oldest first (the one being read is last once its head is).
        self._exchanges: collections.deque[_Exchange] = collections.deque()
        # The message being read.
        self._in_message = False
        self._in_body = False
        self._message_started = 0.0
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_count = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._current: _Exchange | None = None
        self._messages_completed = 0
        #: A lower bound of the bytes of the header line still being received (see data_received).
        self._partial_line = 0
        # Connection state.
        self._halted = False  # no further request is read; close once the answers are written
        self._lingering = False
        self._eof = False
        self._reading = True
        self._write_paused = False
        self._flush_scheduled = False
        self._idle_since = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._state.connections.add(self)
        if self._state.shutting_down:
            self._transport.close()
            return
        self._arm_timer(self._idle_since + self._limits.keepalive_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._exchanges.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Handlers still running finish on their own; their answers are dropped (as aiohttp does,
        # a handler is not cancelled when its client goes away).
        self._state.connection_closed(self)

    def data_received(self, data: bytes) -> None:
        if self._halted:
            return  # closing: what the client still sends is not read
        started_in_head = not self._in_body
        completed_before = self._messages_completed
        try:
            self._parser.feed_data(data)
        except _PARSER_ERRORS:
            if not self._halted:  # not stopped by a callback of ours: the bytes are malformed
                self._refuse(400, "malformed HTTP request")
                return
        if not self._halted and self._in_message and not self._in_body:
            # httptools keeps a header field whole until the next begins, so a line that never
            # ends would grow without bound before on_header could check it. The bytes after the
            # last line break are that line's when the whole chunk was this head; otherwise where
            # the head began is unknown, and 0 is a safe lower bound.
            newline = data.rfind(b"\n")
            if started_in_head and self._messages_completed == completed_before:
                if newline < 0:
                    self._partial_line += len(data)
                else:
                    self._partial_line = len(data) - newline - 1
            else:
                self._partial_line = 0
            if self._partial_line > self._limits.max_line_bytes:
                self._refuse(431, f"a header field exceeds {self._limits.max_line_bytes} bytes")
                return
        self._update_reading()

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._current is not None:  # its body will never come: no answer is owed
            self._exchanges.pop()
            self._current = None
        self._in_message = self._in_body = False
        if self._lingering or not self._exchanges:
            return None  # close now
        # Half-closed by the client: answer what it sent (a partial request is dropped).
        self._halt()
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # --- httptools callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._halted:
            raise _Stop  # bytes after the last request this connection answers
        self._in_message = True
        self._message_started = self._loop.time()
        self._arm_timer(self._message_started + self._limits.request_timeout)
        self._url = b""
        self._headers = {}
        self._header_count = 0
        self._body = []
        self._body_bytes = 0
        self._partial_line = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_line_bytes:
            raise self._refuse(400, f"the request line exceeds {self._limits.max_line_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self._limits
        self._header_count += 1
        if self._header_count > limits.max_headers:
            raise self._refuse(431, f"more than {limits.max_headers} header fields")
        if len(name) + len(value) > limits.max_line_bytes:
            raise self._refuse(431, f"a header field exceeds {limits.max_line_bytes} bytes")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        headers = self._headers
        length = headers.get("content-length")
        # llhttp has checked that a Content-Length is digits only.
        if length is not None and int(length) > self._limits.max_body_bytes:
            raise self._refuse(413, self._too_large())
        http10 = self._parser.get_http_version() == "1.0"
        expect = headers.get("expect")
        interim = None
        if expect is not None:
            if expect.lower() != "100-continue":
                raise self._refuse(417, f"unsupported expectation: {expect}")
            if not http10:
                interim = _CONTINUE
        keep_alive = (
            self._parser.should_keep_alive()
            and not self._parser.should_upgrade()
            and not self._state.shutting_down
        )
        exchange = _Exchange(keep_alive, http10)
        exchange.interim = interim
        self._exchanges.append(exchange)
        self._current = exchange
        self._in_body = True
        if interim is not None:
            self._schedule_flush()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.max_body_bytes:  # chunked: no Content-Length to check
            raise self._refuse(413, self._too_large())
        self._body.append(body)

    def on_message_complete(self) -> None:
        exchange = self._current
        assert exchange is not None  # on_headers_complete came first
        self._current = None
        self._in_message = False
        self._in_body = False
        self._messages_completed += 1
        if not exchange.keep_alive:
            self._halt()
        url = self._url.decode("latin-1")
        path, _, query = url.partition("?")
        method = self._parser.get_method().decode("ascii")
        handler = self._state.routes.get((method, path))
        if handler is None:
            allowed = self._state.allowed.get(path)
            if allowed is None:
                exchange.response = text_response(404, "not found")
            else:
                response = text_response(405, f"method {method} not allowed; use {allowed}")
                exchange.response = WorkerResponse(
                    405, response.body, (*response.headers, ("Allow", allowed))
                )
            self._schedule_flush()
            return
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = WorkerRequest(method, path, query, self._headers, body)
        coroutine = self._run(exchange, handler, request)
        task = (
            _task_factory(self._loop, coroutine)
            if _task_factory is not None
            else self._loop.create_task(coroutine)
        )
        if not task.done():
            self._state.tasks.add(task)
            task.add_done_callback(self._state.tasks.discard)

    # --- answers ----------------------------------------------------------------------------------

    async def _run(self, exchange: _Exchange, handler: Handler, request: WorkerRequest) -> None:
        try:
            response = await handler(request)
            _check_headers(response)
        except Exception:
            _log.exception("unhandled error answering %s %s", request.method, request.path)
            response = _INTERNAL_ERROR
        exchange.response = response
        if self._exchanges and self._exchanges[0] is exchange:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        # Deferred to the end of this loop iteration: answers completed together (a batch's) are
        # written together.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write every answer ready in order, from the oldest, in one write."""
        self._flush_scheduled = False
        transport = self._transport
        if transport is None:
            return
        parts: list[bytes] = []
        common = b""
        exchanges = self._exchanges
        while exchanges:
            exchange = exchanges[0]
            if exchange.interim is not None:
                parts.append(exchange.interim)
                exchange.interim = None
            response = exchange.response
            if response is None:
                break
            exchanges.popleft()
            if not common:
                common = self._state.date.line() + self._state.server_line
            _encode(response, exchange, common, parts)
        if parts:
            transport.writelines(parts)
        if exchanges or self._in_message:
            self._update_reading()
            return
        if self._halted:
            self._finish()
            return
        self._idle_since = self._loop.time()
        self._arm_timer(self._idle_since + self._limits.keepalive_timeout)
        self._update_reading()

    def _too_large(self) -> str:
        limit = self._limits.max_body_bytes
        return f"the request body exceeds the {limit}-byte ({limit / 2**20:g} MiB) limit"

    def _refuse(self, status: int, message: str) -> _Stop:
        """Answer the request being read with `status`, after the earlier ones, then close.

        Returns:
            the exception a parser callback raises to stop httptools.
        """
        exchange = self._current  # set while a body is read
        if exchange is None:
            exchange = _Exchange(keep_alive=False, http10=False)
            self._exchanges.append(exchange)
        exchange.keep_alive = False
        exchange.interim = None
        exchange.response = text_response(status, message)
        self._current = None
        self._in_message = False
        self._in_body = False
        self._halt()
        if self._exchanges[0] is exchange:
            self._schedule_flush()
        return _Stop()

    def _halt(self) -> None:
        """Read no further request; the connection closes once its answers are written."""
        self._halted = True
        self._update_reading()

    def _finish(self) -> None:
        """Close after the last answer: half-close, and read what the client still sends for a
        moment, so that unread bytes (a body never read) do not reset the connection (on TCP,
        closing with unread data sends RST, which may discard the answer before it is read)."""
        transport = self._transport
        if transport is None or self._lingering:
            return
        if self._eof or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._lingering = True
        if self._timer is not None:  # an earlier deadline must not cut the linger short
            self._timer.cancel()
            self._timer = None
        self._arm_timer(self._loop.time() + self._limits.linger_timeout)
        self._update_reading()

    def _update_reading(self) -> None:
        """Pause reading while the write buffer is full or max_pipelined requests wait for their
        answers (a chunk already received is parsed whole, so one read may go past the bound)."""
        transport = self._transport
        if transport is None:
            return
        reading = self._lingering or (
            not self._halted
            and not self._write_paused
            and len(self._exchanges) < self._limits.max_pipelined
        )
        if reading != self._reading:
            self._reading = reading
            if reading:
                transport.resume_reading()
            else:
                transport.pause_reading()

    # --- timeouts ---------------------------------------------------------------------------------

    def _deadline(self) -> float | None:
        """When the connection times out in its present state; None while it waits for answers."""
        if self._lingering:
            return None  # the linger timer was armed by _finish; it fires then
        if self._in_message:
            return self._message_started + self._limits.request_timeout
        if not self._exchanges and not self._halted:
            return self._idle_since + self._limits.keepalive_timeout
        return None

    def _arm_timer(self, when: float) -> None:
        # One lazy timer: moving a deadline later costs nothing; the timer re-arms when it fires.
        if self._timer is not None:
            if self._timer_when <= when:
                return
            self._timer.cancel()
        self._timer_when = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        if self._lingering:
            transport.close()
            return
        deadline = self._deadline()
        if deadline is None:
            return
        if self._loop.time() < deadline:
            self._arm_timer(deadline)
        elif self._in_message:
            if self._reading:
                self._refuse(408, "the request did not arrive in time")
            else:  # paused by this side (answers to drain): the client is not the slow one
                self._arm_timer(self._loop.time() + self._limits.request_timeout)
        else:
            transport.close()  # idle

    # --- shutdown ---------------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Answer the requests read so far (and the one being read), then close."""
        transport = self._transport
        if transport is None or self._halted:
            return
        if self._in_message:
            if self._current is not None:
                self._current.keep_alive = False
            # Otherwise its head is incomplete: on_headers_complete sees shutting_down.
        elif self._exchanges:
            self._exchanges[-1].keep_alive = False
            self._halt()
        else:
            transport.close()

    def abort(self) -> None:
        """Close now, whatever is in flight."""
        if self._transport is not None:
            self._transport.abort()


class WorkerServer:
    """A listening server; `shutdown` stops it.

    Attributes:
        name: where it listens, e.g. "unix:/run/worker.sock" or "http://127.0.0.1:8080".
    """

    def __init__(self, server: asyncio.AbstractServer, state: _ServerState, name: str) -> None:
        self._server = server
        self._state = state
        self.name = name

    async def shutdown(self, grace_seconds: float) -> None:
        """Stop accepting, answer the requests in flight, then close every connection.

        Idle connections close at once; a connection closes after answering the requests read
        so far (and the one it is reading). What is still open after `grace_seconds` is aborted
        and its handlers cancelled.
        """
        state = self._state
        state.shutting_down = True
        self._server.close()
        for connection in list(state.connections):
            connection.begin_shutdown()
        if state.connections:
            try:
                await asyncio.wait_for(state.all_closed.wait(), grace_seconds)
            except TimeoutError:
                _log.warning("shutdown: aborting %d connections", len(state.connections))
                for connection in list(state.connections):
                    connection.abort()
        # Handlers whose client went away: nobody waits for their answers.
        tasks = list(state.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()


async def start(
    routes: Routes,
    *,
    unix_path: Path | None = None,
    host: str | None = None,
    port: int | None = None,
    backlog: int = 1024,
    limits: HttpLimits | None = None,
    server_name: str = "splitserve",
) -> WorkerServer:
    """Listen on a Unix socket (`unix_path`) or on TCP (`host`, `port`) and serve `routes`.

    Args:
        routes: (method, path) -> async handler.
        unix_path: the socket path; an existing file there is replaced.
        host: the TCP address (with `port`, when `unix_path` is None).
        port: the TCP port.
        backlog: the listen queue length.
        limits: the limits and timeouts of each connection; HttpLimits() when None.
        server_name: the Server header's value.

    Returns:
        the running server.

    Raises:
        OSError: the address cannot be bound.
    """
    loop = asyncio.get_running_loop()
    state = _ServerState(routes, limits or HttpLimits(), server_name)

    def connection() -> _Connection:
        return _Connection(state)

    server: asyncio.AbstractServer
    if unix_path is not None:
        server = await loop.create_unix_server(connection, str(unix_path), backlog=backlog)
        name = f"unix:{unix_path}"
    elif host is not None and port is not None:
        server = await loop.create_server(connection, host, port, backlog=backlog)
        name = f"http://{host}:{port}"
    else:
        raise ValueError("give either unix_path or host and port")
    return WorkerServer(server, state, name)
