"""GET /metrics across a host's replicas, through aiohttp's test client: the peers are small
servers in the test giving canned own expositions; one that is slow, down, failing or not
speaking the text format is left out and counted, and the scrape still answers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from splitserve import app as gateway_app
from splitserve.config import Settings
from splitserve.errors import DatabaseUnavailable
from splitserve.metrics.host import CONTROLLER_HEADER, OWN_PATH, REPLICA_HEADER, SNAPSHOT_HEADER
from splitserve.metrics.prometheus import (
    FAMILY_MERGE,
    REGISTRY,
    VARIANT_WEIGHT,
    VariantMetrics,
    remove_variant_series,
)
from splitserve.metrics.spool import MetricsSpool
from splitserve.wiring import keys
from tests.support.http import free_port


class FakeReplica:
    """A replica whose host peers are the test's servers."""

    def __init__(self, peers: Sequence[str], controller: bool = False) -> None:
        self.peers = list(peers)
        self.controller = controller

    @property
    def replica_id(self) -> str:
        """A fixed id."""
        return "replica-own"

    def is_controller(self) -> bool:
        """As the test says."""
        return self.controller

    async def host_peers(self) -> list[str]:
        """The test's peers."""
        return self.peers


def peer_exposition(endpoint: str, invocations: int, weight: float) -> str:
    """A peer's own exposition: its invocations of endpoint/A, a latency and the weight."""
    labels = f'endpoint_name="{endpoint}",variant_name="A"'
    return (
        "# HELP splitserve_invocations_total Requests routed to the variant.\n"
        "# TYPE splitserve_invocations_total counter\n"
        f"splitserve_invocations_total{{{labels}}} {invocations}.0\n"
        "# HELP splitserve_model_latency_seconds Time.\n"
        "# TYPE splitserve_model_latency_seconds histogram\n"
        f'splitserve_model_latency_seconds_bucket{{{labels},le="+Inf"}} {invocations}.0\n'
        f"splitserve_model_latency_seconds_count{{{labels}}} {invocations}.0\n"
        f"splitserve_model_latency_seconds_sum{{{labels}}} 1.5\n"
        "# HELP splitserve_variant_weight The weight the router uses now.\n"
        "# TYPE splitserve_variant_weight gauge\n"
        f"splitserve_variant_weight{{{labels}}} {weight}\n"
    )


async def start_peer(handler: Callable[[web.Request], Awaitable[web.Response]]) -> TestServer:
    """A peer replica serving `handler` at the own-exposition path."""
    app = web.Application()
    app.router.add_get(OWN_PATH, handler)
    server = TestServer(app)
    await server.start_server()
    return server


def failures(reason: str) -> float:
    value = REGISTRY.get_sample_value("splitserve_metrics_peer_failures_total", {"reason": reason})
    return value or 0.0


@pytest.fixture
def endpoint() -> str:
    """A fresh endpoint name, so the process-wide registry holds no other series of it."""
    return f"h{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def own_series(endpoint: str) -> AsyncIterator[VariantMetrics]:
    """This process's series of endpoint/A: 2 invocations, weight 0.25."""
    metrics = VariantMetrics.resolve(endpoint, "A")
    metrics.invocations.inc(2)
    metrics.model_latency.observe(0.5)
    metrics.model_latency.observe(0.5)
    VARIANT_WEIGHT.labels(endpoint, "A").set(0.25)
    yield metrics
    remove_variant_series(endpoint, "A")


async def scrape(
    replica: FakeReplica, timeout_seconds: float = 5.0, spool: MetricsSpool | None = None
) -> dict[str, float]:
    """GET /metrics of an app over `replica` (and `spool`): its samples by name and labels."""
    app = web.Application()
    settings = Settings()
    app[keys.SETTINGS] = replace(
        settings, stats=replace(settings.stats, peer_metrics_timeout_seconds=timeout_seconds)
    )
    app[keys.REPLICA] = replica
    if spool is not None:
        app[keys.METRICS_SPOOL] = spool
    app.router.add_get("/metrics", gateway_app.metrics)
    app.router.add_get(OWN_PATH, gateway_app.own_metrics)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        text = await response.text()
        own = await client.get(OWN_PATH)
        assert own.headers[CONTROLLER_HEADER] == ("true" if replica.controller else "false")
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{key}}}"] = sample.value
    return found


def series(endpoint: str, name: str, **extra: str) -> str:
    labels = {"endpoint_name": endpoint, "variant_name": "A", **extra}
    return f"{name}{{{','.join(f'{k}={v}' for k, v in sorted(labels.items()))}}}"


async def test_the_host_scrape_sums_every_replicas_counts(
    endpoint: str, own_series: VariantMetrics
) -> None:
    async def controller(request: web.Request) -> web.Response:
        return web.Response(
            text=peer_exposition(endpoint, 3, 0.5), headers={CONTROLLER_HEADER: "true"}
        )

    async def follower(request: web.Request) -> web.Response:
        return web.Response(text=peer_exposition(endpoint, 5, 0.75))

    peers = [await start_peer(controller), await start_peer(follower)]
    try:
        found = await scrape(FakeReplica([str(peer.make_url("")) for peer in peers]))
    finally:
        for peer in peers:
            await peer.close()
    assert found[series(endpoint, "splitserve_invocations_total")] == 10.0
    assert found[series(endpoint, "splitserve_model_latency_seconds_count")] == 10.0
    assert found[series(endpoint, "splitserve_model_latency_seconds_sum")] == 4.0
    assert found[series(endpoint, "splitserve_model_latency_seconds_bucket", le="+Inf")] == 10.0
    # The weight is one replica's (they agree): the controller's.
    assert found[series(endpoint, "splitserve_variant_weight")] == 0.5


async def test_a_peer_that_fails_is_left_out_and_counted_never_the_scrape(
    endpoint: str, own_series: VariantMetrics
) -> None:
    release = asyncio.Event()

    async def good(request: web.Request) -> web.Response:
        return web.Response(text=peer_exposition(endpoint, 3, 0.25))

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text=peer_exposition(endpoint, 100, 0.25))

    async def garbled(request: web.Request) -> web.Response:
        return web.Response(text="this is not an exposition {{{\n")

    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    peers = [await start_peer(handler) for handler in (good, slow, garbled, failing)]
    down = f"http://127.0.0.1:{free_port()}"
    before = {reason: failures(reason) for reason in ("timeout", "unreachable", "malformed")}
    try:
        found = await scrape(
            FakeReplica([*(str(peer.make_url("")) for peer in peers), down]),
            timeout_seconds=0.5,
        )
    finally:
        release.set()
        for peer in peers:
            await peer.close()
    assert found[series(endpoint, "splitserve_invocations_total")] == 5.0  # own 2 + good 3
    assert failures("timeout") - before["timeout"] == 1
    assert failures("unreachable") - before["unreachable"] == 2  # the 500 and the closed port
    assert failures("malformed") - before["malformed"] == 1


async def test_without_peers_the_scrape_is_this_processs_own(
    endpoint: str, own_series: VariantMetrics
) -> None:
    found = await scrape(FakeReplica([], controller=True))
    assert found[series(endpoint, "splitserve_invocations_total")] == 2.0
    assert found[series(endpoint, "splitserve_variant_weight")] == 0.25


async def test_a_peer_that_stops_answering_keeps_its_counts_in_the_host_totals(
    endpoint: str, own_series: VariantMetrics, tmp_path: Path
) -> None:
    # A replica of another host's name is never taken for dead: it counts with its record.
    answering = True

    async def peer(request: web.Request) -> web.Response:
        if not answering:
            return web.Response(status=503)
        return web.Response(
            text=peer_exposition(endpoint, 3, 0.5),
            headers={REPLICA_HEADER: "elsewhere-1-0badcafe", SNAPSHOT_HEADER: "1"},
        )

    server = await start_peer(peer)
    spool = MetricsSpool(tmp_path / "metrics", FAMILY_MERGE)
    replica = FakeReplica([str(server.make_url(""))])
    try:
        first = await scrape(replica, spool=spool)
        answering = False
        second = await scrape(replica, spool=spool)
    finally:
        await server.close()
    invocations = series(endpoint, "splitserve_invocations_total")
    assert first[invocations] == second[invocations] == 5.0
    # Its gauges are not kept: they described a process.
    assert first[series(endpoint, "splitserve_variant_weight")] == 0.25  # own first, no controller
    assert second[series(endpoint, "splitserve_variant_weight")] == 0.25
    # This replica's own record is there too (a scrape records every replica it read).
    assert (tmp_path / "metrics" / "replica-own.prom").exists()


class UnreachableStateReplica(FakeReplica):
    """A replica whose list of live replicas cannot be read (the state database is down)."""

    async def host_peers(self) -> list[str]:
        """Refused, as the database layer refuses."""
        raise DatabaseUnavailable("the state database cannot be reached")


async def test_a_state_database_out_of_reach_leaves_the_scrape_its_own_figures(
    endpoint: str, own_series: VariantMetrics
) -> None:
    found = await scrape(UnreachableStateReplica([]))
    assert found[series(endpoint, "splitserve_invocations_total")] == 2.0
