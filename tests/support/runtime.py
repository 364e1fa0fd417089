"""Helpers of the runtime tests: a fake instance client in place of a worker's connection pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from splitserve.contract.upstream import UpstreamResponse


@dataclass
class FakeClient:
    """An instance client that records what it was sent and answers with `answer()`."""

    answer: Callable[[], UpstreamResponse] = lambda: UpstreamResponse(
        200, [(b"content-type", b"application/json")], b"[0.5]"
    )
    sent: list[tuple[bytes, bytes, Sequence[tuple[bytes, bytes]], bytes, float]] = field(
        default_factory=list
    )
    gate: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def request(
        self,
        method: bytes,
        path: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        timeout: float,  # noqa: ASYNC109 (the protocol's signature)
    ) -> UpstreamResponse:
        self.sent.append((method, path, headers, body, timeout))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.answer()
