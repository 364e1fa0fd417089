"""The inference-id index: what each answered invocation was, kept for its label to join later.

The request path (`InferenceIndex.record`, which the runtime service calls after every answer)
appends one tuple to a bounded list and returns: no encoding, no lock, no I/O. Every
`FeedbackSettings.index_flush_seconds` the writer task takes the list whole and writes it to the
state database (`FeedbackStore.write_index`, off the event loop, in batches of
`index_batch_rows`); the controller prunes the index to its retention and row cap every
`prune_seconds`. An entry that finds the list full, or whose write fails, is dropped and counted
in `splitserve_feedback_index_dropped_total`: its label will be refused as unknown, and no request
ever waits for the index. What a replica killed with kill -9 had not yet written (at most one
flush interval) is lost the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from splitserve.config import FeedbackSettings
from splitserve.metrics.prometheus import FEEDBACK_INDEX_DROPPED
from splitserve.online.store import FeedbackStore, IndexRow

__all__ = ["InferenceIndex"]

log = logging.getLogger(__name__)


class InferenceIndex:
    """Answered invocations on their way to the state database's index."""

    def __init__(self, settings: FeedbackSettings, clock: Callable[[], float] = time.time) -> None:
        """An index buffer of `settings.index_queue_size` entries; nothing starts until
        `start`."""
        self._settings = settings
        self._clock = clock
        self._capacity = settings.index_queue_size
        self._answer_bytes = settings.answer_max_bytes
        self._pending: list[IndexRow] = []
        self._task: asyncio.Task[None] | None = None
        self._store: FeedbackStore | None = None

    def record(
        self,
        endpoint: str,
        variant: str,
        inference_id: str,
        targeted: bool,
        content_type: bytes | None,
        body: bytes,
    ) -> None:
        """Keep one answered invocation for the next write; never blocks, never raises (a full
        buffer drops it and counts it)."""
        pending = self._pending
        if len(pending) >= self._capacity:
            FEEDBACK_INDEX_DROPPED.inc()
            return
        pending.append(
            (
                endpoint,
                inference_id,
                variant,
                targeted,
                self._clock(),
                None if content_type is None else content_type.decode("latin-1"),
                body[: self._answer_bytes],
            )
        )

    def start(self, store: FeedbackStore, is_controller: Callable[[], bool]) -> None:
        """Start writing to `store` (pruning it while `is_controller()`)."""
        self._store = store
        self._task = asyncio.create_task(self._run(store, is_controller), name="feedback-index")

    async def flush(self) -> None:
        """Write what is waiting now (the writer task does this every flush interval)."""
        store = self._store
        if store is None or not self._pending:
            return
        pending, self._pending = self._pending, []
        size = self._settings.index_batch_rows
        for first in range(0, len(pending), size):
            batch = pending[first : first + size]
            try:
                await asyncio.to_thread(store.write_index, batch)
            except Exception:
                # The database is out of reach or refused: these entries are lost (their labels
                # will be refused as unknown), the next batch is tried anyway.
                FEEDBACK_INDEX_DROPPED.inc(len(batch))
                log.exception("feedback index: %d answered invocations not written", len(batch))

    async def prune(self) -> None:
        """Apply the retention and the row cap to the stored index."""
        store = self._store
        if store is None:
            return
        settings = self._settings
        deleted = await asyncio.to_thread(
            store.prune, self._clock() - settings.retention_seconds, settings.max_index_rows
        )
        if deleted:
            log.info("feedback index: pruned %d entries past retention or over the cap", deleted)

    async def close(self) -> None:
        """Stop the writer task and write what is waiting a last time."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _run(self, store: FeedbackStore, is_controller: Callable[[], bool]) -> None:
        settings = self._settings
        pruned_at: float | None = None
        while True:
            await asyncio.sleep(settings.index_flush_seconds)
            await self.flush()
            now = time.monotonic()
            if is_controller() and (pruned_at is None or now - pruned_at >= settings.prune_seconds):
                pruned_at = now
                try:
                    await self.prune()
                except Exception:
                    log.exception("feedback index: pruning failed; retrying next round")
