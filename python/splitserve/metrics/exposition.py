"""One host's /metrics from its replicas' own expositions: parse, merge, render.

Every gateway replica counts in its own process, without locks and without shared memory (the
request path stays as `prometheus.py` describes it). A scrape of the host's /metrics lands on one
replica, which fetches the others' own expositions (`GET /splitserve/metrics/own`) and merges
them with its own here. Nothing in this module does I/O: the face fetches, this parses and sums.

How a family merges is its `Merge` rule (`prometheus.FAMILY_MERGE` states one per gauge and per
counter that is not summed): counters, histograms and summaries add up per label set; a
`_created` series takes the earliest; a gauge takes the rule its family states. A label set that
only some replicas have is merged over those that have it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from prometheus_client import CollectorRegistry, Metric, generate_latest
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "MalformedExposition",
    "Merge",
    "ReplicaFamilies",
    "merge_families",
    "parse_exposition",
    "render",
]

_SUMMED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


class Merge(Enum):
    """How the series of one family from several replicas become the host's."""

    #: Added per label set: counts of requests, and gauges that are each process's own share.
    SUM = "sum"
    #: One value per label set, the replicas agree on it (weights, desired counts): the
    #: controller's, else this replica's, else the first peer's that has the series.
    ANY = "any"
    #: Only the controller's series (what only the controller runs, e.g. the local instances);
    #: none when the controller is not among the host's replicas that answered.
    CONTROLLER = "controller"
    #: The smallest value per label set: when a series was first created on the host.
    EARLIEST = "earliest"


class MalformedExposition(ValueError):
    """A replica's exposition is not Prometheus's text format (or names a family or a series
    twice)."""


@dataclass(frozen=True)
class ReplicaFamilies:
    """One replica's parsed exposition.

    Attributes:
        families: its metric families, in its order.
        controller: whether the replica is the controller.
    """

    families: Sequence[Metric]
    controller: bool


def parse_exposition(text: str) -> list[Metric]:
    """The metric families of an exposition in Prometheus's text format (0.0.4).

    Raises:
        MalformedExposition: the text is not that format, or names a family or series twice.
    """
    try:
        families = list(text_string_to_metric_families(text))
    except (ValueError, TypeError, KeyError, IndexError) as error:
        raise MalformedExposition(f"not Prometheus's text format: {error}") from error
    names = set()
    for family in families:
        if family.name in names:
            raise MalformedExposition(f"family {family.name} appears twice")
        names.add(family.name)
        series = set()
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in series:
                raise MalformedExposition(f"series {sample.name}{sample.labels} appears twice")
            series.add(key)
    return families


def merge_families(
    own: ReplicaFamilies, peers: Sequence[ReplicaFamilies], rules: Mapping[str, Merge]
) -> list[Metric]:
    """The host's families: `own`'s and `peers`' merged family by family.

    Families come in `own`'s order, then those only peers have in the order met. A peer's family
    whose type differs from the first one met is left out (a replica of another version); a
    family without a rule in `rules` merges by `default_rule`.

    Args:
        own: this replica's families.
        peers: the other replicas' families.
        rules: family name -> rule, for the families not merged by `default_rule`.

    Returns:
        The merged families, samples without timestamps or exemplars.
    """
    replicas = [own, *peers]
    by_name: dict[str, list[tuple[Metric, bool, int]]] = {}
    for position, replica in enumerate(replicas):
        for family in replica.families:
            by_name.setdefault(family.name, []).append((family, replica.controller, position))
    merged = []
    for name, sources in by_name.items():
        first = sources[0][0]
        same_type = [source for source in sources if source[0].type == first.type]
        rule = rules.get(name) or default_rule(first)
        family = Metric(name, first.documentation, first.type, first.unit)
        for sample_name, labels, value in _merged_samples(same_type, rule):
            family.add_sample(sample_name, labels, value)
        merged.append(family)
    return merged


def default_rule(family: Metric) -> Merge:
    """The rule of a family `rules` does not name: counters, histograms and summaries add up;
    a `_created` gauge (the creation times of a counter's or histogram's series) takes the
    earliest; any other gauge takes one replica's value (`Merge.ANY`: never counted twice)."""
    if family.type in _SUMMED_TYPES:
        return Merge.SUM
    if family.name.endswith("_created"):
        return Merge.EARLIEST
    return Merge.ANY


def _merged_samples(
    sources: Sequence[tuple[Metric, bool, int]], rule: Merge
) -> Iterator[tuple[str, dict[str, str], float]]:
    if rule is Merge.CONTROLLER:
        sources = [source for source in sources if source[1]][:1]
    elif rule is Merge.ANY:
        # The controller's first, then this replica's, then the peers' in order.
        sources = sorted(sources, key=lambda source: (not source[1], source[2]))
    values: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[dict[str, str], float]] = {}
    for family, _, _ in sources:
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            known = values.get(key)
            if known is None:
                values[key] = (dict(sample.labels), float(sample.value))
            elif rule is Merge.SUM:
                values[key] = (known[0], known[1] + sample.value)
            elif rule is Merge.EARLIEST and not math.isnan(sample.value):
                values[key] = (known[0], min(known[1], sample.value))
    for (sample_name, _), (labels, value) in values.items():
        yield sample_name, labels, value


class _Families:
    """A collector of fixed families, for `generate_latest`."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        """The families."""
        yield from self._families


def render(families: Sequence[Metric]) -> bytes:
    """`families` in Prometheus's text format, as prometheus_client writes a registry."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)
