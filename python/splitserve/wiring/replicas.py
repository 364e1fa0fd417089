"""One gateway process as a replica among several over one shared state (docs/architecture.md,
"Replicas").

`ReplicaNode` is this process's membership: it writes its heartbeat row every
`heartbeat_interval_seconds` and, while it is not the controller, tries for the controller lease
and follows the routing documents (`wiring.follower`). When it gets the lease it becomes the
controller for good (until it stops): the app starts the control plane, the supervisor and the
fleet deployer in it (`app._controller`), whose every routing change `ReplicaNode` publishes as
routing documents (`RoutingPublisher`). Weight changes, blue/green switches and removals wait
until every live replica routes with the new documents. `ControllerSlot` holds the controller's
parts once they run; `wiring.forwarder` passes control requests to the controller meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from splitserve.cluster.lease import ControllerLease
from splitserve.cluster.routing import RoutingDocument
from splitserve.cluster.state import ROUTING_CHANNEL, ClusterState, ReplicaRecord
from splitserve.config import ReplicaSettings
from splitserve.control.service import ControlService
from splitserve.database import ChangeFeed, DatabaseUnavailable
from splitserve.errors import ServiceUnavailable
from splitserve.wiring.fleet import FleetDeployer
from splitserve.wiring.follower import RoutingFollower
from splitserve.workers.instance import InstanceInfo

__all__ = ["ControllerSlot", "ReplicaNode"]

log = logging.getLogger(__name__)

#: A new controller keeps the follower's pools for at most this many propagation timeouts while
#: it adopts instances that outlived the old one.
_ADOPTION_WAITS = 12
#: The controller deletes the rows of replicas silent for this many replica timeouts.
_FORGET_AFTER = 12


@dataclass
class ControllerSlot:
    """The controller's parts in this process: set while it controls the endpoints, None before
    (a replica that is not the controller) and after it stopped."""

    control: ControlService | None = None
    fleet: FleetDeployer | None = None

    def started(self) -> ControlService:
        """The control service, once it runs.

        Raises:
            ServiceUnavailable: this process does not control the endpoints (yet).
        """
        if self.control is None:
            raise ServiceUnavailable("The control plane is starting; retry.")
        return self.control

    def live_instances(self) -> dict[tuple[str, str], list[InstanceInfo]]:
        """Every live instance of the endpoints this process controls, by (endpoint, variant)."""
        return {} if self.fleet is None else self.fleet.live_instances()


@dataclass(frozen=True)
class _Membership:
    """What `ReplicaNode.start` joins with; one object, so nothing is half set."""

    state: ClusterState
    lease: ControllerLease
    follower: RoutingFollower
    internal_url: str
    become_controller: Callable[[bool], Awaitable[None]]


class ReplicaNode:
    """This process's membership among the replicas of one state; a `ReplicaView`."""

    def __init__(self, settings: ReplicaSettings, replica_id: str) -> None:
        """Replica `replica_id`; it joins the others at `start`."""
        self._settings = settings
        self._replica_id = replica_id
        self._joined: _Membership | None = None
        self._host = socket.gethostname()
        self._started = time.time()
        self._controller = False
        self._leading = False
        self._instances_outlive_controller = False
        self._applied = -1
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[str] = set()
        self._publish_wanted = asyncio.Event()
        self._document_source: Callable[[str], RoutingDocument | None] | None = None

    # --- ReplicaView ------------------------------------------------------------------------------

    @property
    def replica_id(self) -> str:
        """This process's replica id."""
        return self._replica_id

    def is_controller(self) -> bool:
        """True once this process holds the controller lease (and has started controlling)."""
        return self._controller

    @property
    def _member(self) -> _Membership:
        if self._joined is None:
            raise RuntimeError("the replica has not joined yet (ReplicaNode.start)")
        return self._joined

    async def host_peers(self) -> list[str]:
        """Internal URLs of the other live replicas on this host."""
        if self._joined is None:
            return []
        return [
            replica.internal_url
            for replica in await self._live_replicas()
            if replica.host == self._host and replica.replica_id != self._replica_id
        ]

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(
        self,
        state: ClusterState,
        lease: ControllerLease,
        follower: RoutingFollower,
        internal_url: str,
        become_controller: Callable[[bool], Awaitable[None]],
        *,
        instances_outlive_controller: bool = False,
    ) -> None:
        """Join the replicas: write rows to `state`, follow with `follower` until this process
        holds `lease`, then await `become_controller(takeover)` once. The first try for the
        lease is made here, so the first replica of a state controls it before it serves
        (`takeover` False: the replicas are starting); a later one takes control over from a
        controller that died (`takeover` True). `instances_outlive_controller`: the placement's
        instances survive a controller (Ray), so this replica keeps routing to them while it
        takes control, instead of answering 503 until they are published again."""
        self._instances_outlive_controller = instances_outlive_controller
        self._joined = _Membership(state, lease, follower, internal_url, become_controller)
        await self._heartbeat()
        if await asyncio.to_thread(lease.try_acquire):
            await self._take_control(takeover=False)
        self._tasks = [
            asyncio.create_task(self._beat(), name="replica heartbeat"),
            asyncio.create_task(self._follow(), name="replica routing follower"),
        ]

    async def close(self) -> None:
        """Stop, leave the replicas' table and give the lease up."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._joined is None:
            return
        await self._joined.follower.close()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._joined.state.leave, self._replica_id)
        await asyncio.to_thread(self._joined.lease.release)

    async def controller_url(self) -> str | None:
        """The internal URL of the live controller, when there is one (and it is not this)."""
        for replica in await self._live_replicas():
            if replica.controller and replica.replica_id != self._replica_id:
                return replica.internal_url
        return None

    # --- RoutingPublisher (the controller's side) -------------------------------------------------

    def publish_from(self, documents: Callable[[str], RoutingDocument | None]) -> None:
        """Publish what `documents(endpoint)` says whenever `changed` names an endpoint."""
        self._document_source = documents
        self._tasks.append(asyncio.create_task(self._publisher(), name="routing publisher"))

    def changed(self, endpoint_name: str) -> None:
        """The endpoint's routing changed: publish its document soon."""
        self._pending.add(endpoint_name)
        self._publish_wanted.set()

    async def sync(self, endpoint_name: str) -> None:
        """Publish the endpoint's document now and wait until every live replica routes with it
        (at most `propagation_timeout_seconds`; the replicas still behind are logged)."""
        self._pending.discard(endpoint_name)
        version = await self._publish([endpoint_name])
        await self._wait_applied(version)

    async def publish_all(self, endpoint_names: list[str]) -> None:
        """Publish the documents of `endpoint_names` and remove every other one (a new
        controller's first publication: endpoints the old one knew but the store no longer
        has are gone)."""
        _, stored, damaged = await asyncio.to_thread(self._member.state.routing)
        gone = sorted((stored.keys() | damaged) - set(endpoint_names))
        await self._publish([*endpoint_names, *gone])

    async def _publisher(self) -> None:
        while True:
            await self._publish_wanted.wait()
            self._publish_wanted.clear()
            names, self._pending = sorted(self._pending), set()
            try:
                await self._publish(names)
            except Exception:
                log.exception("routing documents of %s not published", ", ".join(names))
                self._pending.update(names)
                await asyncio.sleep(self._settings.heartbeat_interval_seconds)
                self._publish_wanted.set()

    async def _publish(self, names: list[str]) -> int:
        assert self._document_source is not None
        documents: list[RoutingDocument] = []
        removed: list[str] = []
        for name in names:
            document = self._document_source(name)
            if document is None:
                removed.append(name)
            else:
                documents.append(document)
        return await asyncio.to_thread(self._member.state.publish, documents, removed)

    async def _wait_applied(self, version: int) -> None:
        deadline = time.monotonic() + self._settings.propagation_timeout_seconds
        while True:
            behind = [
                replica
                for replica in await self._live_replicas()
                if replica.replica_id != self._replica_id and replica.applied_version < version
            ]
            if not behind:
                return
            if time.monotonic() >= deadline:
                log.warning(
                    "routing version %d: replicas %s had not applied it after %g s",
                    version,
                    ", ".join(r.replica_id for r in behind),
                    self._settings.propagation_timeout_seconds,
                )
                return
            await asyncio.sleep(self._settings.routing_poll_seconds / 2)

    # --- the loops --------------------------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._settings.heartbeat_interval_seconds)
            try:
                await self._heartbeat()
                if self._controller:
                    if not await asyncio.to_thread(self._member.lease.renew):
                        self._lost_control()
                        # Once: the process drains now (a second SIGTERM would cut the drain
                        # short); its row ages out, and the new controller's replaces it.
                        return
                    # Rows of replicas that died without leaving (kill -9) would pile up.
                    silent_since = (
                        time.time() - self._settings.replica_timeout_seconds * _FORGET_AFTER
                    )
                    await asyncio.to_thread(self._member.state.forget_replicas, silent_since)
                elif await asyncio.to_thread(self._member.lease.try_acquire):
                    await self._take_control(takeover=True)
            except asyncio.CancelledError:
                raise
            except DatabaseUnavailable as error:
                # The lease stays as it was: nobody can take it while the database is down, and
                # this replica does not count the outage as its holder's silence.
                self._member.lease.lost_sight()
                log.warning("replica %s: no heartbeat: %s", self._replica_id, error.message)
            except Exception:
                log.exception("replica %s: heartbeat failed", self._replica_id)

    def _lost_control(self) -> None:
        """Another replica holds the lease (this one was cut off from the database for longer
        than its TTL): stop at once, draining, so two controllers never run instances of the same
        endpoints for long; a supervisor starts this replica again as a follower."""
        log.critical(
            "replica %s lost the controller lease to another replica: stopping", self._replica_id
        )
        os.kill(os.getpid(), signal.SIGTERM)

    async def _take_control(self, *, takeover: bool) -> None:
        log.info("replica %s holds the controller lease: it controls the endpoints now",
                 self._replica_id)  # fmt: skip
        self._leading = True  # the follower stops
        if self._instances_outlive_controller:
            # The instances serve on (Ray): route to them with the follower's tables until the
            # new controller has adopted and published them, then drop the follower's pools.
            await self._member.become_controller(takeover)
            self._tasks.append(
                asyncio.create_task(
                    self._member.follower.close_when_replaced(
                        self._settings.propagation_timeout_seconds * _ADOPTION_WAITS
                    ),
                    name="follower pools after takeover",
                )
            )
        else:
            await self._member.follower.hand_over()
            await self._member.become_controller(takeover)
        # Only now: until its control plane runs, this replica passes control requests on
        # (and, with no live controller, answers 503), and others find no controller.
        self._controller = True
        await self._heartbeat()

    async def _heartbeat(self) -> None:
        await asyncio.to_thread(
            self._member.state.heartbeat,
            ReplicaRecord(
                replica_id=self._replica_id,
                host=self._host,
                pid=os.getpid(),
                internal_url=self._member.internal_url,
                started=self._started,
                heartbeat=time.time(),
                applied_version=self._applied,
                controller=self._controller,
            ),
        )

    async def _follow(self) -> None:
        database = self._member.state.database
        # PostgreSQL notifies routing changes (LISTEN); SQLite's version is one cheap read.
        feed = database.changes(ROUTING_CHANNEL) if database.kind == "postgresql" else None
        try:
            await self._follow_changes(feed)
        finally:
            if feed is not None:
                feed.close()

    async def _follow_changes(self, feed: ChangeFeed | None) -> None:
        while self._following():
            try:
                version = await asyncio.to_thread(self._member.state.routing_version)
                if version != self._applied:
                    version, documents, damaged = await asyncio.to_thread(
                        self._member.state.routing
                    )
                    if not self._following():
                        return  # it took control meanwhile: its own deployer routes now
                    await self._member.follower.apply(documents, damaged)
                    self._applied = version
                    await asyncio.to_thread(self._member.state.applied, self._replica_id, version)
            except asyncio.CancelledError:
                raise
            except DatabaseUnavailable as error:
                # Routing stays as it was until the database is back.
                log.warning("replica %s: routing not read: %s", self._replica_id, error.message)
                await asyncio.sleep(self._settings.heartbeat_interval_seconds)
            except Exception:
                log.exception("replica %s: routing documents not read", self._replica_id)
                await asyncio.sleep(self._settings.heartbeat_interval_seconds)
            if feed is None:
                await asyncio.sleep(self._settings.routing_poll_seconds)
            else:
                # Wakes on a notification; the timeout re-reads the version in case one was
                # missed while the connection was being re-established.
                with contextlib.suppress(DatabaseUnavailable):
                    await asyncio.to_thread(feed.wait, self._settings.heartbeat_interval_seconds)

    def _following(self) -> bool:
        return not self._leading

    async def _live_replicas(self) -> list[ReplicaRecord]:
        since = time.time() - self._settings.replica_timeout_seconds
        return await asyncio.to_thread(self._member.state.replicas, since)
