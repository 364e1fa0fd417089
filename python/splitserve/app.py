"""`create_app(settings)`: the gateway as an aiohttp application.

One server serves both planes on one port: the SageMaker control plane (POST / with X-Amz-Target),
the runtime's InvokeEndpoint (POST /endpoints/{name}/invocations), GET /metrics and GET /ping.
Nothing happens at import time; long-lived objects are built in cleanup contexts, in this order:
the state store, the worker supervisor with its deployer, then the control service, which brings
back the endpoints the store remembers. They are torn down in the reverse order.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from splitserve import keys
from splitserve._router import RouterError
from splitserve.config import MAX_PAYLOAD_BYTES, Settings
from splitserve.control import routes as control_routes
from splitserve.control.service import ControlService
from splitserve.control.store import Store
from splitserve.errors import (
    InternalFailure,
    ModelError,
    PayloadTooLarge,
    SplitserveError,
    wire_error,
)
from splitserve.gateway.deployer import FleetDeployer
from splitserve.metrics import GATEWAY_ERRORS, REGISTRY
from splitserve.runtime import routes as runtime_routes
from splitserve.runtime.registry import EndpointRegistry
from splitserve.runtime.service import InvocationService
from splitserve.workers.catalog import InstanceCatalog
from splitserve.workers.images import ImageRegistry
from splitserve.workers.supervisor import Supervisor

log = logging.getLogger(__name__)

_RUNTIME_PREFIX = "/endpoints/"
_REQUEST_ID = "x-amzn-RequestId"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(settings: Settings) -> web.Application:
    """Build the gateway application for `settings`; nothing starts until the app runs."""
    app = web.Application(
        middlewares=[error_middleware], client_max_size=settings.max_payload_bytes
    )
    app[keys.SETTINGS] = settings
    app.cleanup_ctx.append(_gateway)
    app.router.add_routes(control_routes.ROUTES)
    app.router.add_routes(runtime_routes.ROUTES)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/ping", ping)
    return app


async def _gateway(app: web.Application) -> AsyncIterator[None]:
    """Open the store, start supervisor and deployer, recover endpoints; undo it in reverse."""
    settings = app[keys.SETTINGS]
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(settings.state_dir / "state.sqlite3")
    registry = EndpointRegistry()
    deployer = FleetDeployer(settings, registry)
    catalog = InstanceCatalog()
    images = (
        ImageRegistry()
        if settings.images_file is None
        else ImageRegistry.load(settings.images_file)
    )
    supervisor = Supervisor(settings.workers, images, catalog, deployer)
    deployer.attach(supervisor)
    control = ControlService(settings, store, deployer, instance_types=catalog.names())
    app[keys.CONTROL] = control
    app[keys.INVOCATIONS] = InvocationService(settings, registry)
    try:
        await control.start()
        yield
    finally:
        await control.close()
        await deployer.close()
        await supervisor.close()
        store.close()


@web.middleware
async def error_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Put every error on the wire as the SageMaker clients expect, with a request id."""
    request_id = str(uuid.uuid4())
    try:
        response = await handler(request)
    except (SplitserveError, RouterError) as error:
        response = _error_response(request, error)
    except web.HTTPRequestEntityTooLarge:
        settings = request.app.get(keys.SETTINGS)
        limit = MAX_PAYLOAD_BYTES if settings is None else settings.max_payload_bytes
        response = _error_response(
            request, PayloadTooLarge(f"Request body is over the limit of {limit} bytes.")
        )
    except web.HTTPException as error:  # routing's 404 and 405: aiohttp's own answer
        response = error
    except Exception:
        log.exception("request %s failed", request_id)
        response = _error_response(
            request, InternalFailure(f"An internal error occurred (request id {request_id}).")
        )
    response.headers[_REQUEST_ID] = request_id
    return response


def _error_response(request: web.Request, error: Exception) -> web.Response:
    """The wire form of `error` for the plane `request` came in on."""
    wire = wire_error(error)
    message = error.message if isinstance(error, SplitserveError) else str(error)
    if not request.path.startswith(_RUNTIME_PREFIX):
        return web.json_response(
            {"__type": wire.code, "Message": message},
            status=wire.status,
            content_type=control_routes.CONTENT_TYPE,
        )
    body: dict[str, object] = {"ErrorCode": wire.code, "Message": message}
    if isinstance(error, ModelError):
        body["OriginalStatusCode"] = error.detail.original_status_code
        body["OriginalMessage"] = error.detail.original_message
        body["LogStreamArn"] = error.detail.log_stream_arn
    else:
        # Refused before a variant was chosen: not any variant's invocation.
        GATEWAY_ERRORS.labels(wire.code).inc()
    response = web.json_response(body, status=wire.status)
    response.headers["x-amzn-ErrorType"] = wire.code
    return response


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: every splitserve metric in Prometheus's text format."""
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def ping(request: web.Request) -> web.Response:
    """GET /ping: the gateway is up and serving."""
    return web.Response(text="ok")
