"""A host's /metrics across its gateway replicas: fetch the peers' own expositions, merge.

Each replica serves its own exposition at `OWN_PATH` (on its internal address), saying in the
`CONTROLLER_HEADER` whether it is the controller. The replica a scrape of /metrics lands on asks
every host peer concurrently, each within `timeout_seconds`, and merges what came back with its
own (`exposition.merge_families`, rules in `prometheus.FAMILY_MERGE`). A peer that does not
answer in time, answers with an error or with something that is not the text format is left
out of that scrape, logged and counted in `splitserve_metrics_peer_failures_total`: the scrape
itself never fails for it. Nothing here runs per request; the cost is the scrape's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import aiohttp
from prometheus_client import generate_latest

from splitserve.config import StatsSettings
from splitserve.metrics.exposition import (
    MalformedExposition,
    ReplicaFamilies,
    merge_families,
    parse_exposition,
    render,
)
from splitserve.metrics.prometheus import FAMILY_MERGE, PEER_SCRAPE_FAILURES, REGISTRY

__all__ = ["CONTROLLER_HEADER", "OWN_PATH", "host_exposition", "own_exposition"]

log = logging.getLogger(__name__)

#: Where a replica serves its own exposition (its internal listener).
OWN_PATH = "/splitserve/metrics/own"
#: The own exposition's answer header: "true" when the replica is the controller.
CONTROLLER_HEADER = "X-Splitserve-Controller"


def own_exposition() -> bytes:
    """This process's metrics in Prometheus's text format (what `OWN_PATH` serves)."""
    return generate_latest(REGISTRY)


async def host_exposition(controller: bool, peers: Sequence[str], settings: StatsSettings) -> bytes:
    """The host's metrics: this process's merged with those of `peers` that answer.

    Args:
        controller: whether this process is the controller.
        peers: the other replicas' internal base URLs (`http://host:port`) on this host.
        settings: how long each peer may take (`peer_metrics_timeout_seconds`) and how much it
            may send (`peer_metrics_max_bytes`).

    Returns:
        Prometheus's text format; this process's own exposition unchanged when there are no
        peers.
    """
    own = own_exposition()
    if not peers:
        return own
    timeout = aiohttp.ClientTimeout(total=settings.peer_metrics_timeout_seconds)
    limit = settings.peer_metrics_max_bytes
    async with aiohttp.ClientSession(timeout=timeout) as session:
        answers = await asyncio.gather(*(_peer(session, peer, limit) for peer in peers))
    return render(
        merge_families(
            ReplicaFamilies(parse_exposition(own.decode()), controller),
            [answer for answer in answers if answer is not None],
            FAMILY_MERGE,
        )
    )


async def _peer(
    session: aiohttp.ClientSession, base_url: str, limit: int
) -> ReplicaFamilies | None:
    """One peer's parsed exposition, or None (logged and counted) when it has none to give."""
    url = base_url.rstrip("/") + OWN_PATH
    try:
        async with session.get(url) as response:
            if response.status != 200:
                return _left_out(url, "unreachable", f"status {response.status}")
            controller = response.headers.get(CONTROLLER_HEADER, "").lower() == "true"
            chunks = []
            size = 0
            async for chunk in response.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > limit:
                    return _left_out(url, "malformed", f"exposition over {limit} bytes")
                chunks.append(chunk)
            body = b"".join(chunks)
    except TimeoutError:
        return _left_out(url, "timeout", "no answer in time")
    except (aiohttp.ClientError, OSError, ValueError) as error:
        return _left_out(url, "unreachable", str(error) or type(error).__name__)
    try:
        families = parse_exposition(body.decode())
    except (MalformedExposition, UnicodeDecodeError) as error:
        return _left_out(url, "malformed", str(error))
    return ReplicaFamilies(families, controller)


def _left_out(url: str, reason: str, detail: str) -> ReplicaFamilies | None:
    """Count and log a peer left out of this scrape; None (what `_peer` gives for it)."""
    PEER_SCRAPE_FAILURES.labels(reason).inc()
    log.warning("metrics of replica %s left out of this scrape (%s): %s", url, reason, detail)
    return None
