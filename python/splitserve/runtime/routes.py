"""The data plane's HTTP routes (sagemaker-runtime, REST-JSON): parse, call the service, answer."""

from __future__ import annotations

import asyncio

from aiohttp import web

from splitserve import keys
from splitserve.errors import BodyReadTimeout
from splitserve.runtime.service import Invocation

#: Our own header for sticky assignment: requests with the same key go to the same variant while
#: the weights stay the same (see README, "Sticky assignment").
STICKY_KEY_HEADER = "X-Splitserve-Sticky-Key"


async def invoke_endpoint(request: web.Request) -> web.Response:
    """POST /endpoints/{name}/invocations: InvokeEndpoint."""
    headers = request.headers
    body = await request.read() if request.content.is_eof() else await _read_slow_body(request)
    get = headers.get
    result = await request.app[keys.INVOCATIONS].invoke(
        # Positional, in Invocation's field order: the cheapest way to build it, once a request.
        Invocation(
            request.match_info["name"],
            body,
            get("Content-Type"),
            get("Accept"),
            get("X-Amzn-SageMaker-Custom-Attributes"),
            get("X-Amzn-SageMaker-Target-Variant"),
            get(STICKY_KEY_HEADER),
            get("X-Amzn-SageMaker-Inference-Id"),
            get("X-Amzn-SageMaker-Target-Model"),
        )
    )
    response = web.Response(body=result.body)
    out = response.headers
    out["x-Amzn-Invoked-Production-Variant"] = result.variant
    if result.content_type is not None:
        out["Content-Type"] = result.content_type.decode("latin-1")
    if result.custom_attributes is not None:
        out["X-Amzn-SageMaker-Custom-Attributes"] = result.custom_attributes.decode("latin-1")
    return response


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
