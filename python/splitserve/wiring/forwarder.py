"""`ControllerForwarder`: a replica that is not the controller passes control-plane and
CloudWatch requests to the controller's internal listener, as they came (signature included;
docs/architecture.md, "Replicas")."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiohttp import web

from splitserve.config import ReplicaSettings
from splitserve.errors import ServiceUnavailable
from splitserve.wiring.replicas import ReplicaNode

__all__ = ["FORWARDED_HEADER", "ControllerForwarder"]

log = logging.getLogger(__name__)

#: Marks a request one replica passed to the controller: it is never passed on again.
FORWARDED_HEADER = "x-splitserve-forwarded-by"

#: How long a forward waits before it looks for the controller again.
_RETRY_SECONDS = 0.1

_NO_ANSWER = "The replica that controls the endpoints did not answer; retry."

#: Hop-by-hop headers (RFC 9110, 7.6.1) and those aiohttp sets itself: not passed on.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)

#: The Content-Encodings aiohttp's server decodes while it reads a request body: the body passed
#: on is the decoded one, so its Content-Encoding is not passed on either (the controller would
#: decode it a second time).
_DECODED_ENCODINGS = frozenset({"gzip", "deflate", "br", "zstd"})


class ControllerForwarder:
    """Passes a request to the controller's internal listener and its answer back, as they are."""

    def __init__(self, node: ReplicaNode, settings: ReplicaSettings) -> None:
        """A forwarder finding the controller through `node`."""
        self._node = node
        self._controller_wait_seconds = settings.controller_wait_seconds
        self._timeout = aiohttp.ClientTimeout(total=settings.forward_timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def forward(self, request: web.Request) -> web.Response:
        """The controller's answer to `request`.

        Raises:
            ServiceUnavailable: no controller is known or accepting within
                `controller_wait_seconds` (one is being elected), it did not answer, or the
                request was already passed on once.
        """
        if FORWARDED_HEADER in request.headers:
            raise ServiceUnavailable(
                "The replica this request was passed to no longer controls the endpoints; retry."
            )
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        headers = [
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in _NOT_FORWARDED
            and not (name.lower() == "content-encoding" and value.lower() in _DECODED_ENCODINGS)
        ]
        headers.append((FORWARDED_HEADER, self._node.replica_id))
        body = await request.read()
        deadline = time.monotonic() + self._controller_wait_seconds
        while True:
            url = await self._node.controller_url()
            if url is not None:
                try:
                    return await self._send(self._session, request, url, headers, body)
                except aiohttp.ClientConnectorError as error:
                    failure: Exception = error  # not delivered: asked again below
                except (aiohttp.ClientError, TimeoutError) as error:
                    log.warning(
                        "control request not passed to the controller at %s: %s", url, error
                    )
                    raise ServiceUnavailable(_NO_ANSWER) from None
            # No live controller yet (a replica is taking over, or the controller's heartbeat
            # has not resumed after a database outage), or one that has just taken control and
            # does not accept on its internal listener yet: wait for it, within a bound.
            if time.monotonic() + _RETRY_SECONDS >= deadline:
                if url is None:
                    raise ServiceUnavailable(
                        "No replica controls the endpoints at the moment (one is taking over); "
                        "retry."
                    )
                log.warning("control request not passed to the controller at %s: %s", url, failure)
                raise ServiceUnavailable(_NO_ANSWER)
            await asyncio.sleep(_RETRY_SECONDS)

    @staticmethod
    async def _send(
        session: aiohttp.ClientSession,
        request: web.Request,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> web.Response:
        async with session.request(
            request.method,
            url + request.raw_path,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as answer:
            payload = await answer.read()
            kept = [
                (name, value)
                for name, value in answer.headers.items()
                if name.lower() not in _NOT_FORWARDED
            ]
            return web.Response(status=answer.status, body=payload, headers=kept)

    async def close(self) -> None:
        """Close the client session."""
        if self._session is not None:
            await self._session.close()
