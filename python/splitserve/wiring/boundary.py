"""The error boundary: the one place errors become HTTP answers, built once per plane.

`create_app` builds one `ErrorBoundary` per plane and wraps every handler of that plane in it,
InvokeEndpoint's included: the runtime plane answers in sagemaker-runtime's REST-JSON form
(`{"ErrorCode", "Message", ...}` with x-amzn-ErrorType), the control plane in SageMaker's JSON 1.1
form (`{"__type", "Message"}`); see docs/sagemaker-api.md, '1.1 Control plane' and '1.2 Data
plane'. The code and status come from the one error table (`errors.wire_error`).

The boundary decides; the formatters (`control_error_response`, `runtime_error_response`) only
format, with no side effects. The boundary:
- answers an error of the error table in its plane's form; aiohttp's 413 (a body over
  client_max_size) as the API's PayloadTooLarge; a body aiohttp could not read (broken framing,
  or not what its Content-Encoding says) as the plane's 400; any other exception (a router error
  that escaped its conversion included) as an InternalFailure whose message names only the
  request id (the exception and its traceback go to the log under that id);
- lets aiohttp's own HTTP answers (404, 405, ...) through, with a request id;
- counts, on the runtime plane, the requests refused before a variant took them
  (splitserve_gateway_errors_total by code): what a variant took is counted by its recorder;
- gives every answer an x-amzn-RequestId, as AWS's answers have, drawn when the request starts
  and set in `wiring.logs.REQUEST_ID`, so every log line about the request names it.

There is no aiohttp middleware: a middleware chain costs every request two more coroutines and
the current-app bookkeeping; one wrapper coroutine per handler does the same job for less. The
last route, `unrouted`, gives what no route takes aiohttp's own 404 or 405 with a request id.
"""

from __future__ import annotations

import enum
import functools
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from splitserve.config import MAX_PAYLOAD_BYTES
from splitserve.contract.upstream import UpstreamError
from splitserve.control.routes import CONTENT_TYPE as CONTROL_CONTENT_TYPE
from splitserve.errors import (
    InternalFailure,
    InvocationValidationError,
    ModelError,
    PayloadTooLarge,
    SerializationException,
    SplitserveError,
    wire_error,
)
from splitserve.metrics.prometheus import GATEWAY_ERRORS
from splitserve.wiring.logs import REQUEST_ID

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


class Plane(enum.Enum):
    """Which SageMaker client a route answers, and so which wire form its errors take."""

    CONTROL = "control"
    """`sagemaker` (JSON 1.1), and the gateway's own GET routes."""
    RUNTIME = "runtime"
    """`sagemaker-runtime` (REST-JSON): InvokeEndpoint."""


def control_error_response(error: SplitserveError) -> web.Response:
    """`error` in the control plane's JSON 1.1 form (no side effects)."""
    wire = wire_error(error)
    return web.json_response(
        {"__type": wire.code, "Message": error.message},
        status=wire.status,
        content_type=CONTROL_CONTENT_TYPE,
    )


def runtime_error_response(error: SplitserveError) -> web.Response:
    """`error` in sagemaker-runtime's REST-JSON form, with x-amzn-ErrorType (no side effects)."""
    wire = wire_error(error)
    body: dict[str, object] = {"ErrorCode": wire.code, "Message": error.message}
    if isinstance(error, ModelError):
        body["OriginalStatusCode"] = error.detail.original_status_code
        body["OriginalMessage"] = error.detail.original_message
        body["LogStreamArn"] = error.detail.log_stream_arn
    response = web.json_response(body, status=wire.status)
    response.headers["x-amzn-ErrorType"] = wire.code
    return response


class ErrorBoundary:
    """Answers the errors of one plane's handlers; built once per plane by `create_app`."""

    def __init__(self, plane: Plane, max_payload_bytes: int) -> None:
        """A boundary answering in `plane`'s wire form; `max_payload_bytes` is what a 413's
        message names (the application's client_max_size)."""
        self.plane = plane
        self._max_payload_bytes = max_payload_bytes
        self._format = runtime_error_response if plane is Plane.RUNTIME else control_error_response

    def wrap(self, handler: Handler) -> Handler:
        """`handler`, its errors answered by this boundary and its answers given a request id."""
        answer = self.answer
        set_request_id = REQUEST_ID.set
        numbers = _request_numbers

        @functools.wraps(handler)
        async def bounded(request: web.Request) -> web.StreamResponse:
            # Drawn before the handler runs, so every log line about the request carries it
            # (wiring/logs.py); aiohttp runs each request in its own task, so it ends with it.
            # next_request_id() inline: one Python call fewer per request.
            request_id = f"{_REQUEST_ID_PREFIX}{next(numbers):012x}"
            set_request_id(request_id)
            try:
                response = await handler(request)
            except Exception as error:
                return answer(error, request_id)
            response.headers[REQUEST_ID_HEADER] = request_id
            return response

        return bounded

    def routes(self, routes: Sequence[web.RouteDef]) -> list[web.RouteDef]:
        """`routes` with every handler wrapped in this boundary.

        Raises:
            TypeError: a route's handler is a class-based view (not supported).
        """
        bounded = []
        for route in routes:
            if isinstance(route.handler, type):
                raise TypeError(f"{route.path}: class-based views are not supported")
            bounded.append(
                web.RouteDef(route.method, route.path, self.wrap(route.handler), route.kwargs)
            )
        return bounded

    def answer(self, error: Exception, request_id: str | None = None) -> web.Response:
        """The answer to `error`, raised while handling a request of this plane, with
        `request_id` (a new one when None). Call it from an `except` clause.

        Raises:
            web.HTTPException: `error` itself (given a request id), when it is one of aiohttp's
                own answers other than 413.
        """
        if request_id is None:
            request_id = next_request_id()
        if isinstance(error, SplitserveError):
            known = error
        elif isinstance(error, web.HTTPRequestEntityTooLarge):
            known = PayloadTooLarge(
                f"Request body is over the limit of {self._max_payload_bytes} bytes."
            )
        elif isinstance(error, web.RequestPayloadError):
            message = "The request body could not be read: its framing or encoding is broken."
            known = (
                InvocationValidationError(message)
                if self.plane is Plane.RUNTIME
                else SerializationException(message)
            )
        elif isinstance(error, web.HTTPException):
            error.headers[REQUEST_ID_HEADER] = request_id
            raise error
        else:
            log.error("request %s failed", request_id, exc_info=error)
            known = InternalFailure(f"An internal error occurred (request id {request_id}).")
        if self.plane is Plane.RUNTIME and not _taken_by_a_variant(known):
            GATEWAY_ERRORS.labels(wire_error(known).code).inc()
        response = self._format(known)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response


def _taken_by_a_variant(error: SplitserveError) -> bool:
    """Whether a variant's recorder counted the request `error` ended: a ModelError, or an error
    the runtime service raised `from` the UpstreamError that ended a forward. Everything else was
    refused before a variant took the request."""
    return isinstance(error, ModelError) or isinstance(error.__cause__, UpstreamError)


def plane_of(request: web.BaseRequest) -> Plane:
    """The plane a request came in on, by its path."""
    return Plane.RUNTIME if request.path.startswith(_RUNTIME_PREFIX) else Plane.CONTROL


def answer_error(request: web.BaseRequest, error: Exception) -> web.Response:
    """The answer to `error` for a request no route's boundary holds (the connection edge's own
    refusals), in the wire form of the plane its path belongs to, with a request id.

    Raises:
        web.HTTPException: as `ErrorBoundary.answer`.
    """
    max_payload = getattr(request, "client_max_size", MAX_PAYLOAD_BYTES)
    return ErrorBoundary(plane_of(request), max_payload).answer(error)


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
