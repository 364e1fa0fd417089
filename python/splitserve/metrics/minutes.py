"""Per-minute invocations, errors and model latency of every variant: what `splitserve stats` shows.

CloudWatch keeps a variant's Invocations, Invocation4XXErrors, Invocation5XXErrors,
InvocationModelErrors and ModelLatency per minute, and the SageMaker A/B walkthrough reads them back
as a table: one row per minute, one column per variant. The gateway keeps the same numbers itself,
in bounded memory, so that table needs no Prometheus: every variant has a ring of
`retention_minutes + 1` minute slots (24 hours and the current minute by default), and a slot holds
its counts and, once the minute has a latency, a fixed log-spaced histogram (`LATENCY_BUCKETS`
counters), so p50 and p99 cost the same memory whatever the traffic.

Recording is on the request path and costs a few array increments. The minute is the wall clock's
(`time.time() // 60`: right for minute labels; the caller measures latency with perf_counter),
read once per invocation when it is counted. Errors and latency go to the slot of the variant's
newest invocation, which is the minute their request was routed in or a later one.

No aiohttp here: the gateway's GET /splitserve/stats/{endpoint} serialises `MinuteStore.report`
(a `report.StatsReport`), and the `splitserve stats` command renders that JSON
(`splitserve.cli_stats`).
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from operator import add

from splitserve.config import StatsSettings
from splitserve.errors import ValidationException
from splitserve.metrics.report import StatsPeriod, StatsReport, VariantPeriod

#: The latency histogram of a minute: bucket i counts latencies in [LOWEST x 2**(i/PER_OCTAVE),
#: LOWEST x 2**((i+1)/PER_OCTAVE)); the first bucket also counts anything faster, the last anything
#: slower (10 us x 2**28 is about 45 minutes, past any invocation timeout). Four buckets per octave
#: put a percentile within 9 % of the truth; each minute's min and max clamp the two ends.
LATENCY_LOWEST_SECONDS = 10e-6
LATENCY_BUCKETS_PER_OCTAVE = 4
LATENCY_BUCKETS = 28 * LATENCY_BUCKETS_PER_OCTAVE
# The upper bounds of every bucket but the last: a bisection finds a latency's bucket in C.
_BUCKET_BOUNDS = tuple(
    LATENCY_LOWEST_SECONDS * math.exp2((index + 1) / LATENCY_BUCKETS_PER_OCTAVE)
    for index in range(LATENCY_BUCKETS - 1)
)

_NO_MINUTE = -1


def latency_bucket(seconds: float) -> int:
    """The histogram bucket that counts a latency of `seconds`."""
    return bisect_right(_BUCKET_BOUNDS, seconds)


def bucket_midpoint(index: int) -> float:
    """The geometric middle of bucket `index`: the estimate for a percentile that falls in it."""
    return LATENCY_LOWEST_SECONDS * math.exp2((index + 0.5) / LATENCY_BUCKETS_PER_OCTAVE)


def latency_percentiles(
    histogram: Sequence[int], quantiles: Sequence[float], lowest: float, highest: float
) -> list[float] | None:
    """The `quantiles` (each 0..1) of the latencies counted in `histogram`, in seconds.

    Args:
        histogram: counts per bucket (`LATENCY_BUCKETS` of them).
        quantiles: e.g. (0.5, 0.99) for the median and p99.
        lowest, highest: the fastest and slowest latency seen; the estimates stay between them.

    Returns:
        One estimate per quantile, or None when the histogram is empty.
    """
    cumulative = list(accumulate(histogram))
    total = cumulative[-1] if cumulative else 0
    if total == 0:
        return None
    estimates = []
    for quantile in quantiles:
        rank = max(1, math.ceil(quantile * total))
        estimate = bucket_midpoint(bisect_left(cumulative, rank))
        estimates.append(min(max(estimate, lowest), highest))
    return estimates


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    """One minute of one variant, copied out of its ring.

    Attributes:
        minute: minutes since the epoch (UTC).
        invocations: requests routed to the variant.
        errors_4xx, errors_5xx: the model answered with a 4xx or 5xx status.
        model_errors: every non-2xx answer, timeout or broken connection.
        latency: a copy of the latency histogram, or None when no latency was recorded.
        latency_min, latency_max: the fastest and slowest latency (0 without a histogram).
        invocations_per_instance: the sum of 1 / healthy instances over the minute's requests
            (CloudWatch's InvocationsPerInstance).
        latency_sum: the sum of the model latencies counted in `latency`, in seconds.
        overhead, overhead_sum, overhead_min, overhead_max: the same for the gateway's own share
            of answered requests (CloudWatch's OverheadLatency).
    """

    minute: int
    invocations: int
    errors_4xx: int
    errors_5xx: int
    model_errors: int
    latency: Sequence[int] | None
    latency_min: float
    latency_max: float
    invocations_per_instance: float = 0.0
    latency_sum: float = 0.0
    overhead: Sequence[int] | None = None
    overhead_sum: float = 0.0
    overhead_min: float = 0.0
    overhead_max: float = 0.0


class VariantMinutes:
    """The per-minute ring of one variant: fixed size, written on the request path.

    One event loop writes it; nothing here locks. Slot `minute % slots` holds `minute` until the
    ring comes round to it again, so the ring always holds the newest `slots` minutes.
    """

    __slots__ = (
        "_clock",
        "_current",
        "_errors_4xx",
        "_errors_5xx",
        "_first_minute",
        "_invocations",
        "_latency",
        "_latency_max",
        "_latency_min",
        "_latency_sum",
        "_minutes",
        "_model_errors",
        "_overhead",
        "_overhead_max",
        "_overhead_min",
        "_overhead_sum",
        "_per_instance",
        "_size",
        "_slot",
    )

    def __init__(self, slots: int, clock: Callable[[], float] = time.time) -> None:
        """A ring of `slots` minutes; `clock` gives wall-clock seconds (tests pass a fake)."""
        if slots < 1:
            raise ValueError("a minute ring needs at least one slot")
        self._clock = clock
        self._size = slots
        self._minutes = array("q", [_NO_MINUTE]) * slots
        self._invocations = array("Q", bytes(8 * slots))
        self._errors_4xx = array("Q", bytes(8 * slots))
        self._errors_5xx = array("Q", bytes(8 * slots))
        self._model_errors = array("Q", bytes(8 * slots))
        self._latency: list[array[int] | None] = [None] * slots
        self._latency_min = array("d", bytes(8 * slots))
        self._latency_max = array("d", bytes(8 * slots))
        self._latency_sum = array("d", bytes(8 * slots))
        self._per_instance = array("d", bytes(8 * slots))
        self._overhead: list[array[int] | None] = [None] * slots
        self._overhead_sum = array("d", bytes(8 * slots))
        self._overhead_min = array("d", bytes(8 * slots))
        self._overhead_max = array("d", bytes(8 * slots))
        # The current minute as the float the clock gives, so the request path converts nothing.
        self._current = float(_NO_MINUTE)
        self._slot = 0
        self._advance(clock() // 60)
        self._first_minute = int(self._current)

    @property
    def first_minute(self) -> int:
        """The minute the ring was made: its variant's first deployment (`splitserve stats`
        starts there rather than with empty rows before the endpoint existed)."""
        return self._first_minute

    @property
    def newest_minute(self) -> int:
        """The minute of the newest invocation (or of the ring's creation, before any)."""
        return int(self._current)

    def count_invocation(self, instance_share: float = 1.0) -> None:
        """One request was routed to the variant now; `instance_share` is 1 / its healthy
        instances (what the request adds to InvocationsPerInstance)."""
        minute = self._clock() // 60
        if minute != self._current:
            self._advance(minute)
        self._invocations[self._slot] += 1
        self._per_instance[self._slot] += instance_share

    def observe_latency(self, seconds: float) -> None:
        """The model answered a request after `seconds`."""
        slot = self._slot
        histogram = self._latency[slot]
        if histogram is None:
            histogram = self._latency[slot] = array("Q", bytes(8 * LATENCY_BUCKETS))
            self._latency_min[slot] = seconds
            self._latency_max[slot] = seconds
        elif seconds < self._latency_min[slot]:
            self._latency_min[slot] = seconds
        elif seconds > self._latency_max[slot]:
            self._latency_max[slot] = seconds
        self._latency_sum[slot] += seconds
        histogram[bisect_right(_BUCKET_BOUNDS, seconds)] += 1

    def observe_overhead(self, seconds: float) -> None:
        """The gateway's own share of an answered request took `seconds`."""
        slot = self._slot
        histogram = self._overhead[slot]
        if histogram is None:
            histogram = self._overhead[slot] = array("Q", bytes(8 * LATENCY_BUCKETS))
            self._overhead_min[slot] = seconds
            self._overhead_max[slot] = seconds
        elif seconds < self._overhead_min[slot]:
            self._overhead_min[slot] = seconds
        elif seconds > self._overhead_max[slot]:
            self._overhead_max[slot] = seconds
        self._overhead_sum[slot] += seconds
        histogram[bisect_right(_BUCKET_BOUNDS, seconds)] += 1

    def observe_answer(self, model_seconds: float, overhead_seconds: float) -> None:
        """The model answered a request after `model_seconds`, and the gateway's own share of it
        took `overhead_seconds`: `observe_latency` and `observe_overhead` in one call, as an
        answered request records both (one call fewer on the request path)."""
        slot = self._slot
        histogram = self._latency[slot]
        if histogram is None:
            histogram = self._latency[slot] = array("Q", bytes(8 * LATENCY_BUCKETS))
            self._latency_min[slot] = model_seconds
            self._latency_max[slot] = model_seconds
        elif model_seconds < self._latency_min[slot]:
            self._latency_min[slot] = model_seconds
        elif model_seconds > self._latency_max[slot]:
            self._latency_max[slot] = model_seconds
        self._latency_sum[slot] += model_seconds
        histogram[bisect_right(_BUCKET_BOUNDS, model_seconds)] += 1
        histogram = self._overhead[slot]
        if histogram is None:
            histogram = self._overhead[slot] = array("Q", bytes(8 * LATENCY_BUCKETS))
            self._overhead_min[slot] = overhead_seconds
            self._overhead_max[slot] = overhead_seconds
        elif overhead_seconds < self._overhead_min[slot]:
            self._overhead_min[slot] = overhead_seconds
        elif overhead_seconds > self._overhead_max[slot]:
            self._overhead_max[slot] = overhead_seconds
        self._overhead_sum[slot] += overhead_seconds
        histogram[bisect_right(_BUCKET_BOUNDS, overhead_seconds)] += 1

    def count_model_error(self, status: int) -> None:
        """The model answered with non-2xx `status`, or not at all (`status` 0)."""
        slot = self._slot
        self._model_errors[slot] += 1
        if status >= 500:
            self._errors_5xx[slot] += 1
        elif status >= 400:
            self._errors_4xx[slot] += 1

    def minutes(self, first: int, last: int) -> Iterator[MinuteCounts]:
        """The recorded minutes from `first` to `last` (inclusive) that the ring still holds."""
        size = self._size
        for minute in range(max(first, last - size + 1), last + 1):
            slot = minute % size
            if self._minutes[slot] != minute:
                continue
            histogram = self._latency[slot]
            overhead = self._overhead[slot]
            yield MinuteCounts(
                minute=minute,
                invocations=self._invocations[slot],
                errors_4xx=self._errors_4xx[slot],
                errors_5xx=self._errors_5xx[slot],
                model_errors=self._model_errors[slot],
                latency=None if histogram is None else histogram[:],
                latency_min=self._latency_min[slot],
                latency_max=self._latency_max[slot],
                invocations_per_instance=self._per_instance[slot],
                latency_sum=self._latency_sum[slot],
                overhead=None if overhead is None else overhead[:],
                overhead_sum=self._overhead_sum[slot],
                overhead_min=self._overhead_min[slot],
                overhead_max=self._overhead_max[slot],
            )

    def _advance(self, clock_minute: float) -> None:
        """Make `clock_minute` the current slot, clearing what the slot held of an older minute."""
        minute = int(clock_minute)
        slot = minute % self._size
        if self._minutes[slot] != minute:
            self._minutes[slot] = minute
            self._invocations[slot] = 0
            self._errors_4xx[slot] = 0
            self._errors_5xx[slot] = 0
            self._model_errors[slot] = 0
            self._latency[slot] = None
            self._latency_min[slot] = 0.0
            self._latency_max[slot] = 0.0
            self._latency_sum[slot] = 0.0
            self._per_instance[slot] = 0.0
            self._overhead[slot] = None
            self._overhead_sum[slot] = 0.0
            self._overhead_min[slot] = 0.0
            self._overhead_max[slot] = 0.0
        self._current = clock_minute
        self._slot = slot


_P50_P99 = (0.5, 0.99)


class _PeriodTotals:
    """Sums one variant's minutes over a period."""

    __slots__ = ("errors_4xx", "errors_5xx", "highest", "invocations", "latency", "lowest", "model")

    def __init__(self) -> None:
        self.invocations = 0
        self.errors_4xx = 0
        self.errors_5xx = 0
        self.model = 0
        self.latency: Sequence[int] | None = None
        self.lowest = math.inf
        self.highest = 0.0

    def add(self, counts: MinuteCounts) -> None:
        self.invocations += counts.invocations
        self.errors_4xx += counts.errors_4xx
        self.errors_5xx += counts.errors_5xx
        self.model += counts.model_errors
        if counts.latency is not None:
            if self.latency is None:
                self.latency = counts.latency
            else:
                self.latency = list(map(add, self.latency, counts.latency))
            self.lowest = min(self.lowest, counts.latency_min)
            self.highest = max(self.highest, counts.latency_max)

    def cell(self) -> VariantPeriod | None:
        if not (self.invocations or self.model or self.latency):
            return None
        p50 = p99 = None
        if self.latency is not None:
            percentiles = latency_percentiles(self.latency, _P50_P99, self.lowest, self.highest)
            if percentiles is not None:
                p50, p99 = percentiles
        return VariantPeriod(
            self.invocations, self.errors_4xx, self.errors_5xx, self.model, p50, p99
        )


class MinuteStore:
    """Every variant's minute ring, by endpoint; the gateway keeps one (the deployer owns it).

    The deployer takes a variant's ring when it deploys the variant (it goes into the variant's
    `VariantMetrics`), retires it when no generation of the endpoint has the variant any more (its
    history stays until it is older than the retention), and forgets the endpoint when it is
    deleted.
    """

    def __init__(self, settings: StatsSettings, clock: Callable[[], float] = time.time) -> None:
        """A store keeping `settings.retention_minutes`; `clock` gives wall-clock seconds."""
        self._retention = settings.retention_minutes
        self._clock = clock
        self._endpoints: dict[str, dict[str, VariantMinutes]] = {}
        self._retired: set[tuple[str, str]] = set()

    @property
    def retention_minutes(self) -> int:
        """How many whole minutes back a report can reach."""
        return self._retention

    def variant(self, endpoint_name: str, variant_name: str) -> VariantMinutes:
        """The ring of a variant being deployed: its existing one (history kept), or a new one."""
        rings = self._endpoints.setdefault(endpoint_name, {})
        self._retired.discard((endpoint_name, variant_name))
        self._prune(endpoint_name, rings)
        ring = rings.get(variant_name)
        if ring is None:
            ring = rings[variant_name] = VariantMinutes(self._retention + 1, self._clock)
        return ring

    def variants(self) -> list[tuple[str, str, VariantMinutes]]:
        """Every (endpoint, variant, ring) the store holds, retired variants' included."""
        return [
            (endpoint_name, variant_name, ring)
            for endpoint_name, rings in self._endpoints.items()
            for variant_name, ring in rings.items()
        ]

    def retire(self, endpoint_name: str, variant_name: str) -> None:
        """No generation of the endpoint has the variant any more; keep its history a while."""
        if variant_name in self._endpoints.get(endpoint_name, {}):
            self._retired.add((endpoint_name, variant_name))

    def forget(self, endpoint_name: str) -> None:
        """The endpoint was deleted: drop its history."""
        for variant_name in self._endpoints.pop(endpoint_name, {}):
            self._retired.discard((endpoint_name, variant_name))

    def window(self, since_seconds: int, period_seconds: int) -> tuple[int, int]:
        """The minutes (first, last; inclusive) a report over `since_seconds` in periods of
        `period_seconds` can show, the last being the current one: what to read of the other
        replicas' stored minutes for `report`.

        Raises:
            ValidationException: a window or period out of range.
        """
        self._check_window(since_seconds, period_seconds)
        now_minute = int(self._clock() // 60)
        period_minutes = period_seconds // 60
        rows = math.ceil(math.ceil(since_seconds / 60) / period_minutes)
        return (now_minute // period_minutes - rows + 1) * period_minutes, now_minute

    def report(
        self,
        endpoint_name: str,
        since_seconds: int,
        period_seconds: int,
        others: Mapping[str, Iterable[MinuteCounts]] | None = None,
    ) -> StatsReport:
        """The endpoint's numbers per period over the last `since_seconds`, oldest period first.

        The window holds ceil(since / period) whole periods aligned on the epoch (as CloudWatch
        aligns its periods), the last of them the current one; it starts no earlier than the
        period in which the endpoint's first variant was deployed (its first minute with data or
        its creation), so a new endpoint's report has no empty rows before it existed.

        `others` (variant -> minutes) are the other gateway replicas' minutes of the endpoint, as
        they stored them: each is added to this process's own, so the report is the sum over
        every replica. A variant only they have is a column when it has data in the window.

        Raises:
            ValidationException: unknown endpoint, or a window or period out of range.
        """
        self._check_window(since_seconds, period_seconds)
        others = others or {}
        other_minutes = {variant_name: list(minutes) for variant_name, minutes in others.items()}
        rings = self._endpoints.get(endpoint_name)
        if rings is None and not any(other_minutes.values()):
            raise ValidationException(
                f"Endpoint {endpoint_name} has no statistics: it does not exist or has not "
                "started yet."
            )
        rings = rings or {}
        now_minute = int(self._clock() // 60)
        period_minutes = period_seconds // 60
        rows = math.ceil(math.ceil(since_seconds / 60) / period_minutes)
        last_period = now_minute // period_minutes
        # No rows before the endpoint's first variant was deployed (in this replica or, by its
        # first stored minute, in another): they could only be empty.
        born = min(
            [
                *(ring.first_minute for ring in rings.values()),
                *(counts.minute for minutes in other_minutes.values() for counts in minutes),
            ],
            default=now_minute,
        )
        rows = min(rows, last_period - born // period_minutes + 1)
        first_period = last_period - rows + 1
        first_minute = first_period * period_minutes
        columns: list[str] = []
        cells: list[dict[str, VariantPeriod]] = [{} for _ in range(rows)]
        for variant_name in [*rings, *(name for name in other_minutes if name not in rings)]:
            ring = rings.get(variant_name)
            totals: dict[int, _PeriodTotals] = {}
            minutes = [] if ring is None else list(ring.minutes(first_minute, now_minute))
            for counts in [*minutes, *other_minutes.get(variant_name, ())]:
                if not first_minute <= counts.minute <= now_minute:
                    continue
                row = counts.minute // period_minutes - first_period
                totals.setdefault(row, _PeriodTotals()).add(counts)
            has_data = False
            for row, total in sorted(totals.items()):
                cell = total.cell()
                if cell is not None:
                    cells[row][variant_name] = cell
                    has_data = True
            retired = ring is None or (endpoint_name, variant_name) in self._retired
            if has_data or not retired:
                columns.append(variant_name)
        return StatsReport(
            endpoint_name=endpoint_name,
            period_seconds=period_seconds,
            start=first_minute * 60,
            end=(last_period + 1) * period_seconds,
            variants=tuple(columns),
            periods=tuple(
                StatsPeriod((first_period + row) * period_seconds, cells[row])
                for row in range(rows)
            ),
        )

    def _check_window(self, since_seconds: int, period_seconds: int) -> None:
        limit = self._retention * 60
        if not 0 < since_seconds <= limit:
            raise ValidationException(
                f"since must be between 1 and {limit} seconds (the retention); got {since_seconds}."
            )
        if period_seconds < 60 or period_seconds % 60 or period_seconds > limit:
            raise ValidationException(
                f"per must be a whole number of minutes from 60 to {limit} seconds; "
                f"got {period_seconds}."
            )

    def _prune(self, endpoint_name: str, rings: dict[str, VariantMinutes]) -> None:
        """Drop retired rings whose newest minute is past the retention: they show nothing."""
        oldest = int(self._clock() // 60) - self._retention
        for variant_name in [name for name, ring in rings.items() if ring.newest_minute < oldest]:
            if (endpoint_name, variant_name) in self._retired:
                del rings[variant_name]
                self._retired.discard((endpoint_name, variant_name))
