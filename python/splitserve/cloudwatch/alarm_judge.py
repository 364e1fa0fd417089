"""Judging one metric alarm: the state its metric's figures give it now, with CloudWatch's reason
and reason data. `alarms.AlarmBook` calls it every minute for every alarm and records the
states that change.

How an alarm is evaluated (docs/sagemaker-api.md, section 7):

- the datapoints are the last EvaluationPeriods whole periods (aligned on the epoch) before now,
  each the alarm's statistic of the metric over the period, or missing when it had no sample;
- a datapoint breaches when it compares with the threshold as ComparisonOperator says; missing
  ones count as TreatMissingData says (`missing`: left out; `notBreaching`, `breaching`;
  `ignore`: the state stays as it is when every datapoint is missing);
- ALARM when at least DatapointsToAlarm (default EvaluationPeriods) datapoints breach, else OK;
  INSUFFICIENT_DATA when no datapoint is left to judge;
- with ExtendedStatistic and EvaluateLowSampleCountPercentile `ignore`, a period with too few
  samples for the percentile (`_significant_samples`) leaves the state as it is.

Reasons follow CloudWatch's wording ("Threshold Crossed: 2 out of the last 3 datapoints [...]
were greater than or equal to the threshold (1.0) ...").
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from splitserve.cloudwatch.alarm_input import dicts, integer, number
from splitserve.cloudwatch.queries import (
    FigureReader,
    Window,
    parse_statistic,
    period_aggregates,
    series_key,
    statistic_value,
)

__all__ = ["judge_alarm"]

_COMPARISONS: Mapping[str, tuple[Callable[[float, float], bool], str]] = {
    "GreaterThanOrEqualToThreshold": (
        lambda value, limit: value >= limit,
        "greater than or equal to",
    ),
    "GreaterThanThreshold": (lambda value, limit: value > limit, "greater than"),
    "LessThanThreshold": (lambda value, limit: value < limit, "less than"),
    "LessThanOrEqualToThreshold": (lambda value, limit: value <= limit, "less than or equal to"),
}


async def judge_alarm(
    definition: Mapping[str, object], reader: FigureReader, now: float
) -> tuple[str, str, str] | None:
    """The state the figures `reader` reads give the alarm of `definition` (PutMetricAlarm's
    members) at `now`: (state, reason, reason data), or None when its state stays as it is
    (`ignore` with nothing to judge, or too few samples for its percentile).

    Raises:
        TypeError, ValueError, KeyError, SplitserveError: a damaged definition.
    """
    period = integer(definition["Period"])
    count = integer(definition["EvaluationPeriods"])
    needed = integer(definition.get("DatapointsToAlarm", count))
    statistic_name = str(definition.get("Statistic") or definition.get("ExtendedStatistic"))
    statistic = parse_statistic(statistic_name, "Statistic")
    threshold = float(number(definition["Threshold"]))
    compare, wording = _COMPARISONS[str(definition["ComparisonOperator"])]
    treat = str(definition.get("TreatMissingData", "missing"))
    end = math.floor(now / period) * period
    window = Window.of(end - count * period, end, period)
    values: list[float | None] = [None] * count
    resolved = series_key(
        str(definition["Namespace"]),
        str(definition["MetricName"]),
        dicts(definition.get("Dimensions")),
        "Dimensions",
    )
    if resolved is not None and definition.get("Unit", resolved[0].unit) == resolved[0].unit:
        spec, endpoint_name, variant_name = resolved
        key = (endpoint_name, variant_name)
        figures = await reader.read([key], window.first_minute, window.last_minute)
        for index, aggregate in period_aggregates(figures.get(key, {}), spec.name, window).items():
            if 0 <= index < count:
                values[index] = statistic_value(aggregate, statistic)
                if (
                    isinstance(statistic, float)
                    and definition.get("EvaluateLowSampleCountPercentile") == "ignore"
                    and aggregate.sample_count < _significant_samples(statistic)
                ):
                    return None  # too few samples for the percentile: the state stays
    present = [(index, value) for index, value in enumerate(values) if value is not None]
    breaching = sum(1 for _, value in present if compare(value, threshold))
    missing = count - len(present)
    if treat == "breaching":
        breaching += missing
    judged = len(present) + (missing if treat in ("breaching", "notBreaching") else 0)
    points = ", ".join(
        f"{value} ({_short(window.first_minute * 60 + index * period)})"
        for index, value in reversed(present)
    )
    reason_data = json.dumps(
        {
            "version": "1.0",
            "queryDate": _iso(now),
            "startDate": _iso(window.first_minute * 60),
            "statistic": statistic_name,
            "period": period,
            "recentDatapoints": [value for _, value in present],
            "threshold": threshold,
            "evaluatedDatapoints": [
                {"timestamp": _iso(window.first_minute * 60 + index * period), "value": value}
                for index, value in reversed(present)
            ],
        }
    )
    if judged == 0:
        if treat == "ignore":
            return None
        return (
            "INSUFFICIENT_DATA",
            f"Insufficient Data: {count} datapoint{'s were' if count > 1 else ' was'} unknown.",
            reason_data,
        )
    if breaching >= needed:
        reason = (
            f"Threshold Crossed: {breaching} out of the last {judged} datapoints [{points}] "
            f"{'were' if breaching > 1 else 'was'} {wording} the threshold ({threshold}) "
            f"(minimum {needed} datapoint{'s' if needed > 1 else ''} for OK -> ALARM "
            "transition)."
        )
        return "ALARM", reason, reason_data
    reason = (
        f"Threshold Crossed: {judged - breaching} out of the last {judged} datapoints "
        f"[{points}] {'were' if judged - breaching > 1 else 'was'} not {wording} the "
        f"threshold ({threshold}) (minimum {needed} datapoint{'s' if needed > 1 else ''} "
        "for ALARM -> OK transition)."
    )
    return "OK", reason, reason_data


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _iso(seconds: float) -> str:
    return _moment(seconds).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


def _short(seconds: float) -> str:
    """CloudWatch's datapoint time in reasons: `03/12/26 10:15:00` (day/month/year)."""
    return _moment(seconds).strftime("%d/%m/%y %H:%M:%S")


def _significant_samples(percent: float) -> int:
    """The fewest samples for which percentile `percent` says something: a p99 needs 100 (one
    sample above it), a p90 10, a p50 2 (chosen; CloudWatch does not publish its rule)."""
    if percent >= 100:
        return 1
    return math.ceil(100 / (100 - percent))
