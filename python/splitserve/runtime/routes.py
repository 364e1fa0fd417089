"""The data plane's HTTP routes (sagemaker-runtime, REST-JSON): parse, call the service, answer."""

from __future__ import annotations

import asyncio

from aiohttp import web

from splitserve.wiring import keys
from splitserve.errors import BodyReadTimeout
from splitserve.wiring.boundary import REQUEST_ID_HEADER, answer_error, next_request_id
from splitserve.runtime.service import Invocation

#: Our own header for sticky assignment: requests with the same key go to the same variant while
#: the weights stay the same (see README, "Sticky assignment").
STICKY_KEY_HEADER = "X-Splitserve-Sticky-Key"


async def invoke_endpoint(request: web.Request) -> web.Response:
    """POST /endpoints/{name}/invocations: InvokeEndpoint.

    It answers its own errors (`http_errors.answer_error`) and sets its own request id rather
    than being wrapped in `handle_errors` as the other routes are: this is the request path, and
    a wrapper is one more coroutine per request.
    """
    try:
        content = request.content
        if not content.is_eof():
            body = await _read_slow_body(request)
        elif content.at_eof():
            body = await request.read()  # empty, or read before (a signature check reads it)
        else:
            # The usual case: the whole body is in aiohttp's buffer. Taking it without read()'s
            # loop of coroutines saves six Python calls; the size limit is the service's check.
            body = content.read_nowait()
        result = await request.app[keys.INVOCATIONS].invoke(read_invocation(request, body))
    except Exception as error:
        return answer_error(request, error)
    headers = {
        REQUEST_ID_HEADER: next_request_id(),
        "x-Amzn-Invoked-Production-Variant": result.variant,
    }
    if result.content_type is not None:
        headers["Content-Type"] = result.content_type.decode("latin-1")
    if result.custom_attributes is not None:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = result.custom_attributes.decode("latin-1")
    return web.Response(body=result.body, headers=headers)


def read_invocation(request: web.Request, body: bytes) -> Invocation:
    """The InvokeEndpoint request `request` with body `body`, as the service takes it: the endpoint
    name from the path and the headers that matter (each None when absent)."""
    get = request.headers.get
    # In Invocation's field order. tuple.__new__ builds the NamedTuple in C; Invocation(...) would
    # go through the Python __new__ namedtuple generates: one Python call more per request.
    return tuple.__new__(
        Invocation,
        (
            request.match_info["name"],
            body,
            get("Content-Type"),
            get("Accept"),
            get("X-Amzn-SageMaker-Custom-Attributes"),
            get("X-Amzn-SageMaker-Target-Variant"),
            get(STICKY_KEY_HEADER),
            get("X-Amzn-SageMaker-Inference-Id"),
            get("X-Amzn-SageMaker-Target-Model"),
        ),
    )


async def _read_slow_body(request: web.Request) -> bytes:
    """The body of a request that had not fully arrived when its handler started, read within
    the body read timeout. (A body that has arrived, the usual case, is read without a timer.)

    Raises:
        BodyReadTimeout: the rest of the body did not arrive in time (a trickling client).
    """
    timeout = request.app[keys.SETTINGS].body_read_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise BodyReadTimeout(
            f"The request body did not arrive within {timeout:g} seconds."
        ) from None


ROUTES = [web.post("/endpoints/{name}/invocations", invoke_endpoint)]
