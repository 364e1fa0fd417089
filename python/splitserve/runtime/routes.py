"""The data plane's HTTP routes (sagemaker-runtime, REST-JSON): parse, call the service, answer."""

from __future__ import annotations

from aiohttp import web

from splitserve import keys
from splitserve.runtime.service import Invocation

#: Our own header for sticky assignment: requests with the same key go to the same variant while
#: the weights stay the same (see README, "Sticky assignment").
STICKY_KEY_HEADER = "X-Splitserve-Sticky-Key"


async def invoke_endpoint(request: web.Request) -> web.Response:
    """POST /endpoints/{name}/invocations: InvokeEndpoint."""
    headers = request.headers
    body = await request.read()
    result = await request.app[keys.INVOCATIONS].invoke(
        Invocation(
            endpoint_name=request.match_info["name"],
            body=body,
            content_type=headers.get("Content-Type"),
            accept=headers.get("Accept"),
            custom_attributes=headers.get("X-Amzn-SageMaker-Custom-Attributes"),
            target_variant=headers.get("X-Amzn-SageMaker-Target-Variant"),
            sticky_key=headers.get(STICKY_KEY_HEADER),
            inference_id=headers.get("X-Amzn-SageMaker-Inference-Id"),
            target_model=headers.get("X-Amzn-SageMaker-Target-Model"),
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


ROUTES = [web.post("/endpoints/{name}/invocations", invoke_endpoint)]
