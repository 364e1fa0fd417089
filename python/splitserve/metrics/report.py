"""The report `splitserve stats` shows: an endpoint's numbers per period and per variant.

The gateway builds it (`minutes.MinuteStore.report`) and sends it as JSON from
GET /splitserve/stats/{endpoint}; the command reads it back with `StatsReport.from_json` and renders
it (`splitserve.cli_stats`). The names in the JSON are CloudWatch's metric names
(docs/sagemaker-api.md, '4. CloudWatch metrics').
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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
            KeyError, TypeError, ValueError, AttributeError: `data` is not such a report.
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
