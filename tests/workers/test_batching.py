"""DynamicBatcher: coalescing, its bounds, and failure isolation, with a recording predict."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from splitserve.workers.batching import DynamicBatcher, Predictions, Rows

FEATURES = 4


class RecordingPredict:
    """A predict function that sums each row and records every call's row count and thread."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.calls: list[int] = []
        self.threads: list[int] = []
        self.fail_on = fail_on

    def __call__(self, rows: Rows) -> Predictions:
        self.calls.append(rows.shape[0])
        self.threads.append(threading.get_ident())
        if self.fail_on is not None and (rows == self.fail_on).any():
            raise ValueError("poisoned row")
        return np.asarray(rows.sum(axis=1), dtype=np.float32)


def rows_of(caller: int, count: int) -> Rows:
    """`count` rows whose sums identify the caller and the row: caller * 1000 + row index."""
    rows = np.zeros((count, FEATURES), dtype=np.float32)
    rows[:, 0] = caller * 1000 + np.arange(count)
    return rows


def expected(caller: int, count: int) -> list[float]:
    """The predictions `rows_of(caller, count)` must get back."""
    return [float(caller * 1000 + index) for index in range(count)]


async def test_concurrent_callers_share_one_predict_and_get_their_own_rows() -> None:
    predict = RecordingPredict()
    batcher = DynamicBatcher(predict, max_rows=64, max_wait_us=20_000)
    sizes = [1, 3, 2, 1, 5, 1, 2, 4]
    try:
        results = await asyncio.gather(
            *(batcher.predict(rows_of(caller, size)) for caller, size in enumerate(sizes))
        )
    finally:
        await batcher.aclose()
    assert predict.calls == [sum(sizes)]
    for caller, (size, result) in enumerate(zip(sizes, results, strict=True)):
        assert result.tolist() == expected(caller, size)
    statistics = batcher.statistics()
    assert statistics.predict_calls == 1
    assert statistics.batched_requests == len(sizes)
    assert statistics.batched_rows == sum(sizes)


async def test_batches_never_exceed_max_rows() -> None:
    predict = RecordingPredict()
    batcher = DynamicBatcher(predict, max_rows=8, max_wait_us=20_000)
    try:
        results = await asyncio.gather(
            *(batcher.predict(rows_of(caller, 3)) for caller in range(10))
        )
    finally:
        await batcher.aclose()
    assert all(count <= 8 for count in predict.calls)
    assert sum(predict.calls) == 30
    assert len(predict.calls) == 5  # two 3-row requests fit in 8 rows, a third does not
    for caller, result in enumerate(results):
        assert result.tolist() == expected(caller, 3)


async def test_a_full_batch_does_not_wait() -> None:
    predict = RecordingPredict()
    batcher = DynamicBatcher(predict, max_rows=4, max_wait_us=10_000_000)
    try:
        # A wait of max_wait_us (10 s) would overrun this: a full batch went at once.
        await asyncio.wait_for(
            asyncio.gather(*(batcher.predict(rows_of(caller, 1)) for caller in range(4))), 5
        )
    finally:
        await batcher.aclose()
    assert predict.calls == [4]


@pytest.mark.parametrize("wait_ms", [30, 80])
async def test_a_lone_request_waits_at_most_max_wait(wait_ms: int) -> None:
    predict = RecordingPredict()
    batcher = DynamicBatcher(predict, max_rows=64, max_wait_us=wait_ms * 1000)
    started = time.perf_counter()
    try:
        # A batch that never went alone would end here, 100x past the wait, not in a flaky bound.
        result = await asyncio.wait_for(batcher.predict(rows_of(1, 2)), wait_ms / 1000 * 100)
    finally:
        await batcher.aclose()
    elapsed = time.perf_counter() - started
    assert result.tolist() == expected(1, 2)
    assert predict.calls == [2]
    # It waited for company (less a timer's early firing); how much longer is the host's business.
    assert elapsed >= wait_ms / 1000 * 0.8


async def test_a_request_arriving_later_joins_the_waiting_batch() -> None:
    predict = RecordingPredict()
    batcher = DynamicBatcher(predict, max_rows=64, max_wait_us=200_000)

    async def later() -> Predictions:
        await asyncio.sleep(0.02)
        return await batcher.predict(rows_of(2, 1))

    try:
        first, second = await asyncio.gather(batcher.predict(rows_of(1, 1)), later())
    finally:
        await batcher.aclose()
    assert predict.calls == [2]
    assert first.tolist() == expected(1, 1)
    assert second.tolist() == expected(2, 1)


async def test_a_request_of_max_rows_or_more_is_predicted_alone() -> None:
    predict = RecordingPredict()
    batcher = DynamicBatcher(predict, max_rows=16, max_wait_us=20_000)
    try:
        results = await asyncio.gather(
            batcher.predict(rows_of(0, 2)),
            batcher.predict(rows_of(1, 100)),
            batcher.predict(rows_of(2, 16)),
            batcher.predict(rows_of(3, 3)),
        )
    finally:
        await batcher.aclose()
    assert sorted(predict.calls) == [5, 16, 100]
    for caller, size in enumerate([2, 100, 16, 3]):
        assert results[caller].tolist() == expected(caller, size)


async def test_an_exception_fails_only_the_callers_of_that_batch() -> None:
    predict = RecordingPredict(fail_on=-1.0)
    batcher = DynamicBatcher(predict, max_rows=64, max_wait_us=20_000)
    poisoned = rows_of(0, 2)
    poisoned[1, 1] = -1.0
    try:
        first_batch = await asyncio.gather(
            batcher.predict(poisoned), batcher.predict(rows_of(1, 1)), return_exceptions=True
        )
        second_batch = await asyncio.gather(
            batcher.predict(rows_of(2, 1)), batcher.predict(rows_of(3, 2))
        )
    finally:
        await batcher.aclose()
    assert all(isinstance(result, ValueError) for result in first_batch)
    assert predict.calls == [3, 3]
    assert second_batch[0].tolist() == expected(2, 1)
    assert second_batch[1].tolist() == expected(3, 2)


async def test_a_predict_returning_the_wrong_row_count_fails_the_batch() -> None:
    batcher = DynamicBatcher(lambda rows: rows[:1].sum(axis=1), max_rows=64, max_wait_us=10_000)
    try:
        results = await asyncio.gather(
            batcher.predict(rows_of(0, 2)), batcher.predict(rows_of(1, 1)), return_exceptions=True
        )
    finally:
        await batcher.aclose()
    assert all(isinstance(result, RuntimeError) for result in results)


@pytest.mark.parametrize(("max_rows", "max_wait_us"), [(1, 1000), (0, 1000), (64, 0)])
async def test_batching_off_makes_one_predict_per_request(max_rows: int, max_wait_us: int) -> None:
    predict = RecordingPredict()
    batcher = DynamicBatcher(predict, max_rows=max_rows, max_wait_us=max_wait_us)
    assert not batcher.enabled
    results = await asyncio.gather(*(batcher.predict(rows_of(caller, 2)) for caller in range(5)))
    await batcher.aclose()
    assert predict.calls == [2] * 5
    for caller, result in enumerate(results):
        assert result.tolist() == expected(caller, 2)


async def test_with_an_executor_every_predict_runs_there() -> None:
    predict = RecordingPredict()
    loop_thread = threading.get_ident()
    with ThreadPoolExecutor(max_workers=1) as executor:
        batcher = DynamicBatcher(predict, max_rows=8, max_wait_us=1000, executor=executor)
        small, large = await asyncio.gather(
            batcher.predict(rows_of(0, 2)), batcher.predict(rows_of(1, 50))
        )
        await batcher.aclose()
    assert small.tolist() == expected(0, 2)
    assert large.tolist() == expected(1, 50)
    assert sorted(predict.calls) == [2, 50]
    assert loop_thread not in predict.threads


async def test_a_batch_grows_while_the_executor_is_busy() -> None:
    release = threading.Event()
    calls: list[int] = []

    def blocking_predict(rows: Rows) -> Predictions:
        calls.append(rows.shape[0])
        if len(calls) == 1:
            release.wait(5)
        return np.asarray(rows.sum(axis=1), dtype=np.float32)

    with ThreadPoolExecutor(max_workers=1) as executor:
        batcher = DynamicBatcher(blocking_predict, max_rows=64, max_wait_us=1000, executor=executor)
        first = asyncio.ensure_future(batcher.predict(rows_of(0, 1)))
        await asyncio.sleep(0.05)  # the first batch is predicting, and blocks
        later = [asyncio.ensure_future(batcher.predict(rows_of(caller, 2))) for caller in (1, 2)]
        await asyncio.sleep(0.02)  # their wait expired, but the predictor is busy
        later.append(asyncio.ensure_future(batcher.predict(rows_of(3, 1))))
        await asyncio.sleep(0.02)
        assert calls == [1]
        release.set()
        results = await asyncio.gather(first, *later)
        await batcher.aclose()
    assert calls == [1, 5]
    for caller, (result, size) in enumerate(zip(results, [1, 2, 2, 1], strict=True)):
        assert result.tolist() == expected(caller, size)


async def test_the_loop_keeps_running_while_a_large_predict_runs_in_the_executor() -> None:
    release = threading.Event()

    def slow_predict(rows: Rows) -> Predictions:
        release.wait(5)
        return np.asarray(rows.sum(axis=1), dtype=np.float32)

    with ThreadPoolExecutor(max_workers=1) as executor:
        batcher = DynamicBatcher(slow_predict, max_rows=8, max_wait_us=1000, executor=executor)
        pending = asyncio.ensure_future(batcher.predict(rows_of(0, 20)))
        await asyncio.sleep(0.05)
        assert not pending.done()  # still predicting, yet this coroutine ran
        release.set()
        assert (await pending).tolist() == expected(0, 20)
        await batcher.aclose()


async def test_aclose_cancels_queued_requests() -> None:
    batcher = DynamicBatcher(RecordingPredict(), max_rows=64, max_wait_us=10_000_000)
    pending = asyncio.ensure_future(batcher.predict(rows_of(0, 1)))
    await asyncio.sleep(0.01)
    await batcher.aclose()
    with pytest.raises(asyncio.CancelledError):
        await pending
