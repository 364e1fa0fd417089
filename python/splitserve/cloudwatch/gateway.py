"""`CloudWatchGateway`: CloudWatch's API as one running gateway process holds it.

It builds the parts (the figures of this process and of the state database, the metric queries,
the alarm book) and runs the one periodic job: every `flush_interval_seconds` it samples the
instances' CPU and memory and writes this process's per-minute figures to the state database
(so a restart loses at most that much), and every `alarm_evaluation_interval_seconds` it
evaluates the alarms. The app opens it after the fleet deployer (whose rings and instances it
reads) and closes it before; closing writes the figures once more.

Every gateway replica runs one. Its figures are stored under its replica id (`source`), so the
replicas' rows add up; only the replica that is the controller evaluates the alarms
(`is_controller`), so N replicas do not each change an alarm's state and write its history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from splitserve.cloudwatch.alarms import AlarmBook
from splitserve.cloudwatch.live import LiveFigures, StoredReader
from splitserve.cloudwatch.queries import MetricQueries
from splitserve.cloudwatch.service import CloudWatchService
from splitserve.cloudwatch.store import CloudWatchStore
from splitserve.config import Settings
from splitserve.database import Database
from splitserve.metrics.minutes import MinuteStore
from splitserve.metrics.procstat import CpuSampler
from splitserve.metrics.prometheus import InstanceSource

__all__ = ["CloudWatchGateway"]

log = logging.getLogger(__name__)


class CloudWatchGateway:
    """The CloudWatch service of a running gateway and its periodic job."""

    def __init__(
        self,
        settings: Settings,
        store: CloudWatchStore,
        minutes: MinuteStore,
        instances: InstanceSource | None,
        clock: Callable[[], float] = time.time,
        *,
        source: str,
        is_controller: Callable[[], bool],
    ) -> None:
        """CloudWatch over `minutes` (the deployer's rings), `instances` (its fleets) and
        `store` (CloudWatch's tables in the state database, opened by `open`); `source` names
        this process's stored figures (its replica id), and alarms are evaluated only while
        `is_controller()` says this process is the controller."""
        self._settings = settings.cloudwatch
        self._store = store
        self._clock = clock
        self._is_controller = is_controller
        self.live = LiveFigures(
            minutes, instances, CpuSampler(settings.stats.cpu_sample_min_seconds), clock
        )
        self.figures = StoredReader(self.live, store, source, clock)
        self.alarms = AlarmBook(settings.cloudwatch, settings.account, store, self.figures, clock)
        queries = MetricQueries(settings.cloudwatch, self.figures, clock)
        self.service = CloudWatchService(queries.operations(), self.alarms.operations())
        self._task: asyncio.Task[None] | None = None
        self._evaluated_at: float | None = None

    @classmethod
    async def open(
        cls,
        settings: Settings,
        minutes: MinuteStore,
        instances: InstanceSource | None,
        *,
        state: Database | str,
        source: str,
        is_controller: Callable[[], bool],
    ) -> CloudWatchGateway:
        """Open CloudWatch's tables in the state database (`state`: an open `Database`, left
        open, or the state URL), load the alarms and start the periodic job (`source` and
        `is_controller` as for the constructor).

        Raises:
            DatabaseError, DatabaseUnavailable: the state database cannot be opened or written.
        """
        store = await asyncio.to_thread(CloudWatchStore.open, state, settings.database)
        gateway = cls(
            settings, store, minutes, instances, source=source, is_controller=is_controller
        )
        try:
            await gateway.alarms.load()
        except BaseException:
            await asyncio.to_thread(store.close)
            raise
        gateway._task = asyncio.create_task(gateway._run(), name="cloudwatch")
        return gateway

    @property
    def retention_minutes(self) -> int:
        """How long per-minute figures stay in the state database."""
        return self._settings.retention_days * 24 * 60

    async def close(self) -> None:
        """Stop the periodic job, write the figures a last time, close the tables."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.figures.flush(self.retention_minutes)
        except Exception:
            log.exception("CloudWatch's last write of per-minute figures failed")
        await asyncio.to_thread(self._store.close)

    async def tick(self) -> None:
        """One round of the periodic job: sample, write figures, and evaluate the alarms when
        their interval has passed and this process is the controller."""
        self.live.sample_instances()
        await self.figures.flush(self.retention_minutes)
        if not self._is_controller():
            # The controller judges every replica's figures (they are all in the store); a
            # replica that becomes the controller evaluates at its next round.
            self._evaluated_at = None
            return
        now = self._clock()
        interval = self._settings.alarm_evaluation_interval_seconds
        if self._evaluated_at is None or now - self._evaluated_at >= interval:
            self._evaluated_at = now
            await self.alarms.evaluate()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                # A failed round is retried at the next; the job must outlive it.
                log.exception("CloudWatch's periodic job failed; retrying next round")
            await asyncio.sleep(self._settings.flush_interval_seconds)
