"""`CloudWatchGateway`: CloudWatch's API as one running gateway process holds it.

It builds the parts (figures of this process, the service with its operations) and runs the one
periodic job: every `flush_interval_seconds` it samples the instances' CPU and memory. The app
opens it after the fleet deployer (whose rings and instances it reads) and closes it before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from splitserve.cloudwatch.live import LiveFigures, MemoryReader
from splitserve.cloudwatch.queries import MetricQueries
from splitserve.cloudwatch.service import CloudWatchService
from splitserve.config import Settings
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
        minutes: MinuteStore,
        instances: InstanceSource | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """CloudWatch over `minutes` (the deployer's rings) and `instances` (its fleets)."""
        self._settings = settings.cloudwatch
        self.live = LiveFigures(
            minutes, instances, CpuSampler(settings.stats.cpu_sample_min_seconds), clock
        )
        queries = MetricQueries(settings.cloudwatch, MemoryReader(self.live), clock)
        self.service = CloudWatchService(queries.operations())
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the periodic job."""
        self._task = asyncio.create_task(self._run(), name="cloudwatch")

    async def close(self) -> None:
        """Stop the periodic job."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def tick(self) -> None:
        """One round of the periodic job: sample the instances."""
        self.live.sample_instances()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                # A failed round is retried at the next; the job must outlive it.
                log.exception("CloudWatch's periodic job failed; retrying next round")
            await asyncio.sleep(self._settings.flush_interval_seconds)
