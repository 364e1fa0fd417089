"""The figures of this gateway process: its variants' minute rings and samples of its instances.

The rings (`splitserve.metrics.minutes`) hold the `AWS/SageMaker` figures as the requests are
counted; `/aws/sagemaker/Endpoints` needs the instances' CPU and memory, which nothing records
between Prometheus scrapes, so `LiveFigures.sample_instances` reads them (from /proc) every flush
interval and keeps each variant's samples per minute, for as long as the rings keep minutes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence

from splitserve.cloudwatch.figures import (
    Aggregate,
    aggregates_of_minute,
    instance_aggregate,
    minute_counts,
)
from splitserve.cloudwatch.store import CloudWatchStore, StoredMinute
from splitserve.metrics.minutes import MinuteCounts, MinuteStore
from splitserve.metrics.procstat import CpuSampler
from splitserve.metrics.prometheus import InstanceSource

__all__ = ["LiveFigures", "MemoryReader", "MinuteFigures", "SeriesFigures", "StoredReader"]

#: One minute of one variant: metric name -> aggregate (both namespaces: the names differ).
MinuteFigures = dict[str, Aggregate]
#: (endpoint, variant) -> minute -> figures.
SeriesFigures = dict[tuple[str, str], dict[int, MinuteFigures]]

_ENDPOINT_METRICS = ("CPUUtilization", "MemoryUtilization")


def _total_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


class LiveFigures:
    """Reads this process's figures; one event loop calls it (the gateway's)."""

    def __init__(
        self,
        minutes: MinuteStore,
        instances: InstanceSource | None,
        sampler: CpuSampler,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Figures from `minutes` (the deployer's rings) and `instances` (its fleets, sampled
        with `sampler`); `clock` gives wall-clock seconds."""
        self._minutes = minutes
        self._instances = instances
        self._sampler = sampler
        self._clock = clock
        self._memory_bytes = _total_memory_bytes()
        # (endpoint, variant) -> minute -> (cpu samples, memory samples)
        self._samples: dict[tuple[str, str], dict[int, tuple[list[float], list[float]]]] = {}

    @property
    def retention_minutes(self) -> int:
        """How far back the rings reach."""
        return self._minutes.retention_minutes

    def sample_instances(self) -> None:
        """Record the CPU and memory use of every live instance now, under its variant."""
        if self._instances is None:
            return
        minute = int(self._clock() // 60)
        sampled: list[str] = []
        for key, infos in self._instances.live_instances().items():
            for info in infos:
                if info.pid is None:
                    continue
                sampled.append(info.name)
                usage = self._sampler.sample(info.name, info.pid)
                if usage is None:
                    continue
                cpu, memory = self._samples.setdefault(key, {}).setdefault(minute, ([], []))
                cpu.append(usage.cpu_percent)
                if self._memory_bytes:
                    memory.append(100.0 * usage.memory_bytes / self._memory_bytes)
        self._sampler.keep(sampled)
        oldest = minute - self.retention_minutes
        for key in list(self._samples):
            by_minute = self._samples[key]
            for old in [past for past in by_minute if past < oldest]:
                del by_minute[old]
            if not by_minute:
                del self._samples[key]

    def series(self) -> Iterator[tuple[str, str, str, int]]:
        """Every (endpoint, variant, metric, newest minute with a sample) this process holds."""
        newest: dict[tuple[str, str, str], int] = {}
        for endpoint_name, variant_name, ring in self._minutes.variants():
            last = ring.newest_minute
            for counts in ring.minutes(last - self.retention_minutes, last):
                for metric_name, _ in aggregates_of_minute(counts):
                    newest[(endpoint_name, variant_name, metric_name)] = counts.minute
        for (endpoint_name, variant_name), by_minute in self._samples.items():
            for minute, samples in sorted(by_minute.items()):
                for metric_name, taken in zip(_ENDPOINT_METRICS, samples, strict=True):
                    if taken:
                        newest[(endpoint_name, variant_name, metric_name)] = minute
        for (endpoint_name, variant_name, metric_name), minute in newest.items():
            yield endpoint_name, variant_name, metric_name, minute

    def read(self, first: int, last: int) -> SeriesFigures:
        """The figures of minutes `first` to `last` (inclusive), copied out now."""
        result: SeriesFigures = {}
        for endpoint_name, variant_name, ring in self._minutes.variants():
            by_minute = result.setdefault((endpoint_name, variant_name), {})
            for counts in ring.minutes(first, last):
                figures = dict(aggregates_of_minute(counts))
                if figures:
                    by_minute[counts.minute] = figures
        for key, samples in self._samples.items():
            for minute, (cpu, memory) in samples.items():
                if first <= minute <= last:
                    figures = result.setdefault(key, {}).setdefault(minute, {})
                    figures.update(_instance_figures(cpu, memory))
        return result


def _instance_figures(cpu: Sequence[float], memory: Sequence[float]) -> Mapping[str, Aggregate]:
    figures: dict[str, Aggregate] = {}
    for name, samples in zip(_ENDPOINT_METRICS, (cpu, memory), strict=True):
        if samples:
            figures[name] = instance_aggregate(samples)
    return figures


class MemoryReader:
    """A `queries.FigureReader` over this process's figures only (no state store)."""

    def __init__(self, live: LiveFigures) -> None:
        """A reader of `live`."""
        self._live = live

    async def read(
        self, keys: Collection[tuple[str, str]] | None, first: int, last: int
    ) -> SeriesFigures:
        """The figures of minutes `first` to `last` of the variants `keys` (None: all)."""
        figures = self._live.read(first, last)
        if keys is None:
            return figures
        return {key: figures[key] for key in keys if key in figures}

    async def series(self) -> list[tuple[str, str, str, int]]:
        """Every (endpoint, variant, metric, newest minute) with a sample."""
        return list(self._live.series())


class StoredReader:
    """A `queries.FigureReader` over this process's figures and the state store's: what other
    gateway processes (and this one before a restart) wrote, summed with what is in memory.

    The rings hold the newest minutes of this process; the minutes they no longer hold come from
    the rows it flushed (`flush`), so nothing is counted twice.
    """

    def __init__(
        self,
        live: LiveFigures,
        store: CloudWatchStore,
        source: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """A reader of `live` and `store`; `source` names this process's rows."""
        self._live = live
        self._store = store
        self._source = source
        self._clock = clock
        self._flushed_from: int | None = None

    async def read(
        self, keys: Collection[tuple[str, str]] | None, first: int, last: int
    ) -> SeriesFigures:
        """The figures of minutes `first` to `last` of the variants `keys` (None: all)."""
        figures = await MemoryReader(self._live).read(keys, first, last)
        rows = await asyncio.to_thread(
            self._store.read_minutes, first, last, keys, self._source, own=False
        )
        # This process's own rows count where memory no longer has the minute (older than the
        # rings reach, or a variant since deleted): memory is the fresher copy of what it holds.
        own = await asyncio.to_thread(
            self._store.read_minutes, first, last, keys, self._source, own=True
        )
        rows += [
            row for row in own if row.minute not in figures.get((row.endpoint, row.variant), {})
        ]
        for row in rows:
            by_metric = figures.setdefault((row.endpoint, row.variant), {}).setdefault(
                row.minute, {}
            )
            for metric_name, aggregate in _decoded(row.figures).items():
                previous = by_metric.get(metric_name)
                by_metric[metric_name] = aggregate if previous is None else previous + aggregate
        return figures

    async def other_minutes(
        self, endpoint_name: str, first: int, last: int
    ) -> dict[str, list[MinuteCounts]]:
        """The per-minute counts of one endpoint that every other source stored for minutes
        `first` to `last`, by variant: the other gateway replicas' (and this replica's earlier
        runs') share of `splitserve stats`, which `MinuteStore.report` adds to its own rings."""
        rows = await asyncio.to_thread(
            self._store.read_minutes, first, last, None, self._source, own=False
        )
        by_variant: dict[str, list[MinuteCounts]] = {}
        for row in rows:
            if row.endpoint != endpoint_name:
                continue
            figures = _decoded(row.figures)
            if figures:
                by_variant.setdefault(row.variant, []).append(minute_counts(row.minute, figures))
        return by_variant

    async def series(self) -> list[tuple[str, str, str, int]]:
        """Every (endpoint, variant, metric, newest minute) with a sample, in memory or stored."""
        newest: dict[tuple[str, str, str], int] = {}
        stored = await asyncio.to_thread(self._store.series)
        for endpoint_name, variant_name, metric_name, minute in [*stored, *self._live.series()]:
            key = (endpoint_name, variant_name, metric_name)
            newest[key] = max(newest.get(key, minute), minute)
        return [(*key, minute) for key, minute in newest.items()]

    async def flush(self, retention_minutes: int) -> None:
        """Write this process's figures since the last flush (the minute before it included:
        it may have changed since) and drop stored figures older than `retention_minutes`."""
        now_minute = int(self._clock() // 60)
        first = (
            now_minute - self._live.retention_minutes
            if self._flushed_from is None
            else self._flushed_from
        )
        minutes = [
            StoredMinute(
                endpoint_name,
                variant_name,
                minute,
                {name: aggregate.to_json() for name, aggregate in figures.items()},
            )
            for (endpoint_name, variant_name), by_minute in self._live.read(
                first, now_minute
            ).items()
            for minute, figures in by_minute.items()
        ]
        await asyncio.to_thread(
            self._store.write_minutes, self._source, minutes, now_minute - retention_minutes
        )
        self._flushed_from = now_minute - 1


def _decoded(figures: Mapping[str, object]) -> dict[str, Aggregate]:
    """A stored minute's figures (metric -> aggregate JSON) as aggregates; a damaged figure is
    left out, as a missing sample."""
    decoded = {}
    for metric_name, body in figures.items():
        if not isinstance(body, dict):
            continue
        try:
            decoded[metric_name] = Aggregate.from_json(body)
        except (ValueError, TypeError, KeyError, IndexError):
            continue
    return decoded
