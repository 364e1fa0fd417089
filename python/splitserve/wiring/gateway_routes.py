"""The gateway's own GET routes, beside the planes': /metrics (this host's totals), this
replica's own metrics, `splitserve stats`' per-minute report, an endpoint's weight history and
/ping. `app.create_app` mounts them; they read what its cleanup contexts put under `keys`.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from splitserve.errors import SplitserveError, ValidationException
from splitserve.metrics.host import host_exposition, own_exposition
from splitserve.wiring import keys

__all__ = ["metrics", "own_metrics", "ping", "stats", "weights"]

log = logging.getLogger(__name__)


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: every splitserve metric in Prometheus's text format, as this host's totals:
    this process's merged with the other replicas' on the host (`metrics.host`)."""
    replica = request.app[keys.REPLICA]
    try:
        peers = await replica.host_peers()
    except SplitserveError as error:
        # The state database is out of reach: this scrape asks no peer, and the spool still
        # adds their last counts, so the host's counters do not go down meanwhile.
        log.warning("/metrics without the other replicas' live figures: %s", error.message)
        peers = []
    body = await host_exposition(
        replica.replica_id,
        replica.is_controller(),
        peers,
        request.app[keys.SETTINGS].stats,
        request.app.get(keys.METRICS_SPOOL),
    )
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def own_metrics(request: web.Request) -> web.Response:
    """GET /splitserve/metrics/own: this process's metrics alone, with who made them, when, and
    whether it is the controller (`metrics.host`): what another replica's /metrics merges."""
    replica = request.app[keys.REPLICA]
    body, headers = own_exposition(replica.replica_id, replica.is_controller())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, **headers})


async def stats(request: web.Request) -> web.Response:
    """GET /splitserve/stats/{endpoint}?since=SECONDS&per=SECONDS: per-period counts, errors and
    p50/p99 model latency of each variant (`splitserve stats`; see `MinuteStore.report`), summed
    over every gateway replica: this one's rings plus the minutes the others stored (they write
    them every CloudWatch flush interval, so theirs lag by up to that much)."""
    defaults = request.app[keys.SETTINGS].stats
    since = _seconds_parameter(request, "since", defaults.default_since_seconds)
    per = _seconds_parameter(request, "per", defaults.default_period_seconds)
    minutes = request.app[keys.MINUTES]
    endpoint_name = request.match_info["endpoint"]
    first, last = minutes.window(since, per)
    cloudwatch = request.app.get(keys.CLOUDWATCH)  # absent: an app without the stored figures
    others = (
        None
        if cloudwatch is None
        else await cloudwatch.figures.other_minutes(endpoint_name, first, last)
    )
    report = minutes.report(endpoint_name, since, per, others)
    return web.json_response(report.to_json())


async def weights(request: web.Request) -> web.Response:
    """GET /splitserve/endpoints/{endpoint}/weights: the endpoint's weight changes, oldest first
    (`splitserve weights`, `splitserve evaluate --url`; see `ControlService.weight_history`)."""
    control = request.app[keys.CONTROLLER].started()
    history = await control.weight_history(request.match_info["endpoint"])
    return web.json_response(history)


def _seconds_parameter(request: web.Request, name: str, default: int) -> int:
    value = request.query.get(name)
    if value is None:
        return default
    if not value.isdigit() or len(value) > 12:
        raise ValidationException(f"{name} must be a whole number of seconds.")
    return int(value)


async def ping(request: web.Request) -> web.Response:
    """GET /ping: the gateway is up and serving."""
    return web.Response(text="ok")
