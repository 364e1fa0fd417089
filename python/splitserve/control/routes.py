"""The control plane's HTTP route (SageMaker JSON 1.1): every operation is POST / + X-Amz-Target."""

from __future__ import annotations

import json

from aiohttp import web

from splitserve.wiring import keys
from splitserve.errors import SerializationException, UnknownOperationException

_TARGET_PREFIX = "SageMaker."
CONTENT_TYPE = "application/x-amz-json-1.1"


async def sagemaker_api(request: web.Request) -> web.Response:
    """POST /: dispatch on X-Amz-Target to the control service."""
    target = request.headers.get("X-Amz-Target", "")
    if not target.startswith(_TARGET_PREFIX):
        raise UnknownOperationException(f"Operation {target or '(none)'} is not supported.")
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError) as error:
        raise SerializationException("The request body is not valid JSON.") from error
    if not isinstance(body, dict):
        raise SerializationException("The request body must be a JSON object.")
    result = await request.app[keys.CONTROL].dispatch(target.removeprefix(_TARGET_PREFIX), body)
    return web.Response(body=json.dumps(result).encode(), content_type=CONTENT_TYPE)


ROUTES = [web.post("/", sagemaker_api)]
