"""One host's /metrics from its replicas' own expositions: parse, merge, render.

Every gateway replica counts in its own process, without locks and without shared memory (the
request path stays as `prometheus.py` describes it). A scrape of the host's /metrics lands on one
replica, which fetches the others' own expositions (`GET /splitserve/metrics/own`) and merges
them with its own here. Nothing in this module does I/O: the face fetches, this parses and sums.

How a family merges is its `Merge` rule (`prometheus.FAMILY_MERGE` states one per gauge and per
counter that is not summed): counters, histograms and summaries add up per label set; a
`_created` series takes the earliest; a gauge takes the rule its family states. A label set that
only some replicas have is merged over those that have it.

The expositions are prometheus_client's text format (0.0.4) as every replica writes it, and they
are read line by line: a series is its name and label set as written (prometheus_client sorts a
label set by name; one that is not sorted is sorted here), so a scrape of several thousand series
per replica costs tens of milliseconds, where prometheus_client's general parser takes a second.
Anything that is not that format is refused whole (`MalformedExposition`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from prometheus_client.utils import floatToGoString

__all__ = [
    "Family",
    "MalformedExposition",
    "Merge",
    "ReplicaFamilies",
    "default_rule",
    "merge_families",
    "parse_exposition",
    "render",
    "rule_of",
]

_SUMMED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})
_TYPES = frozenset({*_SUMMED_TYPES, "gauge", "untyped", "info", "stateset", "unknown"})
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
# A label value: anything but a quote, backslash or newline, and backslash escapes (the loop
# unrolled: a regular expression that alternates per character is ten times slower).
_VALUE = r'[^"\\\n]*(?:\\.[^"\\\n]*)*'
_LABEL = rf'[a-zA-Z_][a-zA-Z0-9_]*="{_VALUE}"'
_SAMPLE = re.compile(
    rf"(?P<series>(?P<name>{_NAME})(?:\{{(?:{_LABEL}(?:,{_LABEL})*,?)?\}})?) (?P<value>\S+)"
)
_LABELS = re.compile(rf'([a-zA-Z_][a-zA-Z0-9_]*)="({_VALUE})"')
_NAME_ONLY = re.compile(_NAME)


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
    """A replica's exposition is not Prometheus's text format as prometheus_client writes it
    (or names a family or a series twice)."""


@dataclass
class Family:
    """One metric family as written: its HELP and TYPE lines and its series.

    Attributes:
        name: the name its HELP and TYPE lines give (a counter's with `_total`).
        type: its TYPE (`untyped` when the exposition gives none).
        help_line: its `# HELP` line, or "" when it has none.
        series: each series (its name and label set as written) -> value, in order.
    """

    name: str
    type: str
    help_line: str = ""
    series: dict[str, float] = field(default_factory=dict)

    @property
    def rule_name(self) -> str:
        """The name `prometheus.FAMILY_MERGE` knows the family by: prometheus_client's family
        name (a counter's without `_total`)."""
        if self.type == "counter" and self.name.endswith("_total"):
            return self.name.removesuffix("_total")
        return self.name

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Each series as (sample name, labels, value), labels unescaped."""
        for series, value in self.series.items():
            name = _NAME_ONLY.match(series)
            assert name is not None  # every key passed _SAMPLE
            labels = {
                key: raw.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                for key, raw in _LABELS.findall(series[name.end() :])
            }
            yield name.group(), labels, value


@dataclass(frozen=True)
class ReplicaFamilies:
    """One replica's parsed exposition.

    Attributes:
        families: its metric families, in its order.
        controller: whether the replica is the controller.
    """

    families: Sequence[Family]
    controller: bool


def parse_exposition(text: str) -> list[Family]:
    """The metric families of an exposition in prometheus_client's text format (0.0.4).

    Raises:
        MalformedExposition: the text is not that format, or names a family or series twice.
    """
    families: list[Family] = []
    names: set[str] = set()
    current: Family | None = None
    help_line = ""
    for number, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        if line.startswith("# HELP "):
            help_line = line
            continue
        if line.startswith("# TYPE "):
            parts = line.split(" ")
            if len(parts) != 4 or parts[3] not in _TYPES or not _NAME_ONLY.fullmatch(parts[2]):
                raise MalformedExposition(f"line {number}: not a TYPE line: {line[:200]!r}")
            if parts[2] in names:
                raise MalformedExposition(f"family {parts[2]} appears twice")
            help_name = help_line.split(" ", 3)[2] if help_line.count(" ") >= 2 else ""
            current = Family(parts[2], parts[3], help_line if help_name == parts[2] else "")
            names.add(current.name)
            families.append(current)
            help_line = ""
            continue
        if line.startswith("#"):
            continue  # a comment
        match = _SAMPLE.fullmatch(line)
        if match is None:
            raise MalformedExposition(f"line {number}: not a sample: {line[:200]!r}")
        try:
            value = float(match["value"])
        except ValueError:
            raise MalformedExposition(f"line {number}: not a number: {line[:200]!r}") from None
        if current is None or not match["name"].startswith(current.name.removesuffix("_total")):
            # A sample without a TYPE line before it: a family of its own, untyped.
            name = match["name"]
            if name in names:
                raise MalformedExposition(f"family {name} appears twice")
            current = Family(name, "untyped")
            names.add(name)
            families.append(current)
        series = match["series"]
        labels = _LABELS.findall(series, len(match["name"]))
        if len(labels) > 1 and labels != sorted(labels):
            # prometheus_client writes label sets sorted; one that is not is made so, so that
            # the same series from two replicas is one key.
            pairs = ",".join(f'{key}="{raw}"' for key, raw in sorted(labels))
            series = f"{match['name']}{{{pairs}}}"
        if series in current.series:
            raise MalformedExposition(f"series {series} appears twice")
        current.series[series] = value
    return families


def default_rule(family: Family) -> Merge:
    """The rule of a family `rules` does not name: counters, histograms and summaries add up;
    a `_created` gauge (the creation times of a counter's or histogram's series) takes the
    earliest; any other gauge takes one replica's value (`Merge.ANY`: never counted twice)."""
    if family.type in _SUMMED_TYPES:
        return Merge.SUM
    if family.name.endswith("_created"):
        return Merge.EARLIEST
    return Merge.ANY


def rule_of(family: Family, rules: Mapping[str, Merge]) -> Merge:
    """The family's rule: the one `rules` states for it, else `default_rule`."""
    return rules.get(family.rule_name) or default_rule(family)


def merge_families(
    own: ReplicaFamilies, peers: Sequence[ReplicaFamilies], rules: Mapping[str, Merge]
) -> list[Family]:
    """The host's families: `own`'s and `peers`' merged family by family.

    Families come in `own`'s order, then those only peers have in the order met. A peer's family
    whose type differs from the first one met is left out (a replica of another version).

    Args:
        own: this replica's families.
        peers: the other replicas' families.
        rules: family name (prometheus_client's: a counter's without `_total`) -> rule, for the
            families not merged by `default_rule`.
    """
    by_name: dict[str, list[tuple[Family, bool, int]]] = {}
    for position, replica in enumerate([own, *peers]):
        for family in replica.families:
            by_name.setdefault(family.rule_name, []).append((family, replica.controller, position))
    merged = []
    for sources in by_name.values():
        first = sources[0][0]
        same_type = [source for source in sources if source[0].type == first.type]
        rule = rule_of(first, rules)
        if rule is Merge.CONTROLLER:
            same_type = [source for source in same_type if source[1]][:1]
        elif rule is Merge.ANY:
            # The controller's first, then this replica's, then the peers' in order.
            same_type.sort(key=lambda source: (not source[1], source[2]))
        series: dict[str, float] = {}
        for family, _, _ in same_type:
            for key, value in family.series.items():
                known = series.get(key)
                if known is None:
                    series[key] = value
                elif rule is Merge.SUM:
                    series[key] = known + value
                elif rule is Merge.EARLIEST and not math.isnan(value):
                    series[key] = min(known, value)
        merged.append(Family(first.name, first.type, first.help_line, series))
    return merged


def render(families: Sequence[Family]) -> bytes:
    """`families` in Prometheus's text format, as prometheus_client writes it."""
    lines = []
    for family in families:
        if family.help_line:
            lines.append(family.help_line)
        lines.append(f"# TYPE {family.name} {family.type}")
        lines.extend(
            f"{key} {floatToGoString(value)}"  # type: ignore[no-untyped-call]
            for key, value in family.series.items()
        )
    lines.append("")
    return "\n".join(lines).encode()
