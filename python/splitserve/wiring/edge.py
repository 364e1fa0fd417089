"""The connection edge: what a client connection may hold of the gateway's descriptors, time and
memory. aiohttp's server limits none of them, so the gateway runs its own server set-up around it.

- **Descriptors.** At start the soft RLIMIT_NOFILE is raised to the hard limit (the common soft
  limit of 1,024 is far below what a gateway needs). Client connections are capped
  (`EdgeSettings.max_connections`) below that, keeping `descriptor_reserve` descriptors and one
  per client connection (for its forward to a worker) for the gateway's own work: without a
  reserve, ~1,000 idle connections left no descriptor for the health checks, which then failed
  (EMFILE), so healthy workers were replaced and could not be started again. At the cap, idle
  connections (no request in progress) are closed, least recently active first; with none idle,
  the new connection gets a 503 and is closed.
- **Slow request heads.** A request line and headers must arrive whole within
  `header_read_timeout_seconds`, counted from the connection's opening (first request) or from the
  head's first byte (kept-alive connections); else the connection is closed. There is no timer per
  request: a head that arrives within one read (nearly all of them) is never tracked; one that
  does not joins a set that one periodic sweep looks at.
- **Body memory.** The request bodies in flight are bounded by bytes (`max_inflight_body_bytes`),
  by Content-Length before the body is read: one addition and one comparison per request with
  a body. A request beyond the budget is answered 503 ServiceUnavailable with Retry-After (the
  plane's wire format, through the error boundary) and its body is discarded as it arrives. After
  large bodies are released, glibc is asked to return freed memory to the system (malloc_trim,
  at most once per `memory_trim_interval_seconds`): glibc's dynamic mmap threshold otherwise keeps
  bodies of a few MiB in its heap, and a burst of them left the gateway hundreds of MiB larger.

`run` serves an application with all of this until SIGINT or SIGTERM, as aiohttp's run_app does;
tests serve one through `EdgeRunner` on a port of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import gc
import heapq
import json
import logging
import os
import resource
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import uvloop
from aiohttp import web

from splitserve.config import EdgeSettings, Settings
from splitserve.errors import ServiceUnavailable
from splitserve.metrics.prometheus import EDGE_ENFORCEMENTS
from splitserve.wiring import keys
from splitserve.wiring.boundary import answer_error
from splitserve.wiring.logs import AccessLog, open_access_log

__all__ = [
    "BodyBudget",
    "EdgeLimitError",
    "EdgeLimits",
    "EdgeRunner",
    "EdgeServer",
    "ListenError",
    "MemoryTrimmer",
    "freeze_start_up",
    "host_memory_bytes",
    "raise_descriptor_limit",
    "run",
]

log = logging.getLogger(__name__)

_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
_CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
_NR_OPEN = Path("/proc/sys/fs/nr_open")
# How many of the least recently active idle connections one eviction closes, as a share of the
# cap: a scan over every connection finds them, so each scan frees a batch rather than one slot.
_EVICTION_SHARE = 32
# How often the slow-head sweep runs, as a share of the header read timeout.
_SWEEPS_PER_TIMEOUT = 4
# How often (seconds) the "connection cap reached" warning may be logged.
_CAP_WARNING_INTERVAL_SECONDS = 60.0


class EdgeLimitError(Exception):
    """The limits cannot work on this host (e.g. a descriptor limit below the reserve)."""


class ListenError(Exception):
    """The gateway cannot listen where it was told (the port is taken, the address is not
    this host's, ...)."""


@dataclass(frozen=True)
class EdgeLimits:
    """The limits in force: `EdgeSettings` with what it leaves to the host filled in.

    Attributes:
        descriptor_limit: the soft RLIMIT_NOFILE the gateway runs with.
        max_connections: client connections open at once.
        max_inflight_body_bytes: request-body bytes held at once.
    """

    descriptor_limit: int
    max_connections: int
    max_inflight_body_bytes: int

    @classmethod
    def derive(cls, edge: EdgeSettings, descriptor_limit: int, memory_bytes: int) -> EdgeLimits:
        """The limits for `edge` on a host with `descriptor_limit` descriptors and
        `memory_bytes` of memory.

        Raises:
            EdgeLimitError: the descriptor limit leaves no descriptor for clients after the
                reserve (and no --max-connections was given).
        """
        max_connections = edge.max_connections
        spare = descriptor_limit - edge.descriptor_reserve
        if max_connections is None:
            if spare < 2:
                raise EdgeLimitError(
                    f"the file descriptor limit ({descriptor_limit}) leaves none for clients "
                    f"after the {edge.descriptor_reserve} the gateway keeps for itself: raise "
                    "it (ulimit -n) or set --max-connections"
                )
            # Each connection with a request in flight also holds one to a worker.
            max_connections = spare // 2
        elif 2 * max_connections > spare:
            log.warning(
                "--max-connections %d may exhaust the file descriptor limit (%d): each "
                "connection can hold two, and %d are kept for health checks and workers",
                max_connections,
                descriptor_limit,
                edge.descriptor_reserve,
            )
        body_bytes = edge.max_inflight_body_bytes
        if body_bytes is None:
            body_bytes = min(
                int(memory_bytes * edge.inflight_body_memory_fraction), edge.inflight_body_bytes_cap
            )
        return cls(descriptor_limit, max_connections, max(1, body_bytes))


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (or to the kernel's cap, nr_open, when the
    hard limit is unlimited); if the kernel refuses, keep the soft limit and log why.

    Returns:
        (the soft limit before, the soft limit now).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(_NR_OPEN.read_text())
        except (OSError, ValueError):
            return soft, soft
    if soft != resource.RLIM_INFINITY and soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as error:
        log.warning(
            "could not raise the file descriptor limit from %d to %d: %s", soft, target, error
        )
        return soft, soft
    return soft, target


def host_memory_bytes() -> int:
    """The memory this process may use: physical memory, or the cgroup's limit when lower."""
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = _CGROUP_MEMORY_MAX.read_text().strip()
    except OSError:
        return physical
    return min(physical, int(limit)) if limit.isdigit() else physical


class BodyBudget:
    """Request-body bytes in flight, against a limit. No aiohttp here: tests call it directly.

    A body is always admitted when none is in flight, so a limit below one body's size slows
    requests down to one at a time but never refuses a lone one.
    """

    __slots__ = ("in_flight", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def reserve(self, size: int) -> bool:
        """Count `size` bytes in flight if they fit; False (and nothing counted) if not."""
        in_flight = self.in_flight
        if in_flight and in_flight + size > self.limit:
            return False
        self.in_flight = in_flight + size
        return True

    def release(self, size: int) -> None:
        """Count `size` bytes, reserved before, as no longer in flight."""
        self.in_flight -= size


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class MemoryTrimmer:
    """Returns freed heap memory to the system, at most once per interval, when asked.

    glibc raises its mmap threshold after freeing a large mapped block, so later bodies of that
    size come from the heap, and the heap does not shrink by itself when they are freed.
    malloc_trim(0) gives the free pages back; it takes ~1 ms, hence the rate limit.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval_seconds: float) -> None:
        self._loop = loop
        self._interval = interval_seconds
        self._malloc_trim = _load_malloc_trim()
        self._handle: asyncio.TimerHandle | None = None
        self.trims = 0

    def request(self) -> None:
        """Trim within the interval, unless a trim is already due."""
        if self._handle is None and self._malloc_trim is not None:
            self._handle = self._loop.call_later(self._interval, self._trim)

    def _trim(self) -> None:
        self._handle = None
        if self._malloc_trim is not None:
            self._malloc_trim(0)
            self.trims += 1

    def close(self) -> None:
        """Cancel a trim that is due."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class EdgeProtocol(web.RequestHandler):
    """aiohttp's HTTP/1.1 protocol, with the slow-head and idle bookkeeping of `EdgeServer`."""

    __slots__ = ("_edge", "_head_started", "last_active")

    def __init__(self, edge: EdgeServer, **kwargs: Any) -> None:
        super().__init__(edge, **kwargs)
        self._edge = edge
        # Loop time the head being awaited began (None: no head under way, or it is not tracked).
        self._head_started: float | None = None
        #: Loop time of this connection's last complete request head (or of its opening).
        self.last_active = 0.0

    @property
    def idle(self) -> bool:
        """No request in progress or queued: the connection waits for a request head."""
        # A waiter that is done has been given a request that its handler has not taken yet.
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit the connection under the cap, or answer 503 and close it."""
        edge = self._edge
        if not edge.admit(self):
            self._force_close = True  # data_received ignores whatever it sent
            edge.refuse(transport)
            return
        super().connection_made(transport)
        now = self._loop.time()
        self.last_active = now
        # The first head counts from the opening: a connection that sends nothing is closed too.
        self._head_started = now
        edge.pending_heads.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Forget the connection, then let aiohttp clean up."""
        self._edge.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed aiohttp's parser; time a head that is not complete after this read."""
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:  # a head (or a parse error) completed
            self.last_active = self._loop.time()
            if self._head_started is not None:
                self._head_started = None
                self._edge.pending_heads.discard(self)
        elif self._head_started is None and data and self.idle:
            # The start of a head that this read did not complete: the sweep times it. (When not
            # idle, a request is in progress and these are its body's bytes.)
            self._head_started = self._loop.time()
            self._edge.pending_heads.add(self)

    def resume_reading(self, resume_parser: bool = True) -> None:
        """aiohttp's, when something is paused; else nothing, as there is nothing to resume.

        aiohttp's body reader calls this after every read that leaves its buffer below the
        low-water mark, paused or not (InvokeEndpoint's read of a body that has arrived included),
        and aiohttp's own version then feeds the parser an empty read and resumes the transport:
        a second pass through `data_received` for every request. When neither flow control
        (`_reading_paused`, which is set whenever the parser is paused) nor a full message queue
        (`_buffer_paused`) holds the connection, that pass parses nothing and the transport is
        reading already.
        """
        if self._reading_paused or self._buffer_paused:
            super().resume_reading(resume_parser)

    def head_overdue(self, deadline: float) -> bool:
        """Whether the head being awaited began at or before `deadline` (loop time)."""
        return self._head_started is not None and self._head_started <= deadline

    def stop_timing_head(self) -> None:
        """Stop timing the head (the sweep has dealt with it)."""
        self._head_started = None


class EdgeServer(web.Server):
    """aiohttp's low-level server, with the connection cap, the slow-head sweep and the body
    budget in front of the application's handler."""

    def __init__(
        self,
        handler: _Handler,
        *,
        request_factory: Any,
        settings: Settings,
        limits: EdgeLimits,
        loop: asyncio.AbstractEventLoop,
        **kwargs: Any,
    ) -> None:
        super().__init__(self._budgeted, request_factory=request_factory, loop=loop, **kwargs)
        edge = settings.edge
        self._app_handler = handler
        self.max_connections = limits.max_connections
        self.budget = BodyBudget(limits.max_inflight_body_bytes)
        self._max_payload = settings.max_payload_bytes
        self._retry_after = str(edge.busy_retry_after_seconds)
        self._trim_min_bytes = edge.memory_trim_min_bytes
        self.trimmer = MemoryTrimmer(loop, edge.memory_trim_interval_seconds)
        self._header_timeout = edge.header_read_timeout_seconds
        self._sweep_interval = edge.header_read_timeout_seconds / _SWEEPS_PER_TIMEOUT
        #: Admitted connections, oldest first.
        self.clients: dict[EdgeProtocol, None] = {}
        #: Connections whose request head is under way and was not complete after one read.
        self.pending_heads: set[EdgeProtocol] = set()
        #: What the edge has done (also counted in splitserve_edge_enforcements_total): connections
        #: refused at the cap, idle ones closed to make room, ones closed for a slow head,
        #: requests refused for memory.
        self.refused_connections = 0
        self.evicted_connections = 0
        self.slow_heads_closed = 0
        self.refused_bodies = 0
        self._cap_warned_at = -_CAP_WARNING_INTERVAL_SECONDS
        self._counted_refused_connection = EDGE_ENFORCEMENTS.labels("refused_connection")
        self._counted_closed_idle = EDGE_ENFORCEMENTS.labels("closed_idle_connection")
        self._counted_closed_slow_head = EDGE_ENFORCEMENTS.labels("closed_slow_head")
        self._counted_refused_body = EDGE_ENFORCEMENTS.labels("refused_body")
        self._sweep_handle = loop.call_later(self._sweep_interval, self._sweep)
        self._busy_answer = self._refusal_bytes()

    def __call__(self) -> EdgeProtocol:
        """A protocol for one new connection (the event loop's protocol factory)."""
        return EdgeProtocol(self, loop=self._loop, **self._kwargs)

    # --- descriptors: the connection cap ----------------------------------------------------

    def admit(self, protocol: EdgeProtocol) -> bool:
        """Count a new connection in, closing idle ones first if the cap is reached; False if
        every connection has a request in progress."""
        clients = self.clients
        if len(clients) >= self.max_connections and not self._evict_idle():
            return False
        clients[protocol] = None
        return True

    def _evict_idle(self) -> int:
        """Close the least recently active idle connections (a batch, so that the next arrivals
        find room without another scan); return how many."""
        now = self._loop.time()
        if now - self._cap_warned_at >= _CAP_WARNING_INTERVAL_SECONDS:
            self._cap_warned_at = now
            log.warning(
                "%d client connections: the cap (--max-connections) is reached; closing idle "
                "ones, refusing new ones while none is idle",
                len(self.clients),
            )
        idle = [client for client in self.clients if client.idle]
        batch = max(1, self.max_connections // _EVICTION_SHARE)
        oldest = heapq.nsmallest(batch, idle, key=lambda client: client.last_active)
        for client in oldest:
            self.forget(client)
            client.force_close()
        self.evicted_connections += len(oldest)
        self._counted_closed_idle.inc(len(oldest))
        return len(oldest)

    def refuse(self, transport: asyncio.BaseTransport) -> None:
        """Answer a connection beyond the cap with a 503 and close it."""
        self.refused_connections += 1
        self._counted_refused_connection.inc()
        if isinstance(transport, asyncio.WriteTransport):
            with contextlib.suppress(OSError, RuntimeError):
                transport.write(self._busy_answer)
        transport.close()

    def _refusal_bytes(self) -> bytes:
        # No request has been read, so nothing says which plane the client wanted: the body
        # carries the code as both planes' clients read it (docs/sagemaker-api.md, 'Errors').
        body = json.dumps(
            {
                "__type": "ServiceUnavailable",
                "ErrorCode": "ServiceUnavailable",
                "Message": "The gateway has too many connections open; try again.",
            }
        ).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\n"
            "Content-Type: application/json\r\n"
            "x-amzn-ErrorType: ServiceUnavailable\r\n"
            f"Retry-After: {self._retry_after}\r\n"
            "Connection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode("ascii") + body

    def forget(self, protocol: EdgeProtocol) -> None:
        """Stop counting a connection (closed, or being closed)."""
        self.clients.pop(protocol, None)
        self.pending_heads.discard(protocol)

    # --- slow heads: one periodic sweep -----------------------------------------------------

    def _sweep(self) -> None:
        """Close the connections whose request head is overdue."""
        deadline = self._loop.time() - self._header_timeout
        overdue = [client for client in self.pending_heads if client.head_overdue(deadline)]
        for client in overdue:
            self.pending_heads.discard(client)
            client.stop_timing_head()
            if client.idle:  # still no complete head (else a request is under way: leave it)
                self.slow_heads_closed += 1
                self._counted_closed_slow_head.inc()
                log.debug("closed a connection whose request head was not complete in time")
                self.forget(client)
                client.force_close()
        self._sweep_handle = self._loop.call_later(self._sweep_interval, self._sweep)

    # --- memory: the body budget ------------------------------------------------------------

    async def _budgeted(self, request: web.BaseRequest) -> web.StreamResponse:
        """The application's handler, for a request whose body fits the budget; else a 503."""
        size = request.content_length
        if size is None:
            if not request.body_exists:
                return await self._app_handler(request)
            size = self._max_payload  # chunked: it may grow to the limit
        elif size == 0:
            return await self._app_handler(request)
        elif size > self._max_payload:
            size = self._max_payload  # aiohttp refuses (413) once it has read this much
        budget = self.budget
        if not budget.reserve(size):
            return self._busy(request)
        try:
            return await self._app_handler(request)
        finally:
            budget.release(size)
            if size >= self._trim_min_bytes:
                self.trimmer.request()

    def _busy(self, request: web.BaseRequest) -> web.StreamResponse:
        """503 ServiceUnavailable with Retry-After, in the wire format of the request's plane."""
        self.refused_bodies += 1
        self._counted_refused_body.inc()
        response = answer_error(
            cast(web.Request, request),  # the application's request factory makes web.Requests
            ServiceUnavailable(
                "The gateway holds as many request bodies as its memory budget allows; try again."
            ),
        )
        response.headers["Retry-After"] = self._retry_after
        return response

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (aiohttp's)
        """Stop the sweep and a trim that is due, then close connections as aiohttp does."""
        self._sweep_handle.cancel()
        self.trimmer.close()
        await super().shutdown(timeout)


class EdgeRunner(web.AppRunner):
    """aiohttp's AppRunner, serving through an `EdgeServer`."""

    def __init__(
        self, app: web.Application, settings: Settings, limits: EdgeLimits, **kwargs: Any
    ) -> None:
        self._server_kwargs: dict[str, Any] = {
            # Off unless --access-log asked for it: aiohttp then skips even the clock reads.
            "access_log": open_access_log(settings.logs),
            "access_log_class": AccessLog,
            "keepalive_timeout": settings.edge.keepalive_timeout_seconds,
        }
        super().__init__(app, **self._server_kwargs, **kwargs)
        self._settings = settings
        self._limits = limits

    async def _make_server(self) -> web.Server:
        # AppRunner's own: starts the application (its cleanup contexts) and builds the server
        # that would serve it, whose handler and request factory the edge's server takes over.
        plain = await super()._make_server()
        return EdgeServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            settings=self._settings,
            limits=self._limits,
            loop=asyncio.get_running_loop(),
            **self._server_kwargs,
        )

    @property
    def edge(self) -> EdgeServer:
        """The running server (after `setup`)."""
        server = self.server
        if not isinstance(server, EdgeServer):
            raise RuntimeError("the runner is not set up")
        return server


def start_limits(settings: Settings) -> EdgeLimits:
    """Raise the descriptor limit and derive the limits in force; log them.

    Raises:
        EdgeLimitError: the limits cannot work on this host.
    """
    before, descriptor_limit = raise_descriptor_limit()
    limits = EdgeLimits.derive(settings.edge, descriptor_limit, host_memory_bytes())
    if descriptor_limit != before:
        log.info("file descriptor limit raised from %d to %d", before, descriptor_limit)
    log.info(
        "edge limits: %d client connections (file descriptor limit %d, %d kept for health "
        "checks and workers), %d request-body bytes in flight, request heads within %g s",
        limits.max_connections,
        descriptor_limit,
        settings.edge.descriptor_reserve,
        limits.max_inflight_body_bytes,
        settings.edge.header_read_timeout_seconds,
    )
    return limits


def run(app: web.Application, settings: Settings, announce: Callable[[str], None]) -> None:
    """Serve `app` on `settings.host:port` with the edge's limits until SIGINT or SIGTERM.

    As aiohttp's run_app, on a uvloop event loop: start the application, listen, wait for a
    signal, then close connections (waiting for requests in progress) and the application.
    `announce` is given the line that says where it listens.

    Raises:
        EdgeLimitError: the limits cannot work on this host.
        ListenError: the address cannot be listened on (the port is taken, ...).
        LogSetupError: the access log cannot be opened.
        Exception: whatever the application's start-up raises.
    """
    limits = start_limits(settings)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(app, settings, limits, announce))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            _cancel_remaining_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()


async def _serve(
    app: web.Application, settings: Settings, limits: EdgeLimits, announce: Callable[[str], None]
) -> None:
    internal = _internal_listener(app, settings)
    runner = EdgeRunner(app, settings, limits, handle_signals=True)
    await runner.setup()
    freeze_start_up()
    try:
        if internal is not None:
            await web.SockSite(runner, internal, backlog=settings.edge.listen_backlog).start()
        site = web.TCPSite(
            runner,
            settings.host,
            settings.port,
            backlog=settings.edge.listen_backlog,
            # Replicas of `serve --processes N` share the port; the kernel spreads connections.
            reuse_port=settings.replicas.is_replica or None,
        )
        try:
            await site.start()
        except OSError as error:
            hint = (
                ": another gateway or program has it; stop it or choose another with --port"
                if error.errno == errno.EADDRINUSE
                else ""
            )
            # uvloop's message repeats the address; the errno's own text says it once.
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise ListenError(
                f"cannot listen on {settings.host}:{settings.port}: {reason}{hint}"
            ) from None
        announce(f"======== Running on {site.name} ========\n(Press CTRL+C to quit)")
        await asyncio.Event().wait()  # until a signal ends the loop's run
    finally:
        await runner.cleanup()


def freeze_start_up() -> None:
    """Collect start-up's garbage, then move every object left to the collector's permanent
    generation, before the gateway takes requests.

    What start-up allocated (modules, the application, its settings; ~60,000 objects the
    collector tracks) lives as long as the process, and every full collection scanned it again:
    one took 86-140 ms on the 2-core VM, a pause every request in flight waited for
    (docs/benchmarks.md, 'Tail latency'). Frozen, a full collection scans what came after.
    """
    gc.collect()
    gc.freeze()


def _internal_listener(app: web.Application, settings: Settings) -> socket.socket | None:
    """A replica's internal listener, bound to a free port of the advertise address before the
    app starts (it registers the URL with the other replicas when it starts); None for a single
    gateway process."""
    if not settings.shares_state:
        return None
    address = settings.replicas.advertise_address
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    internal = socket.socket(family, socket.SOCK_STREAM)
    try:
        internal.bind((address, 0))
    except OSError as error:
        internal.close()
        raise ListenError(
            f"cannot listen on the advertise address {address}: {os.strerror(error.errno or 0)}"
        ) from None
    port = internal.getsockname()[1]
    host = f"[{address}]" if family == socket.AF_INET6 else address
    app[keys.INTERNAL_URL] = f"http://{host}:{port}"
    return internal


def _cancel_remaining_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
