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

No aiohttp here: the gateway's GET /splitserve/stats/{endpoint} serialises `MinuteStore.report`,
and the `splitserve stats` command renders that JSON with `render_table`.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from operator import add
from typing import Any

from splitserve.config import StatsSettings
from splitserve.errors import ValidationException

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
    """

    minute: int
    invocations: int
    errors_4xx: int
    errors_5xx: int
    model_errors: int
    latency: Sequence[int] | None
    latency_min: float
    latency_max: float


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
        "_invocations",
        "_latency",
        "_latency_max",
        "_latency_min",
        "_minutes",
        "_model_errors",
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
        # The current minute as the float the clock gives, so the request path converts nothing.
        self._current = float(_NO_MINUTE)
        self._slot = 0
        self._advance(clock() // 60)

    @property
    def newest_minute(self) -> int:
        """The minute of the newest invocation (or of the ring's creation, before any)."""
        return int(self._current)

    def count_invocation(self) -> None:
        """One request was routed to the variant now."""
        minute = self._clock() // 60
        if minute != self._current:
            self._advance(minute)
        self._invocations[self._slot] += 1

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
        histogram[bisect_right(_BUCKET_BOUNDS, seconds)] += 1

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
            yield MinuteCounts(
                minute=minute,
                invocations=self._invocations[slot],
                errors_4xx=self._errors_4xx[slot],
                errors_5xx=self._errors_5xx[slot],
                model_errors=self._model_errors[slot],
                latency=None if histogram is None else histogram[:],
                latency_min=self._latency_min[slot],
                latency_max=self._latency_max[slot],
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
        self._current = clock_minute
        self._slot = slot


@dataclass(frozen=True)
class VariantPeriod:
    """One variant's numbers over one period (a row's cell)."""

    invocations: int
    errors_4xx: int
    errors_5xx: int
    model_errors: int
    latency_p50_seconds: float | None = None
    latency_p99_seconds: float | None = None

    def to_json(self) -> dict[str, object]:
        """The cell as the stats route sends it (CloudWatch's metric names)."""
        cell: dict[str, object] = {
            "Invocations": self.invocations,
            "Invocation4XXErrors": self.errors_4xx,
            "Invocation5XXErrors": self.errors_5xx,
            "InvocationModelErrors": self.model_errors,
        }
        if self.latency_p50_seconds is not None:
            cell["ModelLatencyP50Seconds"] = self.latency_p50_seconds
        if self.latency_p99_seconds is not None:
            cell["ModelLatencyP99Seconds"] = self.latency_p99_seconds
        return cell

    @classmethod
    def from_json(cls, cell: Mapping[str, Any]) -> VariantPeriod:
        """The cell `to_json` made."""
        p50 = cell.get("ModelLatencyP50Seconds")
        p99 = cell.get("ModelLatencyP99Seconds")
        return cls(
            invocations=int(cell["Invocations"]),
            errors_4xx=int(cell["Invocation4XXErrors"]),
            errors_5xx=int(cell["Invocation5XXErrors"]),
            model_errors=int(cell["InvocationModelErrors"]),
            latency_p50_seconds=None if p50 is None else float(p50),
            latency_p99_seconds=None if p99 is None else float(p99),
        )


@dataclass(frozen=True)
class StatsPeriod:
    """One row: a period's start (epoch seconds, UTC) and the variants that had traffic in it."""

    start: int
    variants: Mapping[str, VariantPeriod]


@dataclass(frozen=True)
class StatsReport:
    """The table `splitserve stats` prints: periods of `period_seconds`, oldest first.

    Attributes:
        endpoint_name: the endpoint.
        period_seconds: the length of a row (a whole number of minutes).
        start, end: the window, epoch seconds; the last period is the current, unfinished one.
        variants: the columns: the endpoint's variants, then retired ones with traffic in the
            window, in the order they were deployed.
        periods: every period of the window, with or without traffic.
    """

    endpoint_name: str
    period_seconds: int
    start: int
    end: int
    variants: tuple[str, ...]
    periods: tuple[StatsPeriod, ...]

    def to_json(self) -> dict[str, object]:
        """The report as GET /splitserve/stats/{endpoint} sends it."""
        return {
            "EndpointName": self.endpoint_name,
            "PeriodSeconds": self.period_seconds,
            "StartTime": self.start,
            "EndTime": self.end,
            "Variants": list(self.variants),
            "Periods": [
                {
                    "StartTime": period.start,
                    "Variants": {name: cell.to_json() for name, cell in period.variants.items()},
                }
                for period in self.periods
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StatsReport:
        """The report `to_json` made (what `splitserve stats` reads from the gateway).

        Raises:
            KeyError, TypeError, ValueError: `data` is not such a report.
        """
        return cls(
            endpoint_name=str(data["EndpointName"]),
            period_seconds=int(data["PeriodSeconds"]),
            start=int(data["StartTime"]),
            end=int(data["EndTime"]),
            variants=tuple(str(name) for name in data["Variants"]),
            periods=tuple(
                StatsPeriod(
                    start=int(period["StartTime"]),
                    variants={
                        str(name): VariantPeriod.from_json(cell)
                        for name, cell in period["Variants"].items()
                    },
                )
                for period in data["Periods"]
            ),
        )


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

    def retire(self, endpoint_name: str, variant_name: str) -> None:
        """No generation of the endpoint has the variant any more; keep its history a while."""
        if variant_name in self._endpoints.get(endpoint_name, {}):
            self._retired.add((endpoint_name, variant_name))

    def forget(self, endpoint_name: str) -> None:
        """The endpoint was deleted: drop its history."""
        for variant_name in self._endpoints.pop(endpoint_name, {}):
            self._retired.discard((endpoint_name, variant_name))

    def report(self, endpoint_name: str, since_seconds: int, period_seconds: int) -> StatsReport:
        """The endpoint's numbers per period over the last `since_seconds`, oldest period first.

        The window holds ceil(since / period) whole periods aligned on the epoch (as CloudWatch
        aligns its periods), the last of them the current one.

        Raises:
            ValidationException: unknown endpoint, or a window or period out of range.
        """
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
        rings = self._endpoints.get(endpoint_name)
        if rings is None:
            raise ValidationException(
                f"Endpoint {endpoint_name} has no statistics: it does not exist or has not "
                "started yet."
            )
        now_minute = int(self._clock() // 60)
        period_minutes = period_seconds // 60
        rows = math.ceil(math.ceil(since_seconds / 60) / period_minutes)
        last_period = now_minute // period_minutes
        first_period = last_period - rows + 1
        first_minute = first_period * period_minutes
        columns: list[str] = []
        cells: list[dict[str, VariantPeriod]] = [{} for _ in range(rows)]
        for variant_name, ring in rings.items():
            totals: dict[int, _PeriodTotals] = {}
            for counts in ring.minutes(first_minute, now_minute):
                row = counts.minute // period_minutes - first_period
                totals.setdefault(row, _PeriodTotals()).add(counts)
            has_data = False
            for row, total in sorted(totals.items()):
                cell = total.cell()
                if cell is not None:
                    cells[row][variant_name] = cell
                    has_data = True
            if has_data or (endpoint_name, variant_name) not in self._retired:
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

    def _prune(self, endpoint_name: str, rings: dict[str, VariantMinutes]) -> None:
        """Drop retired rings whose newest minute is past the retention: they show nothing."""
        oldest = int(self._clock() // 60) - self._retention
        for variant_name in [name for name, ring in rings.items() if ring.newest_minute < oldest]:
            if (endpoint_name, variant_name) in self._retired:
                del rings[variant_name]
                self._retired.discard((endpoint_name, variant_name))


# --- the `splitserve stats` table ---------------------------------------------------------------


def format_duration(seconds: int) -> str:
    """`seconds` in the largest unit that divides it: 60 -> "1m", 5400 -> "90m", 86400 -> "1d"."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _milliseconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    value = seconds * 1000
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def render_table(report: StatsReport, *, errors: bool = False, latency: bool = False) -> str:
    """The report as a text table: one row per period, a column (group) per variant.

    Invocation counts are blank where a variant had none. With `errors`, each variant also gets
    4xx, 5xx and model-error counts; with `latency`, its p50 and p99 model latency in ms.
    """
    labels = ["invocations"]
    if errors:
        labels += ["4xx", "5xx", "model errors"]
    if latency:
        labels += ["p50 ms", "p99 ms"]
    time_format = "%Y-%m-%d %H:%M" if report.period_seconds < 86400 else "%Y-%m-%d"
    time_column = [
        datetime.fromtimestamp(period.start, UTC).strftime(time_format) for period in report.periods
    ]
    groups: list[tuple[str, list[tuple[str, list[str]]]]] = []
    for variant in report.variants:
        columns: list[tuple[str, list[str]]] = [(label, []) for label in labels]
        for period in report.periods:
            cell = period.variants.get(variant)
            values = [""] * len(labels)
            if cell is not None:
                values[0] = str(cell.invocations) if cell.invocations else ""
                if errors:
                    values[1:4] = [
                        str(cell.errors_4xx),
                        str(cell.errors_5xx),
                        str(cell.model_errors),
                    ]
                if latency:
                    values[-2:] = [
                        _milliseconds(cell.latency_p50_seconds),
                        _milliseconds(cell.latency_p99_seconds),
                    ]
            for (_, column), value in zip(columns, values, strict=True):
                column.append(value)
        groups.append((variant, columns))

    time_header = "time (UTC)"
    time_width = max([len(time_header), *map(len, time_column)])
    grouped = len(labels) > 1
    # Grouped: a line of variant names over a line of column labels; else the names label columns.
    header_lines: list[list[str]] = [[time_header.ljust(time_width)]]
    if grouped:
        header_lines.insert(0, [" " * time_width])
    body_lines = [[value.ljust(time_width)] for value in time_column]
    for variant, variant_columns in groups:
        columns = variant_columns if grouped else [(variant, variant_columns[0][1])]
        widths = [max([len(label), *map(len, values)]) for label, values in columns]
        if grouped:
            group_width = sum(widths) + 2 * (len(widths) - 1)
            if len(variant) > group_width:
                widths[-1] += len(variant) - group_width
                group_width = len(variant)
            header_lines[0].append(variant.ljust(group_width))
        header_lines[-1].append(
            "  ".join(label.rjust(width) for (label, _), width in zip(columns, widths, strict=True))
        )
        for row, line in enumerate(body_lines):
            line.append(
                "  ".join(
                    values[row].rjust(width)
                    for (_, values), width in zip(columns, widths, strict=True)
                )
            )
    title = (
        f"Endpoint {report.endpoint_name}: per {format_duration(report.period_seconds)}, "
        f"{len(report.periods)} periods"
    )
    if not report.variants:
        title += " (no variants)"
    lines = [title] + ["   ".join(parts).rstrip() for parts in header_lines + body_lines]
    return "\n".join(lines) + "\n"


# --- the client side of `splitserve stats` ------------------------------------------------------


class StatsUnavailable(Exception):
    """The gateway could not be reached, or refused the request; the message says which."""


def fetch_report(
    gateway_url: str, endpoint_name: str, since_seconds: int, period_seconds: int, timeout: float
) -> StatsReport:
    """GET the endpoint's report from a running gateway at `gateway_url` (blocking).

    Raises:
        StatsUnavailable: no answer, an error answer (its Message), or not a report.
    """
    query = urllib.parse.urlencode({"since": since_seconds, "per": period_seconds})
    url = (
        f"{gateway_url.rstrip('/')}/splitserve/stats/"
        f"{urllib.parse.quote(endpoint_name, safe='')}?{query}"
    )
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as error:
        with error:
            try:
                message = str(json.load(error)["Message"])
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {error.code} {error.reason}"
        raise StatsUnavailable(message) from error
    except (OSError, ValueError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        raise StatsUnavailable(f"cannot reach the gateway at {gateway_url}: {reason}") from error
    try:
        return StatsReport.from_json(json.loads(raw))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise StatsUnavailable(f"{gateway_url} did not answer with a stats report") from error
