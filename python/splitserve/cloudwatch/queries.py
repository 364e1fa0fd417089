"""GetMetricStatistics, GetMetricData and ListMetrics over the gateway's per-minute figures.

No aiohttp here: the operations take the checked parameters of `splitserve.cloudwatch.shapes`
and return the output members (timestamps as aware datetimes; each protocol encodes them). The
rules, limits and messages follow CloudWatch (docs/sagemaker-api.md, section 7):

- a period is a multiple of 60 seconds (the figures are per minute), StartTime < EndTime;
- periods start at StartTime rounded down to the minute; a period is reported when it has a
  sample; GetMetricStatistics refuses a call that could return over `max_datapoints`;
- the dimensions must be exactly EndpointName and VariantName; another set, an unknown metric or
  a unit other than the metric's own gives no datapoints (CloudWatch answers, it does not fail);
- statistics Sum, SampleCount, Average, Minimum, Maximum; percentiles `pNN` / `pNN.N` (see
  `figures.Aggregate.percentile` for their error bound); metric math in GetMetricData is refused
  by name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from splitserve.cloudwatch.figures import DIMENSION_NAMES, METRICS, Aggregate, MetricSpec
from splitserve.cloudwatch.live import SeriesFigures
from splitserve.cloudwatch.shapes import STATISTICS
from splitserve.config import CloudWatchSettings
from splitserve.errors import (
    InvalidNextToken,
    InvalidParameterCombination,
    InvalidParameterValue,
    MissingParameter,
)

__all__ = [
    "FigureReader",
    "MetricQueries",
    "ValueMap",
    "Window",
    "parse_statistic",
    "series_key",
]

_PERCENTILE = re.compile(r"p(\d{1,2}(\.\d{1,10})?|100(\.0{1,10})?)")
_QUERY_ID = re.compile(r"[a-z][a-zA-Z0-9_]*")
_MINUTE = 60


class FigureReader(Protocol):
    """Where the per-minute figures come from (this process's memory, the state store, both)."""

    async def read(
        self, keys: Collection[tuple[str, str]] | None, first: int, last: int
    ) -> SeriesFigures:
        """The figures of minutes `first` to `last` (inclusive) of the variants `keys`
        ((endpoint, variant) pairs; None: all), summed over every process that has some."""
        ...

    async def series(self) -> list[tuple[str, str, str, int]]:
        """Every (endpoint, variant, metric, newest minute with a sample) known."""
        ...


class ValueMap(dict[str, float]):
    """A map of statistic name to value (the protocols encode it as a map, not a structure)."""


@dataclass(frozen=True)
class Window:
    """The periods a query covers: `count` periods of `period_seconds` from `first_minute`."""

    first_minute: int
    period_seconds: int
    count: int

    @property
    def last_minute(self) -> int:
        """The last minute of the last period."""
        return self.first_minute + self.count * self.period_seconds // _MINUTE - 1

    def start_of(self, index: int) -> datetime:
        """When period `index` starts."""
        return datetime.fromtimestamp(
            self.first_minute * _MINUTE + index * self.period_seconds, UTC
        )

    @classmethod
    def of(cls, start: float, end: float, period: int, path: str = "Period") -> Window:
        """The periods of `period` seconds from `start` (rounded down to the minute) to `end`.

        Raises:
            InvalidParameterValue: a period that is not a multiple of 60, or start >= end.
        """
        if period % _MINUTE:
            raise InvalidParameterValue(
                f"The parameter {path} must be a multiple of 60: splitserve keeps figures per "
                "minute."
            )
        if start >= end:
            raise InvalidParameterValue(
                "The parameter StartTime must be less than the parameter EndTime."
            )
        first_minute = int(start // _MINUTE)
        count = math.ceil((end - first_minute * _MINUTE) / period)
        return cls(first_minute, period, count)


def series_key(
    namespace: str, metric_name: str, dimensions: Sequence[Mapping[str, object]], path: str
) -> tuple[MetricSpec, str, str] | None:
    """The metric and (endpoint, variant) a query names, or None when it names no series the
    gateway has (CloudWatch answers that with no datapoints).

    Raises:
        InvalidParameterValue: a dimension named twice.
    """
    named: dict[str, str] = {}
    for index, dimension in enumerate(dimensions, start=1):
        name = str(dimension["Name"])
        if name in named:
            raise InvalidParameterValue(
                f"The dimension {name} appears twice in {path}.member.{index}: dimension names "
                "must be unique."
            )
        named[name] = str(dimension["Value"])
    spec = METRICS.get((namespace, metric_name))
    if spec is None or set(named) != set(DIMENSION_NAMES):
        return None
    return spec, named["EndpointName"], named["VariantName"]


def parse_statistic(text: str, path: str, *, percentiles: bool = True) -> str | float:
    """A statistic name from STATISTICS, or a percentile `pNN` as its percent.

    Raises:
        InvalidParameterValue: anything else.
    """
    if text in STATISTICS:
        return text
    if percentiles and _PERCENTILE.fullmatch(text):
        return float(text[1:])
    allowed = ", ".join(STATISTICS) + (" or a percentile pNN.NN" if percentiles else "")
    raise InvalidParameterValue(
        f"The value {text} for parameter {path} is not supported: use {allowed}."
    )


def period_aggregates(
    figures: Mapping[int, Mapping[str, Aggregate]], metric_name: str, window: Window
) -> dict[int, Aggregate]:
    """The metric's aggregate per period index of `window`, for periods with a sample."""
    minutes_per_period = window.period_seconds // _MINUTE
    periods: dict[int, Aggregate] = {}
    for minute in sorted(figures):
        aggregate = figures[minute].get(metric_name)
        if aggregate is None or not window.first_minute <= minute <= window.last_minute:
            continue
        index = (minute - window.first_minute) // minutes_per_period
        previous = periods.get(index)
        periods[index] = aggregate if previous is None else previous + aggregate
    return periods


def statistic_value(aggregate: Aggregate, statistic: str | float) -> float | None:
    """A statistic (a name) or a percentile (a percent) of `aggregate`."""
    if isinstance(statistic, str):
        return aggregate.statistic(statistic)
    return aggregate.percentile(statistic)


class MetricQueries:
    """The three metric operations over a `FigureReader`."""

    def __init__(
        self,
        settings: CloudWatchSettings,
        figures: FigureReader,
        clock: Callable[[], float],
    ) -> None:
        """Queries answered from `figures`, within `settings`' limits; `clock` gives wall-clock
        seconds (for ListMetrics' RecentlyActive)."""
        self._settings = settings
        self._figures = figures
        self._clock = clock

    def operations(self) -> dict[str, Callable[[dict[str, object]], Awaitable[dict[str, object]]]]:
        """Operation name -> handler."""
        return {
            "GetMetricStatistics": self.get_metric_statistics,
            "GetMetricData": self.get_metric_data,
            "ListMetrics": self.list_metrics,
        }

    async def get_metric_statistics(self, params: dict[str, object]) -> dict[str, object]:
        """GetMetricStatistics: one metric's statistics per period.

        Raises:
            InvalidParameterValue, InvalidParameterCombination: as CloudWatch words them.
        """
        metric_name = str(params["MetricName"])
        statistics = [str(name) for name in _list(params.get("Statistics"))]
        extended = [str(name) for name in _list(params.get("ExtendedStatistics"))]
        if not statistics and not extended:
            raise InvalidParameterCombination(
                "At least one of the parameters Statistics and ExtendedStatistics must be "
                "specified."
            )
        for name in statistics:
            parse_statistic(name, "Statistics", percentiles=False)
        percents = {name: float(parse_statistic(name, "ExtendedStatistics")) for name in extended}
        window = Window.of(
            _float(params["StartTime"]), _float(params["EndTime"]), _int(params["Period"])
        )
        if window.count > self._settings.max_datapoints:
            raise InvalidParameterCombination(
                f"You have requested up to {window.count:,} datapoints, which exceeds the limit "
                f"of {self._settings.max_datapoints:,}. You may reduce the datapoints requested "
                "by increasing Period, or decreasing the time range."
            )
        resolved = series_key(
            str(params["Namespace"]), metric_name, _dimensions(params), "Dimensions"
        )
        datapoints: list[dict[str, object]] = []
        unit = params.get("Unit")
        if resolved is not None and unit in (None, resolved[0].unit):
            spec, endpoint_name, variant_name = resolved
            key = (endpoint_name, variant_name)
            figures = await self._figures.read([key], window.first_minute, window.last_minute)
            periods = period_aggregates(figures.get(key, {}), spec.name, window)
            for index, aggregate in sorted(periods.items()):
                datapoint: dict[str, object] = {"Timestamp": window.start_of(index)}
                for name in statistics:
                    datapoint[name] = aggregate.statistic(name)
                if percents:
                    values = ValueMap()
                    for name, percent in percents.items():
                        value = aggregate.percentile(percent)
                        if value is not None:
                            values[name] = value
                    datapoint["ExtendedStatistics"] = values
                datapoint["Unit"] = spec.unit
                datapoints.append(datapoint)
        return {"Label": metric_name, "Datapoints": datapoints}

    async def get_metric_data(self, params: dict[str, object]) -> dict[str, object]:
        """GetMetricData with MetricStat queries, paged by MaxDatapoints and NextToken.

        Raises:
            InvalidParameterValue, MissingParameter, InvalidParameterCombination,
            InvalidNextToken: as CloudWatch words them.
        """
        queries = [_dict(query) for query in _list(params["MetricDataQueries"])]
        limit = self._settings.max_metric_data_queries
        if not 1 <= len(queries) <= limit:
            raise InvalidParameterValue(
                f"The collection MetricDataQueries must have between 1 and {limit} items; it "
                f"has {len(queries)}."
            )
        start, end = _float(params["StartTime"]), _float(params["EndTime"])
        max_datapoints = _int(
            params.get("MaxDatapoints", self._settings.max_metric_data_datapoints)
        )
        if max_datapoints < 1:
            raise InvalidParameterValue("The parameter MaxDatapoints must be at least 1.")
        descending = params.get("ScanBy", "TimestampDescending") == "TimestampDescending"
        plans = self._plan_metric_data(queries, start, end)
        digest = _digest({key: value for key, value in params.items() if key != "NextToken"})
        offset = _offset_of(params.get("NextToken"), digest)
        results: list[dict[str, object]] = []
        remaining = max_datapoints
        position = 0
        next_offset: int | None = None
        for query_id, label, window, resolved, statistic in plans:
            timestamps: list[datetime] = []
            values: list[float] = []
            if resolved is not None:
                spec, endpoint_name, variant_name = resolved
                key = (endpoint_name, variant_name)
                figures = await self._figures.read([key], window.first_minute, window.last_minute)
                periods = period_aggregates(figures.get(key, {}), spec.name, window)
                for index in sorted(periods, reverse=descending):
                    value = statistic_value(periods[index], statistic)
                    if value is None:
                        continue
                    if position >= offset:
                        if remaining == 0:
                            next_offset = position if next_offset is None else next_offset
                            break
                        timestamps.append(window.start_of(index))
                        values.append(value)
                        remaining -= 1
                    position += 1
            results.append(
                {
                    "Id": query_id,
                    "Label": label,
                    "Timestamps": timestamps,
                    "Values": values,
                    "StatusCode": "Complete" if next_offset is None else "PartialData",
                    "Messages": [],
                }
            )
        output: dict[str, object] = {"MetricDataResults": results, "Messages": []}
        if next_offset is not None:
            output["NextToken"] = _token(next_offset, digest)
        return output

    def _plan_metric_data(
        self, queries: Sequence[Mapping[str, object]], start: float, end: float
    ) -> list[tuple[str, str, Window, tuple[MetricSpec, str, str] | None, str | float]]:
        """Each returned query's id, label, window, series and statistic, checked."""
        seen: set[str] = set()
        plans = []
        for index, query in enumerate(queries, start=1):
            path = f"MetricDataQueries.member.{index}"
            query_id = str(query["Id"])
            if not _QUERY_ID.fullmatch(query_id):
                raise InvalidParameterValue(
                    f"The value {query_id} for parameter {path}.Id is not valid: it must start "
                    "with a lowercase letter and hold only letters, digits and underscores."
                )
            if query_id in seen:
                raise InvalidParameterValue(
                    f"The value {query_id} for parameter {path}.Id is not unique."
                )
            seen.add(query_id)
            if "Expression" in query:
                raise InvalidParameterValue(
                    f"The parameter {path}.Expression is not supported: splitserve serves no "
                    "metric math (Expression); use MetricStat."
                )
            stat = query.get("MetricStat")
            if not isinstance(stat, dict):
                raise MissingParameter(f"The parameter {path}.MetricStat is required.")
            metric = _dict(stat["Metric"])
            for member in ("Namespace", "MetricName"):
                if member not in metric:
                    raise MissingParameter(
                        f"The parameter {path}.MetricStat.Metric.{member} is required."
                    )
            statistic = parse_statistic(str(stat["Stat"]), f"{path}.MetricStat.Stat")
            window = Window.of(start, end, _int(stat["Period"]), f"{path}.MetricStat.Period")
            if query.get("ReturnData") is False:
                continue
            resolved = series_key(
                str(metric["Namespace"]),
                str(metric["MetricName"]),
                [_dict(item) for item in _list(metric.get("Dimensions"))],
                f"{path}.MetricStat.Metric.Dimensions",
            )
            if resolved is not None and stat.get("Unit", resolved[0].unit) != resolved[0].unit:
                resolved = None
            label = str(query.get("Label") or metric["MetricName"])
            plans.append((query_id, label, window, resolved, statistic))
        if not plans:
            raise InvalidParameterCombination(
                "At least one query of MetricDataQueries must have ReturnData true."
            )
        return plans

    async def list_metrics(self, params: dict[str, object]) -> dict[str, object]:
        """ListMetrics: every metric of every variant with a sample in the retention, filtered,
        500 a page.

        Raises:
            InvalidNextToken: a token this gateway did not hand out for this filter.
        """
        namespace = params.get("Namespace")
        metric_name = params.get("MetricName")
        filters = [_dict(item) for item in _list(params.get("Dimensions"))]
        recent_since = None
        if params.get("RecentlyActive") == "PT3H":
            recent_since = int(self._clock() // _MINUTE) - 180
        metrics: list[dict[str, object]] = []
        for endpoint_name, variant_name, sampled, newest in sorted(await self._figures.series()):
            if recent_since is not None and newest < recent_since:
                continue
            values = {"EndpointName": endpoint_name, "VariantName": variant_name}
            if not all(
                item["Name"] in values
                and item.get("Value", values[str(item["Name"])]) == values[str(item["Name"])]
                for item in filters
            ):
                continue
            for spec in METRICS.values():
                if spec.name != sampled or metric_name not in (None, sampled):
                    continue
                if namespace not in (None, spec.namespace):
                    continue
                metrics.append(
                    {
                        "Namespace": spec.namespace,
                        "MetricName": spec.name,
                        "Dimensions": [
                            {"Name": name, "Value": values[name]} for name in DIMENSION_NAMES
                        ],
                    }
                )
        digest = _digest({key: value for key, value in params.items() if key != "NextToken"})
        offset = _offset_of(params.get("NextToken"), digest)
        page = self._settings.list_metrics_page_size
        output: dict[str, object] = {"Metrics": metrics[offset : offset + page]}
        if offset + page < len(metrics):
            output["NextToken"] = _token(offset + page, digest)
        return output


def _digest(params: Mapping[str, object]) -> str:
    """A short fingerprint of a request's parameters, so a token serves only the query it came
    from."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _token(offset: int, digest: str) -> str:
    return base64.urlsafe_b64encode(f"{offset}:{digest}".encode()).decode()


def _offset_of(token: object, digest: str) -> int:
    """The offset a NextToken carries; 0 without one.

    Raises:
        InvalidNextToken: a token not made by `_token` for this digest.
    """
    if token is None:
        return 0
    try:
        offset_text, _, token_digest = (
            base64.urlsafe_b64decode(str(token).encode()).decode().partition(":")
        )
        offset = int(offset_text)
    except ValueError:
        offset, token_digest = -1, ""
    if offset < 0 or token_digest != digest:
        raise InvalidNextToken("The service cannot understand the NextToken given.")
    return offset


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _dimensions(params: Mapping[str, object]) -> list[dict[str, object]]:
    return [_dict(item) for item in _list(params.get("Dimensions"))]


def _float(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    raise TypeError(f"expected a number, got {type(value).__name__}")


def _int(value: object) -> int:
    if isinstance(value, int):
        return value
    raise TypeError(f"expected an integer, got {type(value).__name__}")
