"""`splitserve stats` on the command line's side: the table, durations, and fetching the report."""

from __future__ import annotations

import json

import pytest

from splitserve.cli_stats import StatsUnavailable, fetch_report, format_duration, render_table
from splitserve.config import StatsSettings
from splitserve.metrics.minutes import MinuteStore
from tests.support.clock import FakeClock
from tests.support.http import Answer, Received, answering_server, free_port


def test_table_has_a_row_per_period_and_a_column_per_variant() -> None:
    clock = FakeClock()
    store = MinuteStore(StatsSettings(retention_minutes=60), clock)
    first = store.variant("ab", "Variant1")
    store.variant("ab", "Variant2")
    for _ in range(12):
        first.count_invocation()
        first.observe_latency(0.0042)
    first.count_model_error(400)
    clock.advance(60)
    text = render_table(store.report("ab", 180, 60))
    assert text.splitlines() == [
        "Endpoint ab: per 1m, 2 periods",
        "time (UTC)         Variant1   Variant2",
        "2024-05-01 12:00         12",
        "2024-05-01 12:01",
    ]
    wide = render_table(store.report("ab", 120, 60), errors=True, latency=True).splitlines()
    assert wide[1].split() == ["Variant1", "Variant2"]
    assert wide[2].split()[2:9] == ["invocations", "4xx", "5xx", "model", "errors", "p50", "ms"]
    assert wide[3].split()[2:] == ["12", "1", "0", "1", "4.20", "4.20"]


def test_format_duration() -> None:
    assert [format_duration(s) for s in (60, 900, 3600, 5400, 86400, 90)] == [
        "1m",
        "15m",
        "1h",
        "90m",
        "1d",
        "90s",
    ]


def _stats_answer(request: Received) -> Answer:
    """/splitserve/stats/ok answers a report, anything else a 400 as the gateway's."""
    if request.path.startswith("/splitserve/stats/ok?"):
        report = {
            "EndpointName": "ok",
            "PeriodSeconds": 60,
            "StartTime": 0,
            "EndTime": 60,
            "Variants": [],
            "Periods": [{"StartTime": 0, "Variants": {}}],
        }
        return Answer(200, json.dumps(report).encode())
    if request.path.startswith("/splitserve/stats/odd?"):
        return Answer(200, b'{"EndpointName": "odd"}')
    return Answer(400, b'{"__type": "ValidationException", "Message": "no such thing"}')


def test_fetch_report() -> None:
    with answering_server(_stats_answer) as server:
        report = fetch_report(server.url + "/", "ok", 900, 60, timeout=5)
        assert report.endpoint_name == "ok"
        assert server.received[-1].path == "/splitserve/stats/ok?since=900&per=60"
        with pytest.raises(StatsUnavailable, match=r"^no such thing$"):
            fetch_report(server.url, "missing", 900, 60, timeout=5)
        with pytest.raises(StatsUnavailable, match="did not answer with a stats report"):
            fetch_report(server.url, "odd", 900, 60, timeout=5)


def test_fetch_report_without_a_gateway() -> None:
    with pytest.raises(StatsUnavailable, match="cannot reach the gateway"):
        fetch_report(f"http://127.0.0.1:{free_port()}", "ep", 900, 60, timeout=5)
