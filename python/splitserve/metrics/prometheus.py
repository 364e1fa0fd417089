"""Every Prometheus metric splitserve exports, defined once.

Names follow Prometheus's guide (prefix `splitserve_`, base units, `_total` for counters); labels
are `endpoint_name` and `variant_name` as CloudWatch's EndpointName and VariantName, plus
`instance` for the instance metrics, which `InstanceCollector` reads from the live fleets when
Prometheus scrapes. Label values only ever come from validated resource names. The request path
records through `VariantMetrics`, whose label children are resolved once per variant, so a request
pays for no label lookup; the four series every request updates (`INVOCATIONS`,
`INVOCATIONS_PER_INSTANCE`, `MODEL_LATENCY`, `OVERHEAD_LATENCY`) are `LoopCounter` and
`LoopHistogram`, which export exactly what prometheus_client's Counter and Histogram do but record
without a lock.

Each gateway replica counts in its own registry; a host's /metrics merges its replicas'
expositions (`metrics.host`), each family by the rule `FAMILY_MERGE` states for it.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Metric,
    disable_created_metrics,
    enable_created_metrics,
)
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from splitserve.metrics.exposition import Merge
from splitserve.metrics.procstat import CpuSampler

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


class LoopCounterChild:
    """One series of a `LoopCounter`: a float that only grows."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` (not negative; not checked, the callers are ours)."""
        self.value += amount


class LoopHistogramChild:
    """One series of a `LoopHistogram`: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("_upper_bounds", "buckets", "created", "sum")

    def __init__(self, upper_bounds: tuple[float, ...]) -> None:
        self._upper_bounds = upper_bounds
        self.buckets = [0] * len(upper_bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Count `amount` in the first bucket whose upper bound is >= it (`le`), and in the sum."""
        self.buckets[bisect_left(self._upper_bounds, amount)] += 1
        self.sum += amount


_Child = TypeVar("_Child", LoopCounterChild, LoopHistogramChild)


class _LoopMetric(Collector, Generic[_Child]):
    """A labelled metric recorded without locks, for the series every request updates.

    prometheus_client's Counter and Histogram take a lock for every update, and a Histogram walks
    its buckets in Python: 0.6 us per counter increment and 1.1 us per observation, of which the
    request path makes six. These record one float addition (a counter) or a C bisection and two
    additions (a histogram). They rely on what the gateway guarantees: every update and every
    scrape (GET /metrics, generate_latest) runs on the one event loop, never concurrently. The
    exposition is prometheus_client's, sample for sample (including `_created`, unless
    PROMETHEUS_DISABLE_CREATED_SERIES turns those off as it does for prometheus_client's own).

    Args:
        name: the metric's name (a counter's without `_total`).
        documentation: its HELP text.
        labelnames: its label names, in order.
        registry: where it is exported.
    """

    _type = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _Child] = {}
        registry.register(self)

    def _new_child(self) -> _Child:
        raise NotImplementedError

    def labels(self, *labelvalues: str) -> _Child:
        """The series of `labelvalues` (in `labelnames` order), created when it does not exist."""
        if len(labelvalues) != len(self._labelnames):
            raise ValueError(f"{self._name}: expected labels {self._labelnames}, got {labelvalues}")
        child = self._children.get(labelvalues)
        if child is None:
            child = self._children[labelvalues] = self._new_child()
        return child

    def remove(self, *labelvalues: str) -> None:
        """Drop the series of `labelvalues`; nothing happens when there is none."""
        self._children.pop(labelvalues, None)

    def describe(self) -> Iterator[Metric]:
        """The family without samples (so registering does not collect)."""
        yield Metric(self._name, self._documentation, self._type)

    def collect(self) -> Iterator[Metric]:
        """The family with a sample set per series."""
        family = Metric(self._name, self._documentation, self._type)
        created = getattr(prometheus_metrics, "_use_created", True)
        for labelvalues, child in list(self._children.items()):
            labels = dict(zip(self._labelnames, labelvalues, strict=True))
            self._add_samples(family, labels, child)
            if created:
                family.add_sample(f"{self._name}_created", labels, child.created)
        yield family

    def _add_samples(self, family: Metric, labels: dict[str, str], child: _Child) -> None:
        raise NotImplementedError


class LoopCounter(_LoopMetric[LoopCounterChild]):
    """A counter recorded without a lock (see `_LoopMetric`); samples `<name>_total`."""

    _type = "counter"

    def _new_child(self) -> LoopCounterChild:
        return LoopCounterChild()

    def _add_samples(self, family: Metric, labels: dict[str, str], child: LoopCounterChild) -> None:
        family.add_sample(f"{self._name}_total", labels, child.value)


class LoopHistogram(_LoopMetric[LoopHistogramChild]):
    """A histogram recorded without a lock (see `_LoopMetric`); `buckets` are the upper bounds
    (+Inf is added); samples `_bucket` (cumulative, by `le`), `_count` and `_sum`."""

    _type = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._upper_bounds = (*buckets, float("inf"))
        self._le = tuple(
            floatToGoString(bound)  # type: ignore[no-untyped-call]
            for bound in self._upper_bounds
        )
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> LoopHistogramChild:
        return LoopHistogramChild(self._upper_bounds)

    def _add_samples(
        self, family: Metric, labels: dict[str, str], child: LoopHistogramChild
    ) -> None:
        cumulative = 0
        for le, count in zip(self._le, list(child.buckets), strict=True):
            cumulative += count
            family.add_sample(f"{self._name}_bucket", {**labels, "le": le}, float(cumulative))
        family.add_sample(f"{self._name}_count", labels, float(cumulative))
        family.add_sample(f"{self._name}_sum", labels, child.sum)


INVOCATIONS = LoopCounter(
    "splitserve_invocations", "Requests routed to the variant.", _VARIANT, registry=REGISTRY
)
INVOCATIONS_PER_INSTANCE = LoopCounter(
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
FAILOVERS = Counter(
    "splitserve_failover",
    "Untargeted requests this variant served because the variant the weights chose had no "
    "healthy instance (endpoints tagged splitserve:failover=true only).",
    _VARIANT,
    registry=REGISTRY,
)
GATEWAY_ERRORS = Counter(
    "splitserve_gateway_errors",
    "Requests refused before a variant was chosen, by wire error code.",
    ("code",),
    registry=REGISTRY,
)
MODEL_LATENCY = LoopHistogram(
    "splitserve_model_latency_seconds",
    "Time from sending a request to the worker until its answer.",
    _VARIANT,
    buckets=MODEL_BUCKETS,
    registry=REGISTRY,
)
OVERHEAD_LATENCY = LoopHistogram(
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
SHADOW_COPIES = Counter(
    "splitserve_shadow_copies",
    "Requests production answered that were queued for a copy to this shadow variant (its "
    "Invocations count the copies it was sent).",
    _VARIANT,
    registry=REGISTRY,
)
SHADOW_DROPPED = Counter(
    "splitserve_shadow_dropped",
    "Copies for this shadow variant not sent: its queue was full (the shadow is slower than "
    "its share of traffic), no instance of it was healthy, or the endpoint stopped first.",
    _VARIANT,
    registry=REGISTRY,
)
EDGE_ENFORCEMENTS = Counter(
    "splitserve_edge_enforcements",
    "What the connection limits did: refused_connection (503 at the connection cap, none idle), "
    "closed_idle_connection (to make room at the cap), closed_slow_head (request head not "
    "complete within the header read timeout), refused_body (503: request bodies in flight at "
    "their budget).",
    ("action",),
    registry=REGISTRY,
)
ALARM_TRANSITIONS = Counter(
    "splitserve_cloudwatch_alarm_transitions",
    "CloudWatch alarms that changed state (by evaluation or SetAlarmState), by the new state: "
    "OK, ALARM or INSUFFICIENT_DATA.",
    ("state",),
    registry=REGISTRY,
)

PEER_SCRAPE_FAILURES = Counter(
    "splitserve_metrics_peer_failures",
    "Host peers (other gateway replicas on this host) left out of a /metrics scrape, by reason: "
    "timeout, unreachable (no connection or not a 200 answer), malformed (not Prometheus's "
    "text format).",
    ("reason",),
    registry=REGISTRY,
)

FEEDBACK = Counter(
    "splitserve_feedback",
    "Label records sent to POST /splitserve/feedback/<endpoint>, by outcome: joined, malformed, "
    "unknown (no such inference id), late (past the index's retention), duplicate (already "
    "labelled), wrong_endpoint (the id is another endpoint's), unscorable (the answer holds no "
    "scores to pair the labels with).",
    ("endpoint_name", "outcome"),
    registry=REGISTRY,
)
FEEDBACK_INDEX_DROPPED = Counter(
    "splitserve_feedback_index_dropped",
    "Answered invocations not indexed for feedback (the index writer's queue was full, or the "
    "state database refused the write): labels for them are refused as unknown.",
    registry=REGISTRY,
)
EXPERIMENT_METRIC = Gauge(
    "splitserve_experiment_metric",
    "A variant's metric in the live experiment (joined labels), with its always-valid interval: "
    "bound is value, low or high.",
    (*_VARIANT, "metric", "bound"),
    registry=REGISTRY,
)
EXPERIMENT_LABELS = Gauge(
    "splitserve_experiment_labels",
    "Labels joined to the variant's invocations (the live experiment's sample size).",
    _VARIANT,
    registry=REGISTRY,
)
EXPERIMENT_P_VALUE = Gauge(
    "splitserve_experiment_p_value",
    "The always-valid p-value of 'no difference' between two variants on a metric.",
    ("endpoint_name", "variant_a", "variant_b", "metric"),
    registry=REGISTRY,
)
EXPERIMENT_SRM_FAILED = Gauge(
    "splitserve_experiment_srm_failed",
    "1 when the live sample-ratio check failed (the split is not the weights'), else 0.",
    ("endpoint_name",),
    registry=REGISTRY,
)
EXPERIMENT_WINNER = Gauge(
    "splitserve_experiment_winner",
    "1 for the variant the live experiment declared better than every other on its metric.",
    _VARIANT,
    registry=REGISTRY,
)
#: How each family of a host's replicas merges into the host's /metrics
#: (`exposition.merge_families`), for every family not merged by `exposition.default_rule`
#: (counters, histograms and summaries summed; `_created` series the earliest). Every gauge is
#: named here, so its rule is stated rather than defaulted (tests/metrics check it).
FAMILY_MERGE: Mapping[str, Merge] = {
    # Every replica routes with the same routing document: the weights and counts agree.
    "splitserve_variant_weight": Merge.ANY,
    "splitserve_variant_desired_weight": Merge.ANY,
    "splitserve_variant_instances": Merge.ANY,
    "splitserve_variant_desired_instances": Merge.ANY,
    # Every replica computes the experiment from the same labels in the state database.
    "splitserve_experiment_metric": Merge.ANY,
    "splitserve_experiment_labels": Merge.ANY,
    "splitserve_experiment_p_value": Merge.ANY,
    "splitserve_experiment_srm_failed": Merge.ANY,
    "splitserve_experiment_winner": Merge.ANY,
    # Only the controller runs (and restarts) the host's instances.
    "splitserve_instance_cpu_utilization_percent": Merge.CONTROLLER,
    "splitserve_instance_memory_bytes": Merge.CONTROLLER,
    "splitserve_instance_restarts": Merge.CONTROLLER,
}


@dataclass(frozen=True)
class VariantMetrics:
    """The label children of one variant, resolved once so the request path does no lookups.

    The request path records through `metrics.recorder.VariantRecorder`, which feeds these and the
    variant's per-minute ring together.
    """

    invocations: LoopCounterChild
    invocations_per_instance: LoopCounterChild
    errors_4xx: Counter
    errors_5xx: Counter
    model_errors: Counter
    failovers: Counter
    model_latency: LoopHistogramChild
    overhead_latency: LoopHistogramChild

    @classmethod
    def resolve(cls, endpoint_name: str, variant_name: str) -> VariantMetrics:
        """Create (or find) every per-variant series, so each exists from the endpoint's start."""
        labels = (endpoint_name, variant_name)
        return cls(
            invocations=INVOCATIONS.labels(*labels),
            invocations_per_instance=INVOCATIONS_PER_INSTANCE.labels(*labels),
            errors_4xx=INVOCATION_4XX_ERRORS.labels(*labels),
            errors_5xx=INVOCATION_5XX_ERRORS.labels(*labels),
            model_errors=INVOCATION_MODEL_ERRORS.labels(*labels),
            failovers=FAILOVERS.labels(*labels),
            model_latency=MODEL_LATENCY.labels(*labels),
            overhead_latency=OVERHEAD_LATENCY.labels(*labels),
        )


#: Every metric labelled by variant alone, and the variant gauges: what a variant that no longer
#: exists must leave (a new per-variant metric belongs in one of these two lists).
VARIANT_SERIES = (
    INVOCATIONS,
    INVOCATIONS_PER_INSTANCE,
    INVOCATION_4XX_ERRORS,
    INVOCATION_5XX_ERRORS,
    INVOCATION_MODEL_ERRORS,
    FAILOVERS,
    MODEL_LATENCY,
    OVERHEAD_LATENCY,
    CAPTURE_DROPPED,
    SHADOW_COPIES,
    SHADOW_DROPPED,
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


class InstanceView(Protocol):
    """The fields of one instance the instance metrics read (the workers' `InstanceInfo` has
    them); a protocol of its own so that metrics never import workers."""

    @property
    def name(self) -> str:
        """The instance's name, the `instance` label."""
        ...

    @property
    def pid(self) -> int | None:
        """Its current process, or None when none runs (then only its restarts are reported)."""
        ...

    @property
    def restarts(self) -> int:
        """How many times its process was replaced."""
        ...


class InstanceSource(Protocol):
    """What the instance metrics read at scrape time (the gateway's `FleetDeployer`)."""

    def live_instances(self) -> Mapping[tuple[str, str], Sequence[InstanceView]]:
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


def show_created_series(shown: bool) -> None:
    """Whether /metrics shows the `_created` series of counters and histograms.

    prometheus_client keeps the choice process-wide (`disable_created_metrics`), and this module's
    own families read the same switch, so one call sets it for every metric.
    """
    # prometheus_client leaves these two unannotated.
    if shown:
        enable_created_metrics()  # type: ignore[no-untyped-call]
    else:
        disable_created_metrics()  # type: ignore[no-untyped-call]
