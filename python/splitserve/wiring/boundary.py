"""Errors on the wire: the one place the error table (`errors.wire_error`) becomes HTTP responses.

Each plane answers errors in the form its SageMaker client parses: the control plane's JSON
`{"__type", "Message"}`, the runtime's REST-JSON `{"ErrorCode", "Message", ...}` with
x-amzn-ErrorType. Internal exception text never goes to a client: it goes to the log under the
request id that the answer names.

Every answer carries an x-amzn-RequestId, as AWS's do.

The gateway uses no aiohttp middleware: with one, aiohttp runs a middleware chain for every request
(two more coroutines, a cache lookup and the current-app bookkeeping: 15 Python calls, where an
invocation makes ~120 in all), on InvokeEndpoint too. Instead `create_app` wraps each route's
handler in `handle_errors`, except InvokeEndpoint's, which catches its own errors and sets its own
request id (a wrapper would be one more coroutine per request), and ends the route table with
`unrouted`, which gives what no route takes aiohttp's own 404 or 405, with a request id. (An
on_response_prepare signal could add the ids instead, but it costs every response five Python
calls.)
"""

from __future__ import annotations

import functools
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from splitserve.wiring import keys
from splitserve._router import RouterError
from splitserve.config import MAX_PAYLOAD_BYTES
from splitserve.control.routes import CONTENT_TYPE as CONTROL_CONTENT_TYPE
from splitserve.errors import (
    InternalFailure,
    ModelError,
    PayloadTooLarge,
    SplitserveError,
    wire_error,
)
from splitserve.metrics.prometheus import GATEWAY_ERRORS
from splitserve.contract.upstream import UpstreamError

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-amzn-RequestId"
_RUNTIME_PREFIX = "/endpoints/"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Request ids are UUID-shaped like AWS's and unique like uuid4()'s: the first 24 characters of a
# random UUID, drawn once per process, then a 48-bit counter. uuid4() per request would cost an
# os.urandom call and a UUID object, a measurable share of the gateway's time per request.
_REQUEST_ID_PREFIX = str(uuid.uuid4())[:24]
_request_numbers = itertools.count()


def next_request_id() -> str:
    """A request id no other request of this process (or, in practice, of any other) has."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_numbers):012x}"


def answer_error(request: web.Request, error: Exception) -> web.Response:
    """The answer to `error`, raised while handling `request`. Call it from an `except` clause.

    Errors of the error table (and the router's) go on the wire in the form of the plane the
    request came in on; aiohttp's 413 (a body over client_max_size) becomes the API's
    PayloadTooLarge. Any other HTTPException is raised again, with a request id, for aiohttp to
    answer as it does. Anything else is an InternalFailure: logged with its traceback under the
    request id, which the message names.

    Raises:
        web.HTTPException: `error` itself, when it is one of aiohttp's own answers.
    """
    request_id = next_request_id()
    if isinstance(error, SplitserveError | RouterError):
        response = _wire_response(request, error)
    elif isinstance(error, web.HTTPRequestEntityTooLarge):
        settings = request.app.get(keys.SETTINGS)
        limit = MAX_PAYLOAD_BYTES if settings is None else settings.max_payload_bytes
        response = _wire_response(
            request, PayloadTooLarge(f"Request body is over the limit of {limit} bytes.")
        )
    elif isinstance(error, web.HTTPException):
        error.headers[REQUEST_ID_HEADER] = request_id
        raise error
    else:
        log.error("request %s failed", request_id, exc_info=error)
        response = _wire_response(
            request, InternalFailure(f"An internal error occurred (request id {request_id}).")
        )
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


def handle_errors(handler: Handler) -> Handler:
    """`handler`, answering its errors with `answer_error` and giving its answers a request id."""

    @functools.wraps(handler)
    async def handled(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except Exception as error:
            return answer_error(request, error)
        response.headers[REQUEST_ID_HEADER] = next_request_id()
        return response

    return handled


async def unrouted(request: web.Request) -> web.StreamResponse:
    """The last route, taking any method and path: aiohttp's own answer to a request no other
    route takes, with a request id. 405 when some route has the path but not the method (its
    Allow header lists theirs), else 404.

    Raises:
        web.HTTPMethodNotAllowed, web.HTTPNotFound: always (aiohttp answers them).
    """
    allowed: set[str] = set()
    this = request.match_info.route.resource
    for resource in request.app.router.resources():
        if resource is not this:
            _, methods = await resource.resolve(request)
            allowed |= methods
    error: web.HTTPException = (
        web.HTTPMethodNotAllowed(request.method, allowed) if allowed else web.HTTPNotFound()
    )
    error.headers[REQUEST_ID_HEADER] = next_request_id()
    raise error


def _wire_response(request: web.Request, error: Exception) -> web.Response:
    """The wire form of `error` for the plane `request` came in on."""
    wire = wire_error(error)
    message = error.message if isinstance(error, SplitserveError) else str(error)
    if not request.path.startswith(_RUNTIME_PREFIX):
        return web.json_response(
            {"__type": wire.code, "Message": message},
            status=wire.status,
            content_type=CONTROL_CONTENT_TYPE,
        )
    body: dict[str, object] = {"ErrorCode": wire.code, "Message": message}
    if isinstance(error, ModelError):
        body["OriginalStatusCode"] = error.detail.original_status_code
        body["OriginalMessage"] = error.detail.original_message
        body["LogStreamArn"] = error.detail.log_stream_arn
    elif not isinstance(error.__cause__, UpstreamError):
        # Refused before a variant was chosen: not any variant's invocation. (After routing, the
        # runtime service raises a ModelError, or another error `from` the UpstreamError that
        # ended the forward; those it counted as the variant's invocation and model error.)
        GATEWAY_ERRORS.labels(wire.code).inc()
    response = web.json_response(body, status=wire.status)
    response.headers["x-amzn-ErrorType"] = wire.code
    return response
