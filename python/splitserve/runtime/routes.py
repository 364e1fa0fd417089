"""The data plane's HTTP routes (sagemaker-runtime, REST-JSON): parse, call the service, answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from splitserve.config import Settings
from splitserve.errors import BodyReadTimeout, InvocationValidationError
from splitserve.runtime.service import Invocation, InvocationService

#: Our own header for sticky assignment: requests with the same key go to the same variant while
#: the weights stay the same (see README, "Sticky assignment").
STICKY_KEY_HEADER = "X-Splitserve-Sticky-Key"
#: Our own answer header: the invocation's inference id (the request's InferenceId, else one the
#: gateway drew), which labels sent to POST /splitserve/feedback/<endpoint> name (README,
#: "Closing the loop"). boto3 ignores headers it does not know.
INFERENCE_ID_HEADER = "X-Splitserve-Inference-Id"
INVOKE_PATH = "/endpoints/{name}/invocations"
#: sagemaker-runtime's two other invocation operations, which splitserve does not serve: each gets
#: a ValidationError naming it rather than a bare 404 a client cannot explain (the error's shape:
#: docs/sagemaker-api.md, '1.2 Data plane', Errors).
UNSUPPORTED_INVOCATIONS = {
    "/endpoints/{name}/async-invocations": (
        "InvokeEndpointAsync is not supported: splitserve has no asynchronous inference. Call "
        "InvokeEndpoint (POST /endpoints/{name}/invocations) instead."
    ),
    "/endpoints/{name}/invocations-response-stream": (
        "InvokeEndpointWithResponseStream is not supported: splitserve does not stream responses. "
        "Call InvokeEndpoint (POST /endpoints/{name}/invocations) instead."
    ),
}


def routes(service: InvocationService, settings: Settings) -> list[web.RouteDef]:
    """The data plane's route table: InvokeEndpoint, served by `service`.

    Errors are raised for the plane's error boundary, which the app wraps around these routes and
    which gives every answer its request id.
    """
    body_read_timeout = settings.body_read_timeout_seconds

    async def invoke_endpoint(request: web.Request) -> web.Response:
        """POST /endpoints/{name}/invocations: InvokeEndpoint."""
        content = request.content
        try:
            if not content.is_eof():
                body = await _read_slow_body(request, body_read_timeout)
            elif content.at_eof():
                body = await request.read()  # empty, or read before (a signature check reads it)
            else:
                # The usual case: the whole body is in aiohttp's buffer. Taking it without read()'s
                # loop of coroutines saves six Python calls; the size limit is the service's check.
                body = content.read_nowait()
        except web.RequestPayloadError:
            raise _undecodable_body(request) from None
        result = await service.invoke(read_invocation(request, body))
        headers = {
            "x-Amzn-Invoked-Production-Variant": result.variant,
            INFERENCE_ID_HEADER: result.inference_id,
        }
        if result.content_type is not None:
            headers["Content-Type"] = result.content_type.decode("latin-1")
        if result.custom_attributes is not None:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = result.custom_attributes.decode(
                "latin-1"
            )
        return web.Response(body=result.body, headers=headers)

    return [
        web.post(INVOKE_PATH, invoke_endpoint),
        *(
            web.post(path, _refuse_unsupported(message))
            for path, message in UNSUPPORTED_INVOCATIONS.items()
        ),
    ]


def _refuse_unsupported(message: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler that refuses an operation splitserve does not serve with `message`."""

    async def refuse(request: web.Request) -> web.Response:
        """POST of an unsupported sagemaker-runtime operation: a ValidationError naming it."""
        raise InvocationValidationError(message.replace("{name}", request.match_info["name"]))

    return refuse


def read_invocation(request: web.Request, body: bytes) -> Invocation:
    """The InvokeEndpoint request `request` with body `body`, as the service takes it: the endpoint
    name from the path and the headers that matter (each None when absent)."""
    get = request.headers.get
    # Positional, in Invocation's field order (tests/runtime/test_routes.py checks both the order
    # and that each header lands in its field): nine keyword arguments cost ~550 ns more per
    # request than nine positional ones on CPython 3.11 (docs/benchmarks.md, 'Request-path cost').
    return Invocation(
        request.match_info["name"],  # endpoint_name
        body,
        get("Content-Type"),
        get("Accept"),
        get("X-Amzn-SageMaker-Custom-Attributes"),
        get("X-Amzn-SageMaker-Target-Variant"),
        get(STICKY_KEY_HEADER),
        get("X-Amzn-SageMaker-Inference-Id"),
        get("X-Amzn-SageMaker-Target-Model"),
    )


def _undecodable_body(request: web.Request) -> InvocationValidationError:
    """The refusal of a body aiohttp could not read: it decodes a Content-Encoding (gzip, deflate)
    while it parses, and a body that is not what the header says ends the read with an error."""
    encoding = request.headers.get("Content-Encoding")
    if encoding is None:
        return InvocationValidationError("The request body is malformed: its framing is broken.")
    shown = encoding[:64] if encoding.isascii() and encoding.isprintable() else "(not ASCII)"
    return InvocationValidationError(
        f"The request body is not encoded as its Content-Encoding header ({shown}) says."
    )


async def _read_slow_body(request: web.Request, seconds: float) -> bytes:
    """The body of a request that had not fully arrived when its handler started, read within
    `seconds`. (A body that has arrived, the usual case, is read without a timer.)

    Raises:
        BodyReadTimeout: the rest of the body did not arrive in time (a trickling client).
    """
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError:
        raise BodyReadTimeout(
            f"The request body did not arrive within {seconds:g} seconds."
        ) from None
