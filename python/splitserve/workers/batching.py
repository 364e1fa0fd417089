"""Dynamic batching: requests that arrive together share one predict call.

A predict call has a fixed cost whatever its size, so coalescing concurrent requests buys
throughput. `DynamicBatcher.predict` queues the caller's rows; the first request of a batch starts
a timer of `max_wait_us`; when it fires, or as soon as `max_rows` rows are queued, the queue is
predicted in calls of at most `max_rows` rows, and each caller gets exactly its own rows back.

With an executor (the server's single predict thread), a timer that fires while a batch is being
predicted does not start another call: the queue keeps growing until the running call finishes,
so under load batches fill without anyone waiting longer than they would have anyway.

The event loop's timer resolution bounds how precisely the wait is kept: uvloop rounds delays to
whole milliseconds, so a wait under 0.5 ms means "until the loop has run the requests it has
already received", and 0.5 ms to 1.5 ms means 1 ms.

A request of `max_rows` rows or more is predicted alone. `max_rows <= 1` or `max_wait_us == 0`
disables batching: every request is one predict call.

Nothing here knows XGBoost; the predict function is any rows -> predictions callable. Callbacks
rather than a consumer task keep the bookkeeping at ~10 us a request (a task cost ~35 us).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial

import numpy as np
import numpy.typing as npt

Rows = npt.NDArray[np.float32]
Predictions = npt.NDArray[np.float32]
PredictFunction = Callable[[Rows], Predictions]


@dataclass(frozen=True)
class BatchStatistics:
    """Counters for tests and the benchmark.

    Attributes:
        predict_calls: predict calls made (batches plus requests predicted alone).
        batched_requests: requests that went through a batch.
        batched_rows: rows predicted in batches.
    """

    predict_calls: int
    batched_requests: int
    batched_rows: int


_Waiting = tuple[Rows, asyncio.Future[Predictions]]


class DynamicBatcher:
    """Coalesces concurrent predict requests into batches.

    Args:
        predict: rows (float32, shape (n, features)) -> predictions with n as first dimension.
            It must return arrays it owns (they are sliced and handed to the callers) and be
            thread-safe when an executor is given.
        max_rows: the most rows one batch holds.
        max_wait_us: how long a batch waits for more rows after its first request arrived.
        executor: where predict calls run (the server gives it one thread, so the event loop
            goes on accepting requests and answering /ping); None runs them on the event loop.
    """

    def __init__(
        self,
        predict: PredictFunction,
        *,
        max_rows: int,
        max_wait_us: int,
        executor: Executor | None = None,
    ) -> None:
        self._predict = predict
        self.max_rows = max_rows
        self.max_wait_us = max_wait_us
        self._max_wait_seconds = max_wait_us / 1e6
        self._executor = executor
        self._waiting: list[_Waiting] = []
        self._waiting_rows = 0
        self._timer: asyncio.TimerHandle | None = None
        # Batches in the executor; while there are some, an expired wait defers the flush.
        self._running = 0
        self._flush_when_idle = False
        self._predict_calls = 0
        self._batched_requests = 0
        self._batched_rows = 0

    @property
    def enabled(self) -> bool:
        """Whether requests are coalesced at all."""
        return self.max_rows > 1 and self.max_wait_us > 0

    def statistics(self) -> BatchStatistics:
        """The counters so far."""
        return BatchStatistics(self._predict_calls, self._batched_requests, self._batched_rows)

    async def predict(self, rows: Rows) -> Predictions:
        """Predict `rows`, possibly in one call with other callers' rows.

        Args:
            rows: float32, shape (n, features), n >= 1.

        Returns:
            the predictions of exactly these rows, in order.

        Raises:
            whatever the predict function raised for the batch these rows were part of.
        """
        count = rows.shape[0]
        if not self.enabled or count >= self.max_rows:
            self._predict_calls += 1
            if self._executor is None:
                return self._predict(rows)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._predict, rows)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Predictions] = loop.create_future()
        self._waiting.append((rows, future))
        self._waiting_rows += count
        if self._waiting_rows >= self.max_rows:
            self._flush(only_full=True)
        if self._waiting and self._timer is None and not self._flush_when_idle:
            self._timer = loop.call_later(self._max_wait_seconds, self._on_timer)
        return await future

    async def aclose(self) -> None:
        """Stop waiting; requests still queued fail with CancelledError."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush_when_idle = False
        waiting, self._waiting, self._waiting_rows = self._waiting, [], 0
        for _, future in waiting:
            future.cancel()

    def _on_timer(self) -> None:
        self._timer = None
        if self._running:
            self._flush_when_idle = True  # the predictor is busy: let the batch grow meanwhile
        else:
            self._flush()

    def _on_batch_done(self) -> None:
        self._running -= 1
        if self._flush_when_idle and not self._running:
            self._flush_when_idle = False
            self._flush()

    def _flush(self, *, only_full: bool = False) -> None:
        """Predict the queue in arrival order, in batches of at most max_rows rows.

        Args:
            only_full: predict only batches that cannot take the next request (a batch became
                full); the rest keeps waiting for the timer. Otherwise (the timer fired) predict
                everything.
        """
        queue = [entry for entry in self._waiting if not entry[1].done()]  # callers gone: drop
        start = 0
        while start < len(queue):
            end, rows = start, 0
            while end < len(queue):
                size = queue[end][0].shape[0]
                if end > start and rows + size > self.max_rows:
                    break
                rows += size
                end += 1
            if only_full and end == len(queue) and rows < self.max_rows:
                break  # the last batch could still grow
            self._run_batch(queue[start:end], rows)
            start = end
        self._waiting = queue[start:]
        self._waiting_rows = sum(entry[0].shape[0] for entry in self._waiting)
        if not self._waiting and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _run_batch(self, batch: list[_Waiting], count: int) -> None:
        self._predict_calls += 1
        self._batched_requests += len(batch)
        self._batched_rows += count
        rows = batch[0][0] if len(batch) == 1 else np.concatenate([entry[0] for entry in batch])
        if self._executor is None:
            try:
                predictions = self._predict(rows)
            except Exception as error:
                _fail(batch, error)
            else:
                _deliver(batch, predictions)
            return
        self._running += 1
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(self._executor, self._predict, rows)
        running.add_done_callback(partial(self._finish_batch, batch))

    def _finish_batch(self, batch: list[_Waiting], running: asyncio.Future[Predictions]) -> None:
        if running.cancelled():
            for _, future in batch:
                future.cancel()
        elif (error := running.exception()) is not None:
            _fail(batch, error)
        else:
            _deliver(batch, running.result())
        self._on_batch_done()


def _deliver(batch: list[_Waiting], predictions: Predictions) -> None:
    """Hand each caller its slice of the batch's predictions."""
    total = sum(entry[0].shape[0] for entry in batch)
    if predictions.shape[0] != total:
        _fail(batch, RuntimeError(f"predict returned {predictions.shape[0]} rows for {total}"))
        return
    start = 0
    for rows, future in batch:
        end = start + rows.shape[0]
        if not future.done():
            future.set_result(predictions[start:end])
        start = end


def _fail(batch: list[_Waiting], error: BaseException) -> None:
    """Fail every caller of the batch, and only them."""
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
