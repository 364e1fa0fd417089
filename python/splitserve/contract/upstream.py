"""The forwarding client: HTTP/1.1 from the gateway to one model-worker instance.

Every InvokeEndpoint becomes one `POST /invocations` to an instance listening on a Unix socket or on
loopback TCP. aiohttp's ClientSession costs about 100 us of CPU per forward, more than the whole
gateway's budget, so this is a small client written straight on asyncio's Protocol API (uvloop
transports in production): the response is parsed by httptools (llhttp), connections are kept alive
in a LIFO pool, and each request goes out as one preassembled byte string.

A pool may pipeline (`pipeline_depth` > 1, for servers that answer pipelined requests concurrently,
like the built-in XGBoost worker): the requests sent to one instance in the same event-loop
iteration go out on one connection in one write, up to that many outstanding on it, and their
answers come back in order, often several in one read: the worker then reads several requests, and
writes their answers, with one system call. What it changes is failure: an exchange that fails (a
timeout, a malformed answer, a crash) breaks the connection, and the requests queued behind it on
the connection fail with it, as broken exchanges, since the server may have read them.

One `UpstreamPool` serves one instance address. It is not a general HTTP client: no redirects, no
HEAD, no TLS, no proxy, no cookies, no request streaming; the request body is always sent with a
Content-Length, and the response is buffered whole (bounded by `max_response_bytes`). A pool
belongs to the event loop of its first request.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import httptools

__all__ = [
    "UpstreamAddress",
    "UpstreamClosed",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
]

#: A body up to this size is joined into the same bytes object as the request head, so the request
#: leaves in one write(); a larger one goes as the second buffer of one vectored write instead, so
#: a 6 MiB body is not copied just to put a few hundred header bytes in front of it.
_JOIN_BODY_LIMIT = 64 * 1024

_FRAMING_HEADERS = (b"content-length", b"transfer-encoding")


class UpstreamError(Exception):
    """Base of every error of the forwarding client. The message is for the gateway's log only."""


class UpstreamConnectError(UpstreamError):
    """No connection could be made: refused, no socket file, or the connect timeout passed."""


class UpstreamTimeout(UpstreamError):
    """No complete response arrived within the request's timeout."""


class UpstreamProtocolError(UpstreamError):
    """The response was malformed, too large, or cut short by the connection closing."""


class UpstreamClosed(UpstreamError):
    """The pool was closed, before or during the request."""


class _StaleConnection(UpstreamProtocolError):
    """The connection ended before any byte of the response arrived.

    On a reused connection the pool retries once on a fresh one (see `UpstreamPool.request`); on a
    fresh connection, or after the retry, it reaches the caller as the UpstreamProtocolError it is.
    """


class _ResponseParser(Protocol):
    """The part of `httptools.HttpResponseParser` this module uses (httptools ships no stubs)."""

    def feed_data(self, data: bytes) -> None: ...
    def get_status_code(self) -> int: ...
    def should_keep_alive(self) -> bool: ...


#: What `feed_data` raises on bytes that are not an HTTP/1.x response; HttpParserUpgrade is not an
#: HttpParserError, and a 101 answer to a request that asked for no upgrade is just as malformed.
_PARSER_ERRORS: tuple[type[Exception], ...] = (
    httptools.HttpParserError,
    httptools.HttpParserUpgrade,
)


@dataclass(frozen=True)
class UpstreamAddress:
    """Where one instance listens: a Unix socket path, or a TCP host and port.

    Build one with `UpstreamAddress.unix(path)` or `UpstreamAddress.tcp(host, port)`.
    """

    unix_path: str | None
    host: str | None
    port: int | None

    def __post_init__(self) -> None:
        """Refuse an address that is neither exactly a socket path nor exactly a host and port."""
        is_unix = self.unix_path is not None and self.host is None and self.port is None
        is_tcp = self.unix_path is None and self.host is not None and self.port is not None
        if not (is_unix or is_tcp):
            raise ValueError("an upstream address is a unix_path, or a host and a port")

    @classmethod
    def unix(cls, path: str) -> UpstreamAddress:
        """The address of an instance listening on the Unix socket at `path`."""
        return cls(unix_path=path, host=None, port=None)

    @classmethod
    def tcp(cls, host: str, port: int) -> UpstreamAddress:
        """The address of an instance listening on TCP `host`:`port`."""
        return cls(unix_path=None, host=host, port=port)

    @classmethod
    def parse(cls, text: str) -> UpstreamAddress:
        """The address `str(address)` printed (`unix:/path` or `host:port`).

        Raises:
            ValueError: `text` is neither.
        """
        if text.startswith("unix:"):
            return cls.unix(text.removeprefix("unix:"))
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not an upstream address: {text!r}")
        return cls.tcp(host.strip("[]"), int(port))

    def __str__(self) -> str:
        """`unix:/path/to/socket` or `host:port`, as logs and metrics labels show it."""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return f"{self.host}:{self.port}"


class UpstreamResponse:
    """One complete response from an instance.

    Attributes:
        status: the HTTP status code.
        headers: (name, value) pairs in the order received; names lower-cased, values as sent.
        body: the whole body, de-chunked.
    """

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: bytes) -> bytes | None:
        """The value of the first header called `name` (any case), or None if there is none."""
        name = name.lower()
        for header_name, value in self.headers:
            if header_name == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"UpstreamResponse(status={self.status}, body={len(self.body)} bytes)"


#: One open exchange of a connection: its response's future, its deadline (loop time), and the
#: connection's read count when it was sent.
_Exchange = tuple["asyncio.Future[UpstreamResponse]", float, int]


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to an instance, carrying its exchanges in order.

    Each exchange is (the future of its response, its deadline, how many reads the connection had
    made when it was sent). Without pipelining there is at most one; with it, up to the pool's
    depth, answered oldest first. The parser callbacks (`on_header` ... `on_message_complete`)
    fill the oldest exchange's response; its future is resolved when the message completes. Any
    failure (the connection breaks, a response is malformed or too large, a deadline passes) fails
    every open exchange and closes the connection: after one, what is left in the byte stream
    cannot be trusted.

    Deadlines use one lazily re-armed timer per connection rather than a timer per request: a
    uvloop timer costs a few microseconds to arm and cancel, a large share of a forward. The armed
    timer never fires later than the open exchange's deadline; when it fires early (it was armed
    for an exchange that has since completed) it re-arms for the current one, or disarms if the
    connection is idle. With one timeout per pool, a connection's timer is armed about once per
    timeout period instead of once per request.

    With pipelining (`coalesce`), `send` does not write at once: the requests sent in one loop
    iteration are written together by `_flush`, scheduled by the first of them.
    """

    __slots__ = (
        "_body",
        "_body_size",
        "_coalesce",
        "_drain_waiter",
        "_emptied_by",
        "_exchanges",
        "_headers",
        "_headers_complete",
        "_keep_alive",
        "_loop",
        "_lost",
        "_lost_waiter",
        "_max_response_bytes",
        "_on_lost",
        "_open",
        "_parser",
        "_pending",
        "_reads",
        "_reads_at_answer",
        "_status",
        "_timer",
        "_timer_when",
        "_transport",
        "_write_paused",
    )

    _transport: asyncio.Transport

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_response_bytes: int,
        on_lost: Callable[[_Connection], None],
        coalesce: bool = False,
    ) -> None:
        self._loop = loop
        self._max_response_bytes = max_response_bytes
        self._on_lost = on_lost
        self._coalesce = coalesce
        self._pending: list[bytes] = []  # what _flush writes (pipelining only)
        self._parser: _ResponseParser = httptools.HttpResponseParser(self)
        self._open = False
        self._lost = False
        # The connection may carry another exchange: until an answer, or a failure, says otherwise.
        self._keep_alive = True
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lost_waiter: asyncio.Future[None] | None = None
        # The open exchanges, oldest first: (response future, deadline, reads when it was sent).
        self._exchanges: collections.deque[_Exchange] = collections.deque()
        # The exchange whose answer left the connection without open exchanges: its caller is
        # the one that parks the connection (pipelining).
        self._emptied_by: asyncio.Future[UpstreamResponse] | None = None
        # data_received calls so far: an exchange sent after the last of them has seen no byte.
        self._reads = 0
        self._reads_at_answer = 0  # _reads when the last whole answer came
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.inf
        # The response being received.
        self._headers_complete = False
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0

    # --- what the pool calls ----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Neither side has closed the transport yet, as far as this side has seen."""
        return self._open

    @property
    def reusable(self) -> bool:
        """The last exchange ended cleanly and the connection may carry another."""
        # A server may answer before reading the whole body (an early error); what it left unread
        # would be taken for the start of the next request, so such a connection is not reused.
        return self._keep_alive and self._open and self._transport.get_write_buffer_size() == 0

    def send(
        self, request: bytes, body: bytes | None, deadline: float
    ) -> asyncio.Future[UpstreamResponse]:
        """Write one request (with pipelining: at the end of this loop iteration, together with
        the others sent on this connection in it); return the future of its response.

        Args:
            request: the request line, headers and blank line, and the body unless `body` is given.
            body: the body, when it goes as a second buffer of the same (vectored) write.
            deadline: the loop time by which the response must be complete.

        Returns:
            A future that resolves to the response, or fails with _StaleConnection (the connection
            ended before a byte of the response), UpstreamProtocolError, UpstreamTimeout or
            UpstreamClosed.
        """
        waiter: asyncio.Future[UpstreamResponse] = self._loop.create_future()
        # The response state was reset when the last response completed.
        self._exchanges.append((waiter, deadline, self._reads))
        if deadline < self._timer_when:
            self._arm_timer(deadline)
        if self._coalesce:
            pending = self._pending
            if not pending:
                self._loop.call_soon(self._flush)
            pending.append(request)
            if body is not None:
                pending.append(body)
        elif body is None:
            self._transport.write(request)
        else:
            self._transport.writelines((request, body))
        return waiter

    def abandon(self, waiter: asyncio.Future[UpstreamResponse]) -> None:
        """The caller of the exchange `waiter` left it (cancelled): without other live exchanges
        on the connection it is closed, as `close` does; with some, it stays open for them and
        the abandoned exchange's answer is dropped when it comes."""
        waiter.cancel()
        if any(not other.done() for other, _, _ in self._exchanges):
            return
        self.close()

    @property
    def write_paused(self) -> bool:
        """The transport's buffer is over its high-water mark: see `drained`."""
        return self._write_paused

    def drained(self) -> asyncio.Future[None]:
        """A future done once the transport has taken the request (backpressure).

        It is also done when the exchange ends first: a server may answer a large request without
        reading it all, and then the rest never drains.
        """
        drain: asyncio.Future[None] = self._loop.create_future()
        if self._write_paused:
            self._drain_waiter = drain
        else:
            drain.set_result(None)
        return drain

    def close(self) -> None:
        """Close the connection; exchanges still open are cancelled (their callers left them)."""
        exchanges = self._exchanges
        while exchanges:
            waiter = exchanges.popleft()[0]
            if not waiter.done():
                waiter.cancel()
        self._close_transport()

    def shutdown(self) -> asyncio.Future[None]:
        """The pool closes: fail any exchange with UpstreamClosed; the future is done when lost."""
        lost: asyncio.Future[None] = self._loop.create_future()
        if self._lost:
            lost.set_result(None)
        else:
            self._lost_waiter = lost
            self._fail(UpstreamClosed("the upstream pool was closed"))
        return lost

    def _flush(self) -> None:
        """Write the requests sent in this loop iteration, in one system call (pipelining)."""
        pending = self._pending
        self._pending = []
        if self._open:
            self._transport.writelines(pending)

    # --- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; the connection is ready for an exchange."""
        # uvloop's transports implement asyncio.Transport without deriving from it.
        self._transport = cast(asyncio.Transport, transport)
        self._open = True

    def data_received(self, data: bytes) -> None:
        """Feed response bytes to the parser; a parse error fails the exchanges."""
        if not self._exchanges:
            # Bytes while idle belong to no request; the stream is out of step with us.
            self._close_transport()
            return
        self._reads += 1
        try:
            self._parser.feed_data(data)
        except _PARSER_ERRORS:
            # A callback's own failure (too large, unsolicited) has already failed the exchange.
            self._fail(UpstreamProtocolError("malformed HTTP response from upstream"))

    def eof_received(self) -> bool:
        """The server finished sending: completes a close-delimited body, else fails the exchange.

        Returns False, so the transport closes itself (a half-open connection is of no use).
        """
        self._end_of_stream(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is closed: fail any exchange still open, and leave the pool."""
        self._lost = True
        self._end_of_stream(exc)
        self._disarm_timer()
        self._release_drain()
        lost = self._lost_waiter
        if lost is not None and not lost.done():
            lost.set_result(None)
        self._on_lost(self)

    def pause_writing(self) -> None:
        """The transport's write buffer is over its high-water mark."""
        self._write_paused = True

    def resume_writing(self) -> None:
        """The write buffer drained below its low-water mark: the request is on its way."""
        self._write_paused = False
        self._release_drain()

    # --- httptools callbacks ----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        """One response header; names are lower-cased once here so lookups need not."""
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        """The status line and headers are in; keep the status."""
        if not self._exchanges:
            # A response to no request, right behind the last one: the server is out of step.
            self._close_transport()
            raise _AbortParse
        self._headers_complete = True
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        """One piece of the (de-chunked) body; fails the exchange once it passes the limit."""
        self._body_size += len(body)
        if self._body_size > self._max_response_bytes:
            self._fail(
                UpstreamProtocolError(
                    f"response body over the limit of {self._max_response_bytes} bytes"
                )
            )
            raise _AbortParse
        self._body.append(body)

    def on_message_complete(self) -> None:
        """The response is whole: resolve the oldest exchange, or skip an interim 1xx response."""
        status = self._status
        headers = self._headers
        body = self._body
        # Fresh state for the next response; this one's lists now belong to its UpstreamResponse.
        self._headers_complete = False
        self._headers = []
        self._body = []
        self._body_size = 0
        if status < 200:
            # 100 Continue and other informational responses precede the real one. (There is an
            # exchange: on_headers_complete refused a response to no request.)
            return
        keep_alive = self._keep_alive = self._parser.should_keep_alive()
        exchanges = self._exchanges
        waiter = exchanges.popleft()[0]
        if not waiter.done():  # done: its caller abandoned it (pipelining)
            waiter.set_result(UpstreamResponse(status, headers, b"".join(body)))
        if not exchanges:
            self._emptied_by = waiter
        self._reads_at_answer = self._reads
        if exchanges and not keep_alive:
            # The server closes after this answer, so it will not answer what is queued behind.
            self._fail(
                UpstreamProtocolError(
                    "the instance closed the connection with pipelined requests still open"
                )
            )
        elif self._drain_waiter is not None:  # rare (a request over the write buffer)
            self._release_drain()

    # --- internals --------------------------------------------------------------------------------

    def _end_of_stream(self, exc: Exception | None) -> None:
        """The byte stream ended (EOF, reset or local close); settle the open exchanges.

        An exchange sent after the connection's last read saw no byte at all: _StaleConnection,
        which the pool may retry. Any other was sent before bytes that answered an earlier one,
        so the server may have read it: it fails as a broken exchange, never to be retried.
        """
        self._open = False
        exchanges = self._exchanges
        reads = self._reads
        head = True
        while exchanges:
            waiter, _, reads_at_send = exchanges.popleft()
            if waiter.done():
                head = False
                continue
            if reads_at_send == reads:
                waiter.set_exception(
                    _StaleConnection("the connection closed before any byte of the response")
                )
            elif (
                head
                and self._headers_complete
                and not any(name in _FRAMING_HEADERS for name, _ in self._headers)
            ):
                # No Content-Length and no Transfer-Encoding: the body ends with the connection.
                waiter.set_result(
                    UpstreamResponse(self._status, self._headers, b"".join(self._body))
                )
            else:
                reason = "" if exc is None else f" ({exc!r})"
                # Bytes came after the last whole answer: the head's own. (With pipelining, a read
                # that ended one answer and began the next counts as not begun: only log text.)
                begun = head and reads > self._reads_at_answer
                where = "in mid-response" if begun else "before its answer began"
                waiter.set_exception(
                    UpstreamProtocolError(f"the connection closed {where}{reason}")
                )
            head = False

    def _fail(self, exc: UpstreamError, culprit: int = 0) -> None:
        """Fail the open exchanges and close the connection: the one at index `culprit` (the
        oldest, unless a later one's deadline passed first) with `exc`, the others as broken by
        it."""
        self._keep_alive = False
        exchanges = self._exchanges
        index = 0
        while exchanges:
            waiter = exchanges.popleft()[0]
            if not waiter.done():
                waiter.set_exception(
                    exc
                    if index == culprit
                    else UpstreamProtocolError(
                        f"another request on the same connection failed ({exc})"
                    )
                )
            index += 1
        self._release_drain()
        self._close_transport()

    def _close_transport(self) -> None:
        # abort(), not close(): nothing still buffered for this connection is worth delivering.
        self._open = False
        self._keep_alive = False
        self._disarm_timer()
        if not self._transport.is_closing():
            self._transport.abort()

    def _arm_timer(self, when: float) -> None:
        self._disarm_timer()
        self._timer = self._loop.call_at(when, self._on_timer)
        self._timer_when = when

    def _disarm_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            self._timer_when = math.inf
            timer.cancel()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = math.inf
        exchanges = self._exchanges
        if not exchanges:
            return  # idle, or the exchanges already ended: nothing to time
        # The first deadline is normally the oldest exchange's; a pool's requests share one
        # timeout, so only a caller with a shorter one can make a later exchange's come sooner.
        culprit, deadline = min(
            enumerate(deadline for _, deadline, _ in exchanges), key=lambda item: item[1]
        )
        if self._loop.time() >= deadline:
            self._fail(UpstreamTimeout("no complete response within the timeout"), culprit)
        else:
            self._arm_timer(deadline)

    def _release_drain(self) -> None:
        drain = self._drain_waiter
        if drain is not None:
            self._drain_waiter = None
            if not drain.done():
                drain.set_result(None)


class _AbortParse(Exception):
    """Raised from a parser callback to stop httptools once the exchange has been failed."""


class UpstreamPool:
    """Kept-alive HTTP/1.1 connections to one instance, and the requests sent over them.

    Connections are made on demand, at most `max_connections` at once; a request that finds them
    all busy waits, first come first served, for one to come free (within its own timeout). After
    a complete response a connection goes to the longest-waiting request, or back to the idle
    list (most recently used first, at most `max_idle` of them), unless the server asked to close
    it. A connection on which anything went wrong is closed, never reused.

    The cap matters under bursts: without it, every request beyond the idle connections opened a
    connection of its own, to be closed after one exchange. A single-threaded model server gains
    nothing from hundreds of connections, pays for each accept, and on a Unix socket a burst
    overflows its listen backlog (connect then fails with EAGAIN rather than waiting, as TCP does).

    With `pipeline_depth` > 1 a request first joins the connection that already has requests
    waiting to be written in this loop iteration (while it has room), then takes an idle one, then
    a new one; only at the cap does it queue behind answers still to come on a busy connection
    (the least busy with room), and only when every connection is full does it wait, for one to
    become idle. So requests arriving together share a write, and otherwise none waits behind
    another's answer.
    """

    __slots__ = (
        "_address",
        "_closed",
        "_connect_timeout",
        "_connecting",
        "_connections",
        "_depth",
        "_filling",
        "_head_tail",
        "_idle",
        "_loop",
        "_max_connections",
        "_max_idle",
        "_max_response_bytes",
        "_waiters",
    )

    def __init__(
        self,
        address: UpstreamAddress,
        *,
        max_idle: int,
        connect_timeout: float,
        max_response_bytes: int,
        max_connections: int | None = None,
        pipeline_depth: int = 1,
    ) -> None:
        """Make a pool for `address`; no connection is opened until the first request.

        Args:
            address: where the instance listens.
            max_idle: the most idle connections kept for reuse; 0 closes each after its response.
            connect_timeout: seconds a new connection may take (within the request's own timeout).
            max_response_bytes: the largest response body accepted.
            max_connections: the most connections open (or opening) at once; None for no limit.
                There may briefly be one more: while a stale connection is being replaced, or
                when a new request takes a slot freed for a waiter before the waiter runs.
            pipeline_depth: the most requests outstanding on one connection; 1 (no pipelining)
                unless the server answers pipelined requests concurrently and in order.

        Raises:
            ValueError: `max_connections` or `pipeline_depth` is below 1.
        """
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if pipeline_depth < 1:
            raise ValueError("pipeline_depth must be at least 1")
        self._depth = pipeline_depth
        # Pipelining: the connection whose requests of this loop iteration are not written yet.
        self._filling: _Connection | None = None
        self._address = address
        self._max_idle = max_idle
        self._max_connections = math.inf if max_connections is None else max_connections
        self._connecting = 0
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first request
        # Requests waiting for a connection; each future gets a connection, or None: "a slot is
        # free, open one". Futures of requests that gave up stay until popped, and are skipped.
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._connect_timeout = connect_timeout
        self._max_response_bytes = max_response_bytes
        self._idle: list[_Connection] = []
        self._connections: set[_Connection] = set()
        self._closed = False
        if address.unix_path is not None:
            host = "localhost"
        elif ":" in str(address.host):
            host = f"[{address.host}]:{address.port}"
        else:
            host = str(address)
        # Everything after the request target that is the same for every request to this instance.
        self._head_tail = b" HTTP/1.1\r\nhost: " + host.encode("ascii") + b"\r\n"

    @property
    def address(self) -> UpstreamAddress:
        """The instance this pool sends to."""
        return self._address

    @property
    def pipeline_depth(self) -> int:
        """The most requests outstanding on one connection (1: no pipelining)."""
        return self._depth

    @property
    def idle_connections(self) -> int:
        """How many kept-alive connections wait for the next request."""
        return len(self._idle)

    async def request(
        self,
        method: bytes,
        path: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        # The caller's deadline is enforced by the connection's own lazy timer (see _Connection),
        # which is cheaper per request than an asyncio.timeout() scope around the exchange.
        timeout: float,  # noqa: ASYNC109
    ) -> UpstreamResponse:
        """Send one request and return the whole response.

        The request goes over the most recently used idle connection, or a new one. If a reused
        connection turns out to have been closed by the server (it ends before a byte of the
        response), the request is sent once more on a new connection; nothing else is retried.

        Args:
            method: the request method, e.g. b"POST".
            path: the request target, e.g. b"/invocations".
            headers: extra (name, value) headers; Host and Content-Length are added here and must
                not be among them.
            body: the request body, sent with a Content-Length (also when empty).
            timeout: seconds for the whole exchange: connecting, sending and the full response.

        Returns:
            The response, whatever its status.

        Raises:
            UpstreamConnectError: no connection could be made: the request reached no instance.
            UpstreamTimeout: the response was not complete within `timeout`.
            UpstreamProtocolError: the response was malformed, over `max_response_bytes`, or cut
                short.
            UpstreamClosed: the pool is closed, or was closed during the request.
            ValueError: the method, path or a header holds CR or LF.
        """
        if self._closed:
            raise UpstreamClosed("the upstream pool is closed")
        loop = self._loop
        if loop is None:
            # Once: on CPython 3.11 get_running_loop() makes a getpid() system call each time.
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        parts = [method, b" ", path, self._head_tail]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"content-length: %d\r\n\r\n" % len(body))
        tail: bytes | None = None
        if len(body) <= _JOIN_BODY_LIMIT:
            parts.append(body)
        else:
            tail = body
        request = b"".join(parts)
        # A CR or LF inside the method, path or a header would end a line early and let what
        # follows pose as headers of its own. The head holds exactly the line ends put there above,
        # so counting them checks every piece at once, in two passes over a few hundred bytes.
        head_size = len(request) if tail is not None else len(request) - len(body)
        line_ends = len(headers) + 4
        if (
            request.count(b"\n", 0, head_size) != line_ends
            or request.count(b"\r", 0, head_size) != line_ends
        ):
            raise ValueError("the method, path or a header holds CR or LF")

        connection = self._take_idle() if self._depth == 1 else self._take_room()
        if (
            connection is None
            and len(self._connections) + self._connecting >= self._max_connections
        ):
            connection = await self._wait_for_connection(loop, deadline)
        reused = connection is not None
        retrying = False
        while True:
            if connection is None:
                try:
                    connection = await self._connect(loop, deadline)
                except UpstreamConnectError as error:
                    if not retrying:
                        raise
                    # The instance went away while it held the request (a crash, or killed
                    # after failing its health checks while it hung): it may have run it, so
                    # this is no "never reached the worker", which callers may retry.
                    raise UpstreamProtocolError(
                        "the connection closed before any byte of the response, and the instance "
                        "refused a new one"
                    ) from error
            waiter = connection.send(request, tail, deadline)
            if connection._coalesce:
                self._filling = connection
            try:
                # The pool reads its connections' state directly, not through their properties:
                # this is the request path, and each property read is a Python call.
                if connection._write_paused:
                    await connection.drained()
                response = await waiter
            except _StaleConnection:
                connection.close()
                if not reused:
                    raise
                # The server closed this kept-alive connection while it sat idle (its keep-alive
                # timeout, a restart), and we learnt so only from the write: the connection ended
                # before a single byte of response. Such a request is retried once, on a fresh
                # connection, as urllib3 and browsers do. A server that closed the socket before
                # our bytes arrived ran nothing. The one case where it did is a server that read
                # the whole request and then dropped the connection without a byte of answer (a
                # crash mid-request): that request runs twice if the instance is back in time,
                # and if it is not, the retry's failed connect is reported as a broken exchange
                # (UpstreamProtocolError), never as UpstreamConnectError. A fresh connection that
                # fails the same way, or any failure after a byte of the response, is never
                # retried.
                if self._closed:
                    raise UpstreamClosed("the upstream pool was closed") from None
                connection = None
                reused = False
                retrying = True
                continue
            except BaseException:
                connection.abandon(waiter)
                raise
            if connection._coalesce and (
                connection._exchanges or connection._emptied_by is not waiter
            ):
                # Pipelining: answers to others are still to come on it, or another caller's
                # answer was the last (several answers can arrive in one read, before any of
                # their callers runs); that caller parks it.
                if connection._exchanges and all(
                    other.done() for other, _, _ in connection._exchanges
                ):
                    connection.close()  # only abandoned exchanges are left on it
            elif (
                connection._keep_alive
                and connection._open
                and connection._transport.get_write_buffer_size() == 0  # see _Connection.reusable
                and not self._closed
            ):
                if self._waiters:
                    self._hand_over(connection)
                elif len(self._idle) < self._max_idle:
                    self._idle.append(connection)
                else:
                    connection.close()
            else:
                connection.close()  # its connection_lost frees its slot for a waiter
            return response

    async def close(self) -> None:
        """Close all connections; requests in flight and any made later raise UpstreamClosed."""
        self._closed = True
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamClosed("the upstream pool was closed"))
        lost = [connection.shutdown() for connection in list(self._connections)]
        if lost:
            await asyncio.gather(*lost)

    def _take_idle(self) -> _Connection | None:
        """The most recently used idle connection still open, or None."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection._open:
                return connection
            # Closed since it was parked (its connection_lost has not run yet): skip it.
        return None

    def _take_room(self) -> _Connection | None:
        """Pipelining: a connection to send on now (see the class docstring), or None: open
        one, or wait when at the cap."""
        filling = self._filling
        if (
            filling is not None
            and filling._pending
            and filling._open
            and filling._keep_alive
            and len(filling._exchanges) < self._depth
        ):
            return filling
        connection = self._take_idle()
        if connection is not None or (
            len(self._connections) + self._connecting < self._max_connections
        ):
            return connection
        roomy = [
            other
            for other in self._connections
            if other._open and other._keep_alive and len(other._exchanges) < self._depth
        ]
        return min(roomy, key=lambda other: len(other._exchanges)) if roomy else None

    async def _wait_for_connection(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> _Connection | None:
        """Wait, behind the requests already waiting, until another request hands over its
        connection (returned) or a connection closes (None: the caller may open one)."""
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter
        except BaseException as error:
            # Timed out or cancelled. What was handed over in the meantime goes to the next one.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._hand_over(waiter.result())
            else:
                waiter.cancel()
            if isinstance(error, TimeoutError):
                raise UpstreamTimeout(
                    f"all {self._max_connections} connections to {self._address} stayed busy "
                    "for the whole timeout"
                ) from None
            raise

    def _hand_over(self, connection: _Connection | None) -> None:
        """Give a free connection, or a free slot (None), to the longest-waiting request; with
        none waiting, park the connection (or close it, if the idle list is full)."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        if connection is not None and not connection._exchanges:
            if connection._open and not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(connection)
            else:
                connection.close()

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        self._connecting += 1
        try:
            return await self._open_connection(loop, deadline)
        except BaseException:
            if self._waiters:
                self._hand_over(None)  # this slot stays free: let a waiter try instead
            raise
        finally:
            self._connecting -= 1

    async def _open_connection(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> _Connection:
        connect_deadline = loop.time() + self._connect_timeout
        deadline_first = deadline < connect_deadline
        factory = functools.partial(
            _Connection, loop, self._max_response_bytes, self._connection_lost, self._depth > 1
        )
        address = self._address
        try:
            async with asyncio.timeout_at(deadline if deadline_first else connect_deadline):
                if address.unix_path is not None:
                    connection = await _connect_unix(loop, factory, address.unix_path)
                else:
                    # UpstreamAddress.__post_init__ guarantees both when there is no unix_path.
                    assert address.host is not None
                    assert address.port is not None
                    _, connection = await loop.create_connection(
                        factory, address.host, address.port
                    )
        except TimeoutError:
            if deadline_first:
                raise UpstreamTimeout(f"no connection to {address} within the timeout") from None
            raise UpstreamConnectError(f"connecting to {address} timed out") from None
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to {address}: {exc}") from exc
        if self._closed:
            connection.close()
            raise UpstreamClosed("the upstream pool was closed")
        self._connections.add(connection)
        return connection

    def _connection_lost(self, connection: _Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            if self._waiters:
                self._hand_over(None)  # its slot is free
        # An idle connection the server closed is dropped now, so idle_connections stays true.
        if connection in self._idle:
            self._idle.remove(connection)


#: How long to wait before connecting again to a Unix socket whose listen backlog is full.
_BACKLOG_FULL_RETRY_SECONDS = 0.001


async def _connect_unix(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], _Connection], path: str
) -> _Connection:
    """Connect to the Unix socket at `path`, trying again while its listen backlog is full.

    TCP queues a connect to a full backlog (the SYN is retried); a Unix socket refuses it at once
    with EAGAIN. Either way the server is there and busy, so this waits as TCP would; the
    caller's timeout bounds the wait.
    """
    while True:
        try:
            _, connection = await loop.create_unix_connection(factory, path)
        except BlockingIOError:
            await asyncio.sleep(_BACKLOG_FULL_RETRY_SECONDS)
        else:
            return connection
