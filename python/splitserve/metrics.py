"""Every Prometheus metric splitserve exports, defined once.

Names follow Prometheus's guide (prefix `splitserve_`, base units, `_total` for counters); labels
are `endpoint_name` and `variant_name` as CloudWatch's EndpointName and VariantName, plus
`instance` for the instance metrics, which `InstanceCollector` reads from the live fleets when
Prometheus scrapes. Label values only ever come from validated resource names. The request path
records through `VariantMetrics`, whose label children are resolved once per variant, so a request
pays for no label lookup.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from splitserve.procstat import CpuSampler
from splitserve.stats import VariantMinutes

if TYPE_CHECKING:
    from splitserve.workers.supervisor import InstanceInfo

#: The registry GET /metrics serves. Its own, so tests and embedders see only splitserve's metrics.
REGISTRY = CollectorRegistry(auto_describe=True)

_VARIANT = ("endpoint_name", "variant_name")
_INSTANCE = (*_VARIANT, "instance")

# The gateway's own share is tens of microseconds; the model's is milliseconds to a minute.
OVERHEAD_BUCKETS = (
    10e-6, 20e-6, 30e-6, 50e-6, 75e-6, 100e-6, 150e-6, 200e-6, 300e-6, 500e-6, 750e-6,
    1e-3, 2e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0,
)  # fmt: skip
MODEL_BUCKETS = (
    100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

INVOCATIONS = Counter(
    "splitserve_invocations", "Requests routed to the variant.", _VARIANT, registry=REGISTRY
)
INVOCATIONS_PER_INSTANCE = Counter(
    "splitserve_invocations_per_instance",
    "Each request adds 1/healthy instances of its variant (CloudWatch's InvocationsPerInstance).",
    _VARIANT,
    registry=REGISTRY,
)
INVOCATION_4XX_ERRORS = Counter(
    "splitserve_invocation_4xx_errors",
    "Requests the model answered with a 4xx status.",
    _VARIANT,
    registry=REGISTRY,
)
INVOCATION_5XX_ERRORS = Counter(
    "splitserve_invocation_5xx_errors",
    "Requests the model answered with a 5xx status.",
    _VARIANT,
    registry=REGISTRY,
)
INVOCATION_MODEL_ERRORS = Counter(
    "splitserve_invocation_model_errors",
    "Requests the model did not answer with 2xx: error statuses, timeouts, broken connections.",
    _VARIANT,
    registry=REGISTRY,
)
GATEWAY_ERRORS = Counter(
    "splitserve_gateway_errors",
    "Requests refused before a variant was chosen, by wire error code.",
    ("code",),
    registry=REGISTRY,
)
MODEL_LATENCY = Histogram(
    "splitserve_model_latency_seconds",
    "Time from sending a request to the worker until its answer.",
    _VARIANT,
    buckets=MODEL_BUCKETS,
    registry=REGISTRY,
)
OVERHEAD_LATENCY = Histogram(
    "splitserve_overhead_latency_seconds",
    "The gateway's own share of a request: total time minus model latency.",
    _VARIANT,
    buckets=OVERHEAD_BUCKETS,
    registry=REGISTRY,
)
VARIANT_WEIGHT = Gauge(
    "splitserve_variant_weight", "The weight the router uses now.", _VARIANT, registry=REGISTRY
)
VARIANT_DESIRED_WEIGHT = Gauge(
    "splitserve_variant_desired_weight",
    "The weight last asked for.",
    _VARIANT,
    registry=REGISTRY,
)
VARIANT_INSTANCES = Gauge(
    "splitserve_variant_instances",
    "Healthy instances of the variant.",
    _VARIANT,
    registry=REGISTRY,
)
VARIANT_DESIRED_INSTANCES = Gauge(
    "splitserve_variant_desired_instances",
    "Instances asked for.",
    _VARIANT,
    registry=REGISTRY,
)
CAPTURE_DROPPED = Counter(
    "splitserve_capture_dropped",
    "Sampled data-capture records not written: queue full, disk over its limit, or write error.",
    _VARIANT,
    registry=REGISTRY,
)


@dataclass(frozen=True)
class VariantMetrics:
    """The label children of one variant, resolved once so the request path does no lookups.

    `minutes` is the variant's per-minute ring (`splitserve stats`), recorded alongside.
    """

    invocations: Counter
    invocations_per_instance: Counter
    errors_4xx: Counter
    errors_5xx: Counter
    model_errors: Counter
    model_latency: Histogram
    overhead_latency: Histogram
    minutes: VariantMinutes

    @classmethod
    def resolve(
        cls, endpoint_name: str, variant_name: str, minutes: VariantMinutes
    ) -> VariantMetrics:
        """Create (or find) every per-variant series, so each exists from the endpoint's start."""
        labels = (endpoint_name, variant_name)
        return cls(
            invocations=INVOCATIONS.labels(*labels),
            invocations_per_instance=INVOCATIONS_PER_INSTANCE.labels(*labels),
            errors_4xx=INVOCATION_4XX_ERRORS.labels(*labels),
            errors_5xx=INVOCATION_5XX_ERRORS.labels(*labels),
            model_errors=INVOCATION_MODEL_ERRORS.labels(*labels),
            model_latency=MODEL_LATENCY.labels(*labels),
            overhead_latency=OVERHEAD_LATENCY.labels(*labels),
            minutes=minutes,
        )


#: Every metric labelled by variant alone, and the variant gauges: what a variant that no longer
#: exists must leave (a new per-variant metric belongs in one of these two lists).
VARIANT_SERIES = (
    INVOCATIONS,
    INVOCATIONS_PER_INSTANCE,
    INVOCATION_4XX_ERRORS,
    INVOCATION_5XX_ERRORS,
    INVOCATION_MODEL_ERRORS,
    MODEL_LATENCY,
    OVERHEAD_LATENCY,
    CAPTURE_DROPPED,
)
VARIANT_GAUGES = (
    VARIANT_WEIGHT,
    VARIANT_DESIRED_WEIGHT,
    VARIANT_INSTANCES,
    VARIANT_DESIRED_INSTANCES,
)


def remove_variant_gauges(endpoint_name: str, variant_name: str) -> None:
    """Drop the variant's weight and instance gauges (it is no longer routed to)."""
    for gauge in VARIANT_GAUGES:
        gauge.remove(endpoint_name, variant_name)


def remove_variant_series(endpoint_name: str, variant_name: str) -> None:
    """Drop every series of the variant: its endpoint was deleted, or no fleet serves it."""
    remove_variant_gauges(endpoint_name, variant_name)
    for metric in VARIANT_SERIES:
        metric.remove(endpoint_name, variant_name)


class InstanceSource(Protocol):
    """What the instance metrics read at scrape time (the gateway's `FleetDeployer`)."""

    def live_instances(self) -> Mapping[tuple[str, str], Sequence[InstanceInfo]]:
        """Every instance of each endpoint's live generation, by (endpoint, variant)."""
        ...


class InstanceCollector(Collector):
    """splitserve_instance_*: evaluated at every scrape from the live fleets, so an instance that
    is gone leaves no series behind and nothing runs between scrapes.

    A gateway attaches its deployer while it runs; CPU and memory come from /proc for the
    instance's current pid, restarts from the supervisor's count.
    """

    def __init__(self) -> None:
        self._sources: dict[int, tuple[InstanceSource, CpuSampler]] = {}

    def attach(self, source: InstanceSource, sampler: CpuSampler) -> None:
        """Report `source`'s instances from now on, with `sampler` keeping its CPU baselines."""
        self._sources[id(source)] = (source, sampler)

    def detach(self, source: InstanceSource) -> None:
        """Stop reporting `source`'s instances (its gateway is shutting down)."""
        self._sources.pop(id(source), None)

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples (so registering does not collect)."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        """The instance metrics now."""
        cpu, memory, restarts = self._families()
        for source, sampler in list(self._sources.values()):
            sampled: list[str] = []
            for (endpoint_name, variant_name), instances in source.live_instances().items():
                for info in instances:
                    labels = [endpoint_name, variant_name, info.name]
                    restarts.add_metric(labels, info.restarts)
                    if info.pid is None:
                        continue
                    sampled.append(info.name)
                    usage = sampler.sample(info.name, info.pid)
                    if usage is not None:
                        cpu.add_metric(labels, usage.cpu_percent)
                        memory.add_metric(labels, usage.memory_bytes)
            sampler.keep(sampled)
        yield cpu
        yield memory
        yield restarts

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily(
                "splitserve_instance_cpu_utilization_percent",
                "CPU use of the instance's process, summed over cores (0 to 100 x CPUs).",
                labels=_INSTANCE,
            ),
            GaugeMetricFamily(
                "splitserve_instance_memory_bytes",
                "Resident memory of the instance's process.",
                labels=_INSTANCE,
            ),
            CounterMetricFamily(
                "splitserve_instance_restarts",
                "Times an instance was restarted after a crash or a failed health check.",
                labels=_INSTANCE,
            ),
        )


#: The instance metrics; each running gateway attaches its deployer.
INSTANCES = InstanceCollector()
REGISTRY.register(INSTANCES)
