"""The control plane's HTTP route (SageMaker JSON 1.1): every operation is POST / + X-Amz-Target."""

from __future__ import annotations

import json
from typing import Protocol

from aiohttp import web

from splitserve.errors import SerializationException, UnknownOperationException

_TARGET_PREFIX = "SageMaker."
#: The content type of the control plane's answers, errors included.
CONTENT_TYPE = "application/x-amz-json-1.1"


class ControlAPI(Protocol):
    """What the route calls: the control service's operation dispatch."""

    async def dispatch(self, operation: str, body: dict[str, object]) -> dict[str, object]:
        """Serve `operation` (the X-Amz-Target after `SageMaker.`) with the request's JSON body."""
        ...


def routes(control: ControlAPI) -> list[web.RouteDef]:
    """The control plane's route table, serving every operation through `control`.

    Errors are raised for the plane's error boundary (which the app wraps around these routes).
    """

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
        result = await control.dispatch(target.removeprefix(_TARGET_PREFIX), body)
        return web.Response(body=json.dumps(result).encode(), content_type=CONTENT_TYPE)

    return [web.post("/", sagemaker_api)]
