"""The metrics CloudWatch's API serves, and one minute of one metric as CloudWatch aggregates it.

SageMaker publishes, per variant and minute, `AWS/SageMaker` figures (Invocations and the error
indicators are one value per request: 1 for the request, 1 or 0 for an error) and
`/aws/sagemaker/Endpoints` figures (CPU and memory of the variant's instances); see
docs/sagemaker-api.md, section 4 and 7. An `Aggregate` is CloudWatch's statistic set for a
minute (SampleCount, Sum, Minimum, Maximum) plus what percentiles need:

- a value count (`values`: value -> how many samples had it) where the samples take few values
  (Invocations is always 1, an error indicator 1 or 0, CPU and memory samples a handful a minute):
  percentiles from it are exact;
- the latency histogram of `splitserve.metrics.minutes` (`buckets`) for ModelLatency and
  OverheadLatency: a percentile is the geometric middle of its bucket, clamped to the period's
  minimum and maximum, so it is within 9 % of the true sample (four buckets per octave: half a
  bucket is a factor 2**(1/8) = 1.09).

Aggregates add: the figures of several minutes, or of several gateway processes for one minute,
sum into one.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

from splitserve.metrics.minutes import LATENCY_BUCKETS, MinuteCounts, bucket_midpoint

__all__ = [
    "ENDPOINT_NAMESPACE",
    "METRICS",
    "SAGEMAKER_NAMESPACE",
    "Aggregate",
    "MetricSpec",
    "aggregates_of_minute",
    "instance_aggregate",
    "minute_counts",
]

SAGEMAKER_NAMESPACE = "AWS/SageMaker"
ENDPOINT_NAMESPACE = "/aws/sagemaker/Endpoints"
#: The dimensions of every metric served, in the order ListMetrics gives them.
DIMENSION_NAMES = ("EndpointName", "VariantName")
_MICROSECONDS = 1e6


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its namespace, name and the unit its datapoints carry."""

    namespace: str
    name: str
    unit: str


#: Every metric served, by (namespace, name). SageMaker reports counts in unit None and latency
#: in microseconds (docs/sagemaker-api.md, section 4).
METRICS: Mapping[tuple[str, str], MetricSpec] = {
    (spec.namespace, spec.name): spec
    for spec in (
        MetricSpec(SAGEMAKER_NAMESPACE, "Invocations", "None"),
        MetricSpec(SAGEMAKER_NAMESPACE, "InvocationsPerInstance", "None"),
        MetricSpec(SAGEMAKER_NAMESPACE, "Invocation4XXErrors", "None"),
        MetricSpec(SAGEMAKER_NAMESPACE, "Invocation5XXErrors", "None"),
        MetricSpec(SAGEMAKER_NAMESPACE, "InvocationModelErrors", "None"),
        MetricSpec(SAGEMAKER_NAMESPACE, "ModelLatency", "Microseconds"),
        MetricSpec(SAGEMAKER_NAMESPACE, "OverheadLatency", "Microseconds"),
        MetricSpec(ENDPOINT_NAMESPACE, "CPUUtilization", "Percent"),
        MetricSpec(ENDPOINT_NAMESPACE, "MemoryUtilization", "Percent"),
    )
}


@dataclass(frozen=True)
class Aggregate:
    """CloudWatch's statistic set of one metric over some minutes (see the module docstring).

    Attributes:
        sample_count, total, minimum, maximum: SampleCount, Sum, Minimum, Maximum.
        values: value -> samples with that value, when the samples take few values.
        buckets: a latency histogram in seconds (`LATENCY_BUCKETS` counts), scaled by `scale` to
            the metric's unit, when the metric is a latency.
    """

    sample_count: int
    total: float
    minimum: float
    maximum: float
    values: Mapping[float, int] | None = None
    buckets: Sequence[int] | None = None

    def __add__(self, other: Aggregate) -> Aggregate:
        """The aggregate of the samples of both."""
        values: dict[float, int] | None = None
        if self.values is not None and other.values is not None:
            values = dict(self.values)
            for value, count in other.values.items():
                values[value] = values.get(value, 0) + count
        buckets: list[int] | None = None
        if self.buckets is not None and other.buckets is not None:
            buckets = [
                left + right for left, right in zip(self.buckets, other.buckets, strict=True)
            ]
        return Aggregate(
            self.sample_count + other.sample_count,
            self.total + other.total,
            min(self.minimum, other.minimum),
            max(self.maximum, other.maximum),
            values,
            buckets,
        )

    @property
    def average(self) -> float:
        """Sum / SampleCount."""
        return self.total / self.sample_count

    def statistic(self, name: str) -> float:
        """One of CloudWatch's five statistics (`STATISTICS` in splitserve.cloudwatch.shapes)."""
        if name == "Sum":
            return self.total
        if name == "SampleCount":
            return float(self.sample_count)
        if name == "Average":
            return self.average
        if name == "Minimum":
            return self.minimum
        return self.maximum

    def percentile(self, percent: float) -> float | None:
        """The `percent` percentile (0 to 100) of the samples, or None when it cannot be told.

        Exact from `values`; from `buckets` within 9 % and between Minimum and Maximum.
        """
        rank = max(1, math.ceil(percent / 100 * self.sample_count))
        if self.values is not None:
            seen = 0
            for value in sorted(self.values):
                seen += self.values[value]
                if seen >= rank:
                    return value
            return self.maximum
        if self.buckets is not None:
            cumulative = list(accumulate(self.buckets))
            if not cumulative or cumulative[-1] == 0:
                return None
            rank = max(1, math.ceil(percent / 100 * cumulative[-1]))
            index = min(bisect_left(cumulative, rank), LATENCY_BUCKETS - 1)
            estimate = bucket_midpoint(index) * _MICROSECONDS
            return min(max(estimate, self.minimum), self.maximum)
        return None

    def to_json(self) -> dict[str, object]:
        """A JSON-able form (the state store keeps it)."""
        body: dict[str, object] = {
            "n": self.sample_count,
            "sum": self.total,
            "min": self.minimum,
            "max": self.maximum,
        }
        if self.values is not None:
            body["values"] = [[value, count] for value, count in self.values.items()]
        if self.buckets is not None:
            body["buckets"] = {
                str(index): count for index, count in enumerate(self.buckets) if count
            }
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, object]) -> Aggregate:
        """The aggregate `to_json` wrote.

        Raises:
            ValueError, TypeError, KeyError: `body` is not what `to_json` writes.
        """
        values_field = body.get("values")
        values = None
        if isinstance(values_field, list):
            values = {float(value): int(count) for value, count in values_field}
        buckets_field = body.get("buckets")
        buckets = None
        if isinstance(buckets_field, dict):
            counts = [0] * LATENCY_BUCKETS
            for index, count in buckets_field.items():
                counts[int(index)] = int(count)
            buckets = counts
        sample_count = int(_number(body["n"]))
        if sample_count < 1:
            raise ValueError("an aggregate without samples")
        return cls(
            sample_count,
            _number(body["sum"]),
            _number(body["min"]),
            _number(body["max"]),
            values,
            buckets,
        )


def _number(value: object) -> float:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    raise TypeError("not a finite number")


def _indicator(samples: int, ones: int) -> Aggregate:
    """`samples` values of which `ones` are 1 and the rest 0."""
    values = {value: count for value, count in ((0.0, samples - ones), (1.0, ones)) if count}
    return Aggregate(
        samples, float(ones), 0.0 if ones < samples else 1.0, 1.0 if ones else 0.0, values
    )


def _latency(
    buckets: Sequence[int] | None, total: float, lowest: float, highest: float
) -> Aggregate | None:
    if buckets is None:
        return None
    count = sum(buckets)
    if count == 0:
        return None
    return Aggregate(
        count,
        total * _MICROSECONDS,
        lowest * _MICROSECONDS,
        highest * _MICROSECONDS,
        None,
        list(buckets),
    )


def aggregates_of_minute(counts: MinuteCounts) -> Iterator[tuple[str, Aggregate]]:
    """The `AWS/SageMaker` metrics of one variant's minute, by metric name: a metric without a
    sample in the minute is left out (CloudWatch has no datapoint for it)."""
    invocations = counts.invocations
    if invocations:
        yield (
            "Invocations",
            Aggregate(invocations, float(invocations), 1.0, 1.0, {1.0: invocations}),
        )
        share = counts.invocations_per_instance
        # Requests of one minute see one or a few instance counts: the per-request shares are
        # not kept, so Minimum, Maximum and percentiles are their mean.
        mean = share / invocations
        yield (
            "InvocationsPerInstance",
            Aggregate(invocations, share, mean, mean, {mean: invocations}),
        )
        # A model error counted in a minute without an invocation (the request was routed in
        # the minute before) still counts: the indicators' samples are at least the errors.
        yield (
            "Invocation4XXErrors",
            _indicator(max(invocations, counts.errors_4xx), counts.errors_4xx),
        )
        yield (
            "Invocation5XXErrors",
            _indicator(max(invocations, counts.errors_5xx), counts.errors_5xx),
        )
        yield (
            "InvocationModelErrors",
            _indicator(max(invocations, counts.model_errors), counts.model_errors),
        )
    else:
        for name, errors in (
            ("Invocation4XXErrors", counts.errors_4xx),
            ("Invocation5XXErrors", counts.errors_5xx),
            ("InvocationModelErrors", counts.model_errors),
        ):
            if errors:
                yield name, _indicator(errors, errors)
    model = _latency(counts.latency, counts.latency_sum, counts.latency_min, counts.latency_max)
    if model is not None:
        yield "ModelLatency", model
    overhead = _latency(
        counts.overhead, counts.overhead_sum, counts.overhead_min, counts.overhead_max
    )
    if overhead is not None:
        yield "OverheadLatency", overhead


def minute_counts(minute: int, figures: Mapping[str, Aggregate]) -> MinuteCounts:
    """The per-minute counts `aggregates_of_minute` made `figures` of (what `splitserve stats`
    sums): how another gateway replica's stored minute adds to this one's report.

    A metric missing from `figures` had no sample: its counts are 0 (its histogram None).
    Latencies come back in seconds; the minimum, maximum and sum went through microseconds, so
    they may differ from the ring's in the last bits.
    """
    invocations = figures.get("Invocations")
    per_instance = figures.get("InvocationsPerInstance")
    model = figures.get("ModelLatency")
    overhead = figures.get("OverheadLatency")

    def errors(name: str) -> int:
        indicator = figures.get(name)
        return 0 if indicator is None else round(indicator.total)

    return MinuteCounts(
        minute=minute,
        invocations=0 if invocations is None else invocations.sample_count,
        errors_4xx=errors("Invocation4XXErrors"),
        errors_5xx=errors("Invocation5XXErrors"),
        model_errors=errors("InvocationModelErrors"),
        latency=None if model is None else model.buckets,
        latency_min=0.0 if model is None else model.minimum / _MICROSECONDS,
        latency_max=0.0 if model is None else model.maximum / _MICROSECONDS,
        invocations_per_instance=0.0 if per_instance is None else per_instance.total,
        latency_sum=0.0 if model is None else model.total / _MICROSECONDS,
        overhead=None if overhead is None else overhead.buckets,
        overhead_sum=0.0 if overhead is None else overhead.total / _MICROSECONDS,
        overhead_min=0.0 if overhead is None else overhead.minimum / _MICROSECONDS,
        overhead_max=0.0 if overhead is None else overhead.maximum / _MICROSECONDS,
    )


def instance_aggregate(samples: Sequence[float]) -> Aggregate:
    """The aggregate of some CPU or memory samples (percent) of a variant's instances."""
    values: dict[float, int] = {}
    for sample in samples:
        values[sample] = values.get(sample, 0) + 1
    return Aggregate(len(samples), math.fsum(samples), min(samples), max(samples), values)
