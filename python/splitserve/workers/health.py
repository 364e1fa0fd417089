"""The health check of an instance: GET /ping through the container-contract client, and what
one check found (`PingResult`).

A ping the gateway could not even send because it is out of file descriptors (EMFILE, ENFILE) says
nothing about the instance: it is `NOT_CHECKED`, logged and counted neither as a failure nor as a
success (`instance.WorkerInstance` and `ray_placement` both act on that).
"""

from __future__ import annotations

import enum
import errno
import logging

from splitserve.contract.upstream import UpstreamAddress, UpstreamError, UpstreamPool

logger = logging.getLogger(__name__)

#: A /ping answer is a status line and a few bytes; a larger one is not an answer.
_PING_MAX_RESPONSE_BYTES = 64 * 1024

#: The errors of a gateway out of file descriptors (its own, or the system's).
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


class PingResult(enum.Enum):
    """What one health check found."""

    #: /ping answered 200 in time.
    OK = "ok"
    #: No answer, another status, or too late.
    FAILED = "failed"
    #: The gateway is out of file descriptors: the instance was not checked at all.
    NOT_CHECKED = "not checked"


def _out_of_descriptors(error: BaseException) -> bool:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in _OUT_OF_DESCRIPTORS:
            return True
        cause = cause.__cause__
    return False


class HealthProbe:
    """GET /ping against one address, through the forwarding client (a fresh connection each
    time: this is not the hot path, and a hung connection must not outlive its check)."""

    def __init__(self, address: UpstreamAddress, timeout_seconds: float) -> None:
        """Probe `address`, giving each ping `timeout_seconds` (connecting included)."""
        self._address = address
        self._timeout = timeout_seconds
        self._pool = UpstreamPool(
            address,
            max_idle=0,
            max_connections=1,
            connect_timeout=timeout_seconds,
            max_response_bytes=_PING_MAX_RESPONSE_BYTES,
        )

    async def ping(self) -> PingResult:
        """Check once; see `PingResult`."""
        try:
            response = await self._pool.request(b"GET", b"/ping", (), b"", self._timeout)
        except (UpstreamError, OSError) as error:
            if _out_of_descriptors(error):
                logger.warning(
                    "could not check %s: the gateway is out of file descriptors (%s); not"
                    " counted as a failed health check",
                    self._address,
                    error,
                )
                return PingResult.NOT_CHECKED
            return PingResult.FAILED
        return PingResult.OK if response.status == 200 else PingResult.FAILED

    async def close(self) -> None:
        """Close the probe's connection, if one is open."""
        await self._pool.close()
