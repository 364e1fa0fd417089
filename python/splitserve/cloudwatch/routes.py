"""CloudWatch's HTTP routes: thin, every protocol through one handler.

The Smithy RPC v2 CBOR path is CloudWatch's own; `POST /` is shared with the SageMaker control
plane, so the app's one `POST /` handler asks `is_cloudwatch_request` and passes CloudWatch's
requests (X-Amz-Target `GraniteServiceVersion20100801.*`, or a form-encoded query request) to
`handler`. Errors are answered here, in the request's protocol (a CloudWatch client cannot read
SageMaker's error form): the error table's errors with their code, anything else as
InternalServiceError whose message names only the request id.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from splitserve.cloudwatch.protocols import (
    SERVICE_PATH_PREFIX,
    Answer,
    WireProtocol,
    decode,
    encode_error,
    encode_result,
    protocol_of,
)
from splitserve.errors import (
    InternalFailure,
    PayloadTooLarge,
    SerializationException,
    SplitserveError,
)

__all__ = ["CloudWatchAPI", "Verify", "handler", "is_cloudwatch_request", "routes"]

log = logging.getLogger(__name__)

#: Checks a request's signature (the app's SigV4 check for the `monitoring` signing name);
#: raises the error table's authentication errors.
Verify = Callable[[web.Request, bytes], None]
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CloudWatchAPI(Protocol):
    """What the route calls: the CloudWatch service's dispatch."""

    async def dispatch(self, operation: str, params: dict[str, object]) -> dict[str, object]:
        """Serve `operation` with its checked parameters."""
        ...


def is_cloudwatch_request(request: web.BaseRequest) -> bool:
    """Whether a `POST /` belongs to CloudWatch rather than to the SageMaker control plane."""
    return protocol_of(request.path, request.headers) is not None


def handler(api: CloudWatchAPI, verify: Verify | None, max_body_bytes: int) -> _Handler:
    """The handler of every CloudWatch request, answering through `api`; `verify` checks
    signatures (None: authentication is off); `max_body_bytes` is what a 413 names."""

    async def cloudwatch_api(request: web.Request) -> web.StreamResponse:
        """Decode, dispatch, encode, in the request's protocol."""
        request_id = str(uuid.uuid4())
        protocol = protocol_of(request.path, request.headers) or WireProtocol.JSON
        try:
            answer = await _serve(api, verify, protocol, request, request_id, max_body_bytes)
        except SplitserveError as error:
            answer = encode_error(protocol, error, request_id)
        except Exception as error:
            log.error("CloudWatch request %s failed", request_id, exc_info=error)
            internal = InternalFailure(f"An internal error occurred (request id {request_id}).")
            answer = encode_error(protocol, internal, request_id)
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)

    return cloudwatch_api


async def _serve(
    api: CloudWatchAPI,
    verify: Verify | None,
    protocol: WireProtocol,
    request: web.Request,
    request_id: str,
    max_body_bytes: int,
) -> Answer:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as error:
        raise PayloadTooLarge(
            f"Request body is over the limit of {max_body_bytes} bytes."
        ) from error
    except web.RequestPayloadError as error:
        raise SerializationException(
            "The request body could not be read: its framing or encoding is broken."
        ) from error
    if verify is not None:
        verify(request, body)
    decoded = decode(protocol, request.path, request.headers, body)
    output = await api.dispatch(decoded.operation, decoded.params)
    return encode_result(protocol, decoded.operation, output, request_id)


def routes(api: CloudWatchAPI, verify: Verify | None, max_body_bytes: int) -> list[web.RouteDef]:
    """CloudWatch's own route (Smithy RPC v2 CBOR); `POST /` is the app's (see the module)."""
    return [web.post(SERVICE_PATH_PREFIX + "{operation}", handler(api, verify, max_body_bytes))]
