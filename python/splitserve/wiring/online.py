"""The face's wiring of feedback and the live experiment (`splitserve.online`).

`create_app` builds the `InferenceIndex` (the runtime service hands it every answered invocation)
and adds the routes; `online_context` is the cleanup context that, once the state database
exists (after `_gateway`), opens feedback's tables, starts the index's writer, the experiment
refresher and, on the controller, the automatic actions (`wiring.actions`), and stops them in
reverse. `RegistryWeights` is what feedback reads of the endpoints:
the data plane's registry, which every replica has (a follower's from the routing documents).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from aiohttp import web

from splitserve.database import open_database
from splitserve.online.service import FeedbackService
from splitserve.online.store import FeedbackStore
from splitserve.runtime.registry import EndpointRegistry
from splitserve.wiring import keys
from splitserve.wiring.actions import ExperimentActions

__all__ = ["RegistryWeights", "forget_feedback", "online_context"]

log = logging.getLogger(__name__)


class RegistryWeights:
    """Feedback's `EndpointWeights` over the data plane's registry."""

    def __init__(self, registry: EndpointRegistry) -> None:
        self._registry = registry

    def known(self, endpoint: str) -> bool:
        """Whether the registry knows `endpoint` (routable, pending or failed)."""
        return self._registry.get(endpoint) is not None or (
            self._registry.unroutable(endpoint) is not None
        )

    def weights(self, endpoint: str) -> Mapping[str, float] | None:
        """The weights `endpoint`'s router routes with now; None when it is not routable."""
        live = self._registry.get(endpoint)
        if live is None:
            return None
        return {spec.name: spec.weight for spec in live.router.variants()}

    def names(self) -> list[str]:
        """The routable endpoints' names."""
        return self._registry.names()


async def online_context(app: web.Application) -> AsyncIterator[None]:
    """Open feedback's tables in the state database, start the index's writer and the
    experiment refresher; on shutdown stop them and write what the index still holds."""
    settings = app[keys.SETTINGS]
    shared = app.get(keys.SHARED_DATABASE)
    database = (
        shared
        if shared is not None
        else await asyncio.to_thread(open_database, settings.state_url, settings.database)
    )
    try:
        store = await asyncio.to_thread(FeedbackStore.open, database, owned=shared is None)
    except BaseException:
        if shared is None:
            database.close()
        raise
    service = FeedbackService(settings.feedback, store, RegistryWeights(app[keys.ENDPOINTS]))
    app[keys.FEEDBACK] = service
    index = app.get(keys.FEEDBACK_INDEX)
    if index is not None:
        index.start(store, app[keys.REPLICA].is_controller)
    refresher = asyncio.create_task(_refresh(service, settings.feedback.refresh_seconds))
    slot = app[keys.CONTROLLER]
    actions = ExperimentActions(
        settings.feedback, service, lambda: slot.control, app[keys.ENDPOINTS].names
    )
    acting = asyncio.create_task(actions.run(), name="experiment-actions")
    try:
        yield
    finally:
        for task in (acting, refresher):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if index is not None:
            await index.close()
        await asyncio.to_thread(store.close)


async def forget_feedback(app: web.Application, endpoint: str) -> None:
    """Forget a deleted endpoint's index, labels and experiment (the fleet deployer calls this
    after DeleteEndpoint removed it), so an endpoint created again under its name starts
    afresh. A failure is logged: the deletion itself has happened."""
    service = app.get(keys.FEEDBACK)
    if service is None:
        return
    try:
        await asyncio.to_thread(service.forget, endpoint)
    except Exception:
        log.exception("endpoint %s: its feedback was not forgotten", endpoint)


async def _refresh(service: FeedbackService, seconds: float) -> None:
    """Keep the experiment gauges current: look at every experiment every `seconds`."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(service.refresh)
        except Exception:
            log.exception("live experiments: refresh failed; retrying next round")
