"""A host's /metrics across its gateway replicas: fetch the peers' own expositions, merge.

Each replica serves its own exposition at `OWN_PATH` (on its internal address), saying in its
answer's headers who it is, whether it is the controller and when it made the exposition. The
replica a scrape of /metrics lands on asks every host peer concurrently, each within
`peer_metrics_timeout_seconds`, and merges what came back with its own
(`exposition.merge_families`, rules in `prometheus.FAMILY_MERGE`). A peer that does not answer
in time, answers with an error or with something that is not the text format is left out of that
scrape's live figures, logged and counted in `splitserve_metrics_peer_failures_total`: the scrape
itself never fails for it. Nothing here runs per request; the cost is the scrape's.

Among replicas, each scrape also writes what it read into the host's spool
(`metrics.spool.MetricsSpool`) and adds the counts of the replicas it did not hear from, so that
a replica that stops, dies or is slow to answer does not make the host's counters go down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

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
from splitserve.metrics.spool import MetricsSpool, Snapshot

__all__ = [
    "CONTROLLER_HEADER",
    "OWN_PATH",
    "REPLICA_HEADER",
    "SNAPSHOT_HEADER",
    "host_exposition",
    "own_exposition",
    "record_own",
]

log = logging.getLogger(__name__)

#: Where a replica serves its own exposition (its internal listener).
OWN_PATH = "/splitserve/metrics/own"
#: The own exposition's answer header: "true" when the replica is the controller.
CONTROLLER_HEADER = "X-Splitserve-Controller"
#: The own exposition's answer header: the replica's id.
REPLICA_HEADER = "X-Splitserve-Replica"
#: The own exposition's answer header: when the replica made it, on its monotonic clock (ns).
SNAPSHOT_HEADER = "X-Splitserve-Snapshot"


def own_exposition(replica_id: str, controller: bool) -> tuple[bytes, dict[str, str]]:
    """This process's metrics in Prometheus's text format and the headers `OWN_PATH` answers
    with: who made it, whether it is the controller, and when."""
    headers = {
        CONTROLLER_HEADER: "true" if controller else "false",
        REPLICA_HEADER: replica_id,
        SNAPSHOT_HEADER: str(time.monotonic_ns()),
    }
    return generate_latest(REGISTRY), headers


async def host_exposition(
    replica_id: str,
    controller: bool,
    peers: Sequence[str],
    settings: StatsSettings,
    spool: MetricsSpool | None,
) -> bytes:
    """The host's metrics: this process's merged with those of `peers` that answer and, with a
    `spool`, the counts of the host's replicas that did not.

    Args:
        replica_id: this process's replica id.
        controller: whether this process is the controller.
        peers: the other replicas' internal base URLs (`http://host:port`) on this host.
        settings: how long each peer may take (`peer_metrics_timeout_seconds`) and how much it
            may send (`peer_metrics_max_bytes`).
        spool: the host's record of its replicas; None for a gateway that is one process.

    Returns:
        Prometheus's text format: this process's own exposition, unchanged, when there are
        neither peers nor a spool.
    """
    sequence = time.monotonic_ns()
    own = generate_latest(REGISTRY)
    if not peers and spool is None:
        return own
    answers: list[_Answer | None] = []
    if peers:
        timeout = aiohttp.ClientTimeout(total=settings.peer_metrics_timeout_seconds)
        limit = settings.peer_metrics_max_bytes
        async with aiohttp.ClientSession(timeout=timeout) as session:
            answers = await asyncio.gather(*(_peer(session, peer, limit) for peer in peers))
    heard = [answer for answer in answers if answer is not None]
    others = [answer.families for answer in heard]
    if spool is not None:
        snapshots = [
            Snapshot(replica_id, sequence, own.decode()),
            *(answer.snapshot for answer in heard if answer.snapshot is not None),
        ]
        live = {snapshot.replica_id for snapshot in snapshots}
        try:
            await asyncio.to_thread(spool.record, snapshots)
            others += await asyncio.to_thread(spool.absent, live)
        except OSError as error:
            log.warning("the host's metrics spool is left out of this scrape: %s", error)
    return render(
        merge_families(
            ReplicaFamilies(parse_exposition(own.decode()), controller), others, FAMILY_MERGE
        )
    )


async def record_own(replica_id: str, spool: MetricsSpool) -> None:
    """Write this process's exposition to the host's spool (a replica that stops cleanly does,
    so that what it counted since the last scrape stays in the host's totals)."""
    sequence = time.monotonic_ns()
    text = generate_latest(REGISTRY).decode()
    await asyncio.to_thread(spool.record, [Snapshot(replica_id, sequence, text)])


@dataclass(frozen=True)
class _Answer:
    """What one peer answered: its families, and its snapshot when it said who it is."""

    families: ReplicaFamilies
    snapshot: Snapshot | None


async def _peer(session: aiohttp.ClientSession, base_url: str, limit: int) -> _Answer | None:
    """One peer's parsed exposition, or None (logged and counted) when it has none to give."""
    url = base_url.rstrip("/") + OWN_PATH
    try:
        async with session.get(url) as response:
            if response.status != 200:
                _left_out(url, "unreachable", f"status {response.status}")
                return None
            controller = response.headers.get(CONTROLLER_HEADER, "").lower() == "true"
            peer_id = response.headers.get(REPLICA_HEADER, "")
            sequence = response.headers.get(SNAPSHOT_HEADER, "")
            chunks = []
            size = 0
            async for chunk in response.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > limit:
                    _left_out(url, "malformed", f"exposition over {limit} bytes")
                    return None
                chunks.append(chunk)
    except TimeoutError:
        _left_out(url, "timeout", "no answer in time")
        return None
    except (aiohttp.ClientError, OSError, ValueError) as error:
        _left_out(url, "unreachable", str(error) or type(error).__name__)
        return None
    try:
        text = b"".join(chunks).decode()
        families = parse_exposition(text)
    except (MalformedExposition, UnicodeDecodeError) as error:
        _left_out(url, "malformed", str(error))
        return None
    snapshot = Snapshot(peer_id, int(sequence), text) if peer_id and sequence.isdigit() else None
    return _Answer(ReplicaFamilies(families, controller), snapshot)


def _left_out(url: str, reason: str, detail: str) -> None:
    """Count and log a peer left out of this scrape's live figures."""
    PEER_SCRAPE_FAILURES.labels(reason).inc()
    log.warning("metrics of replica %s left out of this scrape (%s): %s", url, reason, detail)
