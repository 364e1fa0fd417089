"""`create_app(settings)`: the gateway as an aiohttp application.

One server serves both planes on one port: the SageMaker control plane (POST / with X-Amz-Target),
the runtime's InvokeEndpoint (POST /endpoints/{name}/invocations), GET /metrics, the per-minute
table of `splitserve stats` (GET /splitserve/stats/{endpoint}), each endpoint's weight history
(GET /splitserve/endpoints/{endpoint}/weights), GET /ping, and CloudWatch's API
(its Smithy RPC v2 CBOR path, and its JSON 1.0 and query protocols on the POST / it shares with
the control plane; splitserve.cloudwatch), and feedback (POST /splitserve/feedback/{endpoint},
signed like the control plane under `--auth`) with the live experiment view
(GET /splitserve/experiments/{endpoint}; splitserve.online). With an access-key file
(`serve --auth`), the control plane's handler, CloudWatch's and feedback's, and with
`--auth-data-plane` InvokeEndpoint's, check the request's SigV4 signature first
(splitserve.wiring.auth); the GET routes stay open.
Nothing happens at import time; long-lived objects are built in cleanup contexts, in this order:
the data-capture writer, the state store, the worker supervisor with its deployer, then the control
service, which brings back the endpoints the store remembers, then CloudWatch's API (its tables in
the state database, its per-minute flush and alarm evaluation). They are torn down in the reverse
order, so the capture writer closes last: after the server has stopped taking requests and every
endpoint is stopped, it writes out whatever was accepted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace

from aiohttp import web

from splitserve.capture.writer import CaptureWriter
from splitserve.cloudwatch import routes as cloudwatch_routes
from splitserve.cloudwatch.gateway import CloudWatchGateway
from splitserve.cluster.lease import ControllerLease, FileLease, RowLease
from splitserve.cluster.state import ClusterState
from splitserve.cluster.view import SoleReplica, new_replica_id
from splitserve.config import CONTROLLER_LOCK_FILE_NAME, METRICS_SPOOL_DIR_NAME, Settings
from splitserve.control import routes as control_routes
from splitserve.control.service import ControlService
from splitserve.control.store import Store
from splitserve.database import Database, open_database, parse_database_url
from splitserve.errors import SplitserveError
from splitserve.metrics.host import OWN_PATH, record_own
from splitserve.metrics.minutes import MinuteStore
from splitserve.metrics.procstat import CpuSampler
from splitserve.metrics.prometheus import FAMILY_MERGE, INSTANCES, show_created_series
from splitserve.metrics.spool import MetricsSpool, prune_runs, run_directory
from splitserve.online import routes as online_routes
from splitserve.online.index import InferenceIndex
from splitserve.runtime import routes as runtime_routes
from splitserve.runtime.registry import EndpointRegistry
from splitserve.runtime.service import InvocationService
from splitserve.wiring import keys
from splitserve.wiring.auth import CLOUDWATCH_SIGNING_SERVICE, SigV4Verifier
from splitserve.wiring.boundary import ErrorBoundary, Plane, unrouted
from splitserve.wiring.fleet import FleetDeployer
from splitserve.wiring.follower import RoutingFollower
from splitserve.wiring.forwarder import ControllerForwarder
from splitserve.wiring.gateway_routes import metrics, own_metrics, ping, stats, weights
from splitserve.wiring.live import LiveParts
from splitserve.wiring.online import forget_feedback, online_context
from splitserve.wiring.replicas import ControllerSlot, ReplicaNode
from splitserve.workers.catalog import InstanceCatalog
from splitserve.workers.images import ImageRegistry
from splitserve.workers.placement import Placement
from splitserve.workers.supervisor import Supervisor

__all__ = [
    "create_app",
    "metrics",
    "own_metrics",
    "ping",
    "signed_routes",
    "stats",
    "weights",
]

log = logging.getLogger(__name__)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(settings: Settings) -> web.Application:
    """Build the gateway application for `settings`; nothing starts until the app runs.

    No middleware, so a request pays for no middleware chain: every handler is wrapped in its
    plane's error boundary (`wiring.boundary`, one per plane), which answers its errors and gives
    its answers a request id, and the last route, `unrouted`, answers what no route takes.

    The invocation service and its registry are built here (they start nothing); the control
    service is built when the app starts (it opens the store), so the control route reaches it
    through the app.
    """
    app = web.Application(client_max_size=settings.max_payload_bytes)
    app[keys.SETTINGS] = settings
    app[keys.CONTROLLER] = ControllerSlot()
    app[keys.REPLICA] = (
        ReplicaNode(settings.replicas, new_replica_id()) if settings.shares_state else SoleReplica()
    )
    show_created_series(settings.metrics_created)
    registry = EndpointRegistry()
    index = InferenceIndex(settings.feedback) if settings.feedback.index_enabled else None
    if index is not None:
        app[keys.FEEDBACK_INDEX] = index
    invocations = InvocationService(settings, registry, index)
    app[keys.ENDPOINTS] = registry
    app[keys.INVOCATIONS] = invocations
    app.cleanup_ctx.append(_metrics_spool)  # first, so torn down last
    app.cleanup_ctx.append(_capture_writer)
    app.cleanup_ctx.append(_state_database)
    app.cleanup_ctx.append(_gateway)
    app.cleanup_ctx.append(_cloudwatch)
    app.cleanup_ctx.append(online_context)  # feedback: its tables are in the state database
    verifier = None
    if settings.auth.keys_file is not None:
        verifier = SigV4Verifier.from_settings(settings.auth)
        log.info(
            "SigV4 signatures required on the control plane%s; access keys: %s",
            " and the data plane" if settings.auth.data_plane else "",
            ", ".join(verifier.access_key_ids),
        )
    control = ErrorBoundary(Plane.CONTROL, settings.max_payload_bytes)
    runtime = ErrorBoundary(Plane.RUNTIME, settings.max_payload_bytes)
    cloudwatch = cloudwatch_routes.handler(
        _StartedCloudWatch(app), _cloudwatch_verify(verifier), settings.max_payload_bytes
    )
    at_controller = functools.partial(_at_controller, app, control)
    app.router.add_routes(
        at_controller(
            _shared_root(
                control.routes(
                    signed_routes(control_routes.routes(_StartedControl(app)), verifier)
                ),
                cloudwatch,
            )
        )
    )
    app.router.add_routes(
        at_controller(
            cloudwatch_routes.routes(
                _StartedCloudWatch(app), _cloudwatch_verify(verifier), settings.max_payload_bytes
            )
        )
    )
    runtime_verifier = verifier if settings.auth.data_plane else None
    app.router.add_routes(
        runtime.routes(
            signed_routes(runtime_routes.routes(invocations, settings), runtime_verifier)
        )
    )
    app.router.add_routes(
        control.routes(
            [
                web.get("/metrics", metrics),
                web.get(OWN_PATH, own_metrics),
                web.get("/splitserve/stats/{endpoint}", stats),
                web.get("/ping", ping),
            ]
        )
    )
    app.router.add_routes(
        at_controller(
            control.routes([web.get("/splitserve/endpoints/{endpoint}/weights", weights)])
        )
    )
    # Feedback on any replica: the join is one transaction of the shared state database.
    feedback_routes = online_routes.routes(lambda: app.get(keys.FEEDBACK), settings.feedback)
    app.router.add_routes(
        control.routes(
            [
                *signed_routes([r for r in feedback_routes if r.method == "POST"], verifier),
                *(r for r in feedback_routes if r.method != "POST"),
            ]
        )
    )
    app.router.add_route("*", "/{path:.*}", unrouted)  # last: it takes whatever is left
    return app


async def _capture_writer(app: web.Application) -> AsyncIterator[None]:
    """Start the data-capture writer thread; on shutdown write what is queued and close files."""
    writer = CaptureWriter(app[keys.SETTINGS].capture, replica_id=app[keys.REPLICA].replica_id)
    app[keys.CAPTURE] = writer
    writer.start()
    try:
        yield
    finally:
        await asyncio.to_thread(writer.close)


async def _state_database(app: web.Application) -> AsyncIterator[None]:
    """Over PostgreSQL, open the pool this process's parts share (`keys.SHARED_DATABASE`)."""
    settings = app[keys.SETTINGS]
    if parse_database_url(settings.state_url).kind != "postgresql":
        yield
        return
    database = await asyncio.to_thread(open_database, settings.state_url, settings.database)
    app[keys.SHARED_DATABASE] = database
    try:
        yield
    finally:
        database.close()


def _state_of(app: web.Application) -> Database | str:
    """What a part opens its tables in: the shared pool, else the state URL (SQLite)."""
    shared = app.get(keys.SHARED_DATABASE)
    return app[keys.SETTINGS].state_url if shared is None else shared


async def _gateway(app: web.Application) -> AsyncIterator[None]:
    """Start controlling the endpoints (one process), or join the replicas, which start
    controlling in this process once it holds the controller lease; undo it in reverse."""
    settings = app[keys.SETTINGS]
    minutes = MinuteStore(settings.stats)
    app[keys.MINUTES] = minutes
    slot = app[keys.CONTROLLER]
    node = app[keys.REPLICA]
    stops: list[Callable[[], Awaitable[None]]] = []
    if not isinstance(node, ReplicaNode):
        stops.append(await _controller(app, None, takeover=False))
        try:
            yield
        finally:
            await stops[0]()
        return
    # Heartbeats and routing documents are rewritten every second: no fsync per commit for them
    # (SQLite; `DatabaseSettings.sqlite_synchronous`), so they never queue behind the disk.
    # A pool (or connection) of their own, not the shared one: a heartbeat or lease renewal
    # queued behind the other parts' work after a database outage would make a live controller
    # look dead to the others.
    cluster_database = replace(settings.database, sqlite_synchronous="NORMAL")
    database = await asyncio.to_thread(open_database, settings.state_url, cluster_database)
    cluster = await asyncio.to_thread(ClusterState.open, database)
    lease: ControllerLease = (
        FileLease(settings.state_dir / CONTROLLER_LOCK_FILE_NAME)
        if database.kind == "sqlite"
        else RowLease(cluster, node.replica_id, settings.replicas.replica_timeout_seconds)
    )
    forwarder = ControllerForwarder(node, settings.replicas)
    app[keys.FORWARDER] = forwarder

    async def become_controller(takeover: bool) -> None:
        stops.append(await _controller(app, node, takeover=takeover))
        fleet, control = slot.fleet, slot.control
        assert fleet is not None
        assert control is not None
        if not fleet.adopts_instances:
            await node.publish_all(fleet.endpoint_names())
            return

        # Instances that outlived the old controller are adopted: every replica keeps routing
        # to them as it does now, each endpoint's activation publishes its own document, and
        # the whole set (removing what the store no longer has) only once all are recovered.
        async def publish_when_recovered() -> None:
            await control.settle()
            await node.publish_all(fleet.endpoint_names())

        publishing = asyncio.create_task(publish_when_recovered())

        async def stop_publishing() -> None:
            publishing.cancel()
            await asyncio.gather(publishing, return_exceptions=True)

        stops.insert(0, stop_publishing)

    await node.start(
        cluster,
        lease,
        RoutingFollower(
            settings, app[keys.ENDPOINTS], LiveParts(settings, minutes, app[keys.CAPTURE])
        ),
        app[keys.INTERNAL_URL],
        become_controller,
        instances_outlive_controller=settings.placement.backend == "ray",
    )
    try:
        yield
    finally:
        await node.close()
        for stop in stops:
            await stop()
        await forwarder.close()
        database.close()


async def _controller(
    app: web.Application, node: ReplicaNode | None, *, takeover: bool
) -> Callable[[], Awaitable[None]]:
    """Open the store, start supervisor and deployer, recover endpoints (publishing their
    routing through `node` among replicas; `takeover` as `ControlService.start` takes it);
    return what undoes it in reverse."""
    settings = app[keys.SETTINGS]
    # Opening reads and checks the whole file (and may create its directory): off the loop.
    store = await asyncio.to_thread(Store.open, _state_of(app), settings.database)
    registry = app[keys.ENDPOINTS]
    deployer = FleetDeployer(settings, registry, app[keys.CAPTURE], app[keys.MINUTES])
    deployer.when_removed(functools.partial(forget_feedback, app))
    if node is not None:
        deployer.publish_to(node)
        node.publish_from(deployer.routing_document)
    catalog = InstanceCatalog()
    images = (
        ImageRegistry()
        if settings.images_file is None
        else ImageRegistry.load(settings.images_file)
    )
    supervisor = await _placement(settings, images, catalog, deployer)
    deployer.attach(supervisor)
    control = ControlService(
        settings,
        store,
        deployer,
        instance_vcpus={name: catalog.get(name).vcpus for name in catalog.names()},
        alarms=_AlarmStates(app),
    )
    slot = app[keys.CONTROLLER]
    slot.control = control
    slot.fleet = deployer
    INSTANCES.attach(deployer, CpuSampler(settings.stats.cpu_sample_min_seconds))

    async def stop() -> None:
        INSTANCES.detach(deployer)
        slot.control = slot.fleet = None
        await control.close()
        await deployer.close()
        await supervisor.close()
        store.close()

    try:
        await control.start(takeover=takeover)
    except BaseException:
        await stop()
        raise
    return stop


async def _placement(
    settings: Settings, images: ImageRegistry, catalog: InstanceCatalog, deployer: FleetDeployer
) -> Placement:
    """Where the controller's instances run: local processes, or actors on the Ray cluster
    (imported only then, so the local path never loads Ray)."""
    if settings.placement.backend == "ray":
        from splitserve.workers import ray_placement  # noqa: PLC0415 (optional extra)

        await ray_placement.join(settings.placement)
        return ray_placement.RayPlacement(
            settings.placement,
            settings.workers,
            images,
            catalog,
            deployer,
            model_store=settings.model_store,
        )
    return Supervisor(
        settings.workers,
        images,
        catalog,
        deployer,
        artifact_roots=(settings.model_store, *settings.allowed_artifact_paths),
    )


async def _cloudwatch(app: web.Application) -> AsyncIterator[None]:
    """Start CloudWatch's API over the deployer's figures (after `_gateway`); stop it first."""
    replica = app[keys.REPLICA]
    cloudwatch = await CloudWatchGateway.open(
        app[keys.SETTINGS],
        app[keys.MINUTES],
        app[keys.CONTROLLER],
        state=_state_of(app),
        source=replica.replica_id,
        is_controller=replica.is_controller,
    )
    app[keys.CLOUDWATCH] = cloudwatch
    try:
        yield
    finally:
        await cloudwatch.close()


def _shared_root(routes: Sequence[web.RouteDef], cloudwatch: _Handler) -> list[web.RouteDef]:
    """`routes` with `POST /` also serving CloudWatch: the SageMaker control plane and
    CloudWatch's JSON 1.0 and query protocols share it, told apart by X-Amz-Target's prefix and
    the form content type (`cloudwatch.routes.is_cloudwatch_request`), here and nowhere else."""
    shared = []
    for route in routes:
        if route.method == "POST" and route.path == "/" and not isinstance(route.handler, type):
            control = route.handler

            @functools.wraps(control)
            async def post_root(
                request: web.Request, control: _Handler = control
            ) -> web.StreamResponse:
                if cloudwatch_routes.is_cloudwatch_request(request):
                    return await cloudwatch(request)
                return await control(request)

            shared.append(web.RouteDef(route.method, route.path, post_root, route.kwargs))
        else:
            shared.append(route)
    return shared


def _at_controller(
    app: web.Application, boundary: ErrorBoundary, routes: Sequence[web.RouteDef]
) -> list[web.RouteDef]:
    """`routes` served by the controller: a replica that is not the controller passes their
    requests to it as they came (`ControllerForwarder`), and answers a 503 from `boundary` when
    no controller answers. A single gateway process is its own controller: its routes come back
    as they are."""
    node = app[keys.REPLICA]
    if not isinstance(node, ReplicaNode):
        return list(routes)
    wrapped = []
    for route in routes:
        handler = route.handler
        if isinstance(handler, type):
            raise TypeError(f"{route.path}: class-based views cannot be passed on")

        @functools.wraps(handler)
        async def passed_on(
            request: web.Request, handler: _Handler = handler
        ) -> web.StreamResponse:
            if node.is_controller():
                return await handler(request)
            try:
                return await app[keys.FORWARDER].forward(request)
            except SplitserveError as error:
                return boundary.answer(error)

        wrapped.append(web.RouteDef(route.method, route.path, passed_on, route.kwargs))
    return wrapped


def _cloudwatch_verify(verifier: SigV4Verifier | None) -> cloudwatch_routes.Verify | None:
    """CloudWatch's signature check: the control plane's keys, CloudWatch's signing name."""
    if verifier is None:
        return None

    def verify(request: web.Request, body: bytes) -> None:
        path, _, query = request.raw_path.partition("?")
        try:
            verifier.verify(
                request.method, path, query, request.headers, body,
                service=CLOUDWATCH_SIGNING_SERVICE,
            )  # fmt: skip
        except SplitserveError as error:
            log.info("refused %s %s: %s", request.method, path, error.message)
            raise

    return verify


class _AlarmStates:
    """The control plane's `AlarmStates` over the running app's CloudWatch alarms (the control
    plane does not import the CloudWatch part): what a stepped UpdateEndpoint's bakes watch."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    async def in_alarm(self, alarm_names: Sequence[str]) -> list[str]:
        """`AlarmBook.in_alarm` of the running app; none before CloudWatch has started."""
        cloudwatch = self._app.get(keys.CLOUDWATCH)
        if cloudwatch is None:
            return []
        return await cloudwatch.alarms.in_alarm(alarm_names)


class _StartedCloudWatch:
    """The CloudWatch service of a running app (built when the app starts, after the routes)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    async def dispatch(self, operation: str, params: dict[str, object]) -> dict[str, object]:
        """`CloudWatchService.dispatch` of the running app."""
        return await self._app[keys.CLOUDWATCH].service.dispatch(operation, params)


def signed_routes(
    routes: Sequence[web.RouteDef], verifier: SigV4Verifier | None
) -> list[web.RouteDef]:
    """`routes` with every handler checking the request's SigV4 signature first.

    The check sits in the handlers of the planes that need it, not in a middleware: with
    `verifier` None the routes come back as they are and a request pays nothing for it.
    """
    if verifier is None:
        return list(routes)
    return [
        web.RouteDef(route.method, route.path, _signature_checked(route, verifier), route.kwargs)
        for route in routes
    ]


class _StartedControl:
    """The control service of a running app, for the control route: the service is built when
    the app starts (`_gateway`), after the routes."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    async def dispatch(self, operation: str, body: dict[str, object]) -> dict[str, object]:
        """`ControlService.dispatch` of the running app."""
        return await self._app[keys.CONTROLLER].started().dispatch(operation, body)


def _signature_checked(route: web.RouteDef, verifier: SigV4Verifier) -> _Handler:
    handler = route.handler
    if isinstance(handler, type):
        raise TypeError(f"{route.path}: class-based views cannot be signature-checked")

    async def checked(request: web.Request) -> web.StreamResponse:
        path, _, query = request.raw_path.partition("?")
        try:
            verifier.verify(request.method, path, query, request.headers, await request.read())
        except SplitserveError as error:
            # What was wrong, never a secret: messages name ids, dates and scopes only.
            log.info("refused %s %s: %s", request.method, path, error.message)
            raise
        return await handler(request)

    return checked


async def _metrics_spool(app: web.Application) -> AsyncIterator[None]:
    """Among replicas on one host: the host's metrics spool (`metrics.spool`). Torn down last,
    after the server stopped taking requests: this replica writes its final counts to it, so
    they stay in the host's totals after it is gone."""
    settings = app[keys.SETTINGS]
    supervisor_pid = settings.replicas.supervisor_pid
    if supervisor_pid is None:
        yield
        return
    root = settings.state_dir / METRICS_SPOOL_DIR_NAME
    directory = run_directory(root, supervisor_pid)
    await asyncio.to_thread(prune_runs, root, directory)
    spool = MetricsSpool(directory, FAMILY_MERGE)
    app[keys.METRICS_SPOOL] = spool
    try:
        yield
    finally:
        try:
            await record_own(app[keys.REPLICA].replica_id, spool)
        except OSError as error:
            log.warning("this replica's last counts were not written to the host's: %s", error)
