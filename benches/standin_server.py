"""A stand-in model server for gateway benchmarks: answers every request at once, costing ~nothing.

It speaks just enough of SageMaker's container contract for splitserve to run it as a
bring-your-own image: it listens on 127.0.0.1:$SAGEMAKER_BIND_TO_PORT, `GET /ping` answers 200,
and `POST /invocations` answers 200 with one CSV prediction whatever it was sent, over kept-alive
HTTP/1.1 connections. With it behind a gateway, the gateway's own cost per request is what shows.
(benches/load.py uses nginx for the same job; this one needs nothing beyond the test dependencies.)
"""

from __future__ import annotations

import asyncio
import os
from typing import cast

import httptools
import uvloop

_PREDICTION = b"0.5\n"
_ANSWERS = {
    b"/invocations": b"HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_PREDICTION), _PREDICTION),
    b"/ping": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
}
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class StandinProtocol(asyncio.Protocol):
    """One client connection: parse requests with httptools, answer each when it is complete."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        # uvloop's transports implement asyncio.Transport without deriving from it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a malformed request closes the connection."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_url(self, url: bytes) -> None:
        """A piece of the request target."""
        self._url += url

    def on_message_complete(self) -> None:
        """Answer the request: the prediction, the ping, or 404."""
        assert self._transport is not None
        self._transport.write(_ANSWERS.get(self._url, _NOT_FOUND))
        self._url = b""
        if not self._parser.should_keep_alive():
            self._transport.close()


async def serve(port: int) -> None:
    """Listen on 127.0.0.1:`port` until the process is stopped."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(StandinProtocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))))
