"""The client side of `splitserve stats` and `splitserve weights`: fetch an endpoint's report or
weight history from a gateway, print it (`run_stats`, `run_weights`: what `cli` dispatches to).

Part of the face, beside `cli`: the report model is the gateway's (`metrics.report`), the call goes
through the command line's one gateway client (`gateway_client`), and this module only turns the
answers into the tables a person reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from datetime import UTC, datetime
from typing import Any

from splitserve.config import Settings
from splitserve.gateway_client import GatewayClient, GatewayRequestError
from splitserve.metrics.report import StatsReport

_DEFAULTS = Settings()


class StatsUnavailable(Exception):
    """The gateway could not be reached, or refused the request; the message says which."""


def fetch_report(
    gateway_url: str, endpoint_name: str, since_seconds: int, period_seconds: int, timeout: float
) -> StatsReport:
    """GET the endpoint's report from a running gateway at `gateway_url` (blocking).

    Raises:
        StatsUnavailable: no answer, an error answer (its Message), or not a report.
    """
    client = GatewayClient(gateway_url, timeout)
    path = f"/splitserve/stats/{urllib.parse.quote(endpoint_name, safe='')}"
    try:
        document = client.get_json(path, {"since": since_seconds, "per": period_seconds})
    except GatewayRequestError as error:
        raise StatsUnavailable(error.message) from error
    try:
        return StatsReport.from_json(document)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise StatsUnavailable(f"{gateway_url} did not answer with a stats report") from error


def fetch_weights(gateway_url: str, endpoint_name: str, timeout: float) -> dict[str, Any]:
    """GET the endpoint's weight history from a running gateway at `gateway_url` (blocking).

    Raises:
        StatsUnavailable: no answer, an error answer (its Message), or not a weight history.
    """
    try:
        document = GatewayClient(gateway_url, timeout).weight_history(endpoint_name)
    except GatewayRequestError as error:
        raise StatsUnavailable(error.message) from error
    if not isinstance(document, dict) or not isinstance(document.get("WeightChanges"), list):
        raise StatsUnavailable(f"{gateway_url} did not answer with a weight history")
    return document


def render_weights(document: dict[str, Any]) -> str:
    """A weight history (GET /splitserve/endpoints/<name>/weights) as a table: one row per
    change, its time, cause, and each variant's weight with its share of the total.

    Raises:
        StatsUnavailable: a change is not {Time, Cause, Weights: [{VariantName, Weight}]}.
    """
    rows: list[tuple[str, str, dict[str, float]]] = []
    variants: list[str] = []
    try:
        for change in document["WeightChanges"]:
            weights = {str(e["VariantName"]): float(e["Weight"]) for e in change["Weights"]}
            when = datetime.fromtimestamp(float(change["Time"]), UTC)
            rows.append((when.strftime("%Y-%m-%d %H:%M:%S"), str(change["Cause"]), weights))
            variants += [name for name in weights if name not in variants]
    except (KeyError, TypeError, ValueError, OverflowError, OSError) as error:
        raise StatsUnavailable("the gateway's weight history could not be read") from error
    name = document.get("EndpointName", "?")
    if not rows:
        return f"Endpoint {name}: no weight changes recorded\n"
    header = ["time (UTC)", "cause", *variants]
    table = [header]
    for time_text, cause, weights in rows:
        total = sum(weights.values())
        cells = [
            ""
            if variant not in weights
            else f"{weights[variant]:g} ({weights[variant] / total:.0%})"
            if total > 0
            else f"{weights[variant]:g}"
            for variant in variants
        ]
        table.append([time_text, cause, *cells])
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    lines = [f"Endpoint {name}: {len(rows)} weight changes, oldest first"]
    for row in table:
        left = [cell.ljust(width) for cell, width in zip(row[:2], widths, strict=False)]
        right = [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(left + right).rstrip())
    return "\n".join(lines) + "\n"


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


def run_stats(args: argparse.Namespace) -> int:
    """Print the endpoint's per-period table (or JSON) from the gateway at `args.url`."""
    try:
        report = fetch_report(
            args.url, args.endpoint, args.since, args.per, _DEFAULTS.stats.client_timeout_seconds
        )
    except StatsUnavailable as error:
        print(f"splitserve: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        sys.stdout.write(render_table(report, errors=args.errors, latency=args.latency))
    return 0


def run_weights(args: argparse.Namespace) -> int:
    """Print the endpoint's weight history (or its JSON) from the gateway at `args.url`."""
    try:
        document = fetch_weights(args.url, args.endpoint, _DEFAULTS.stats.client_timeout_seconds)
        text = json.dumps(document, indent=2) + "\n" if args.json else render_weights(document)
    except StatsUnavailable as error:
        print(f"splitserve: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
