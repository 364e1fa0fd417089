"""CloudWatch's tables over both backends (SQLite file and PostgreSQL): alarms and their history,
per-minute figures by source, the series ListMetrics reads, and damaged figures left out."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitserve.cloudwatch.store import AlarmRow, CloudWatchStore, HistoryRow, StoredMinute
from splitserve.config import DatabaseSettings
from splitserve.database import Database, open_database

_QUICK = DatabaseSettings(connect_timeout_seconds=1.0, statement_timeout_seconds=2.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A new state database (the SQLite file made as the control store would have)."""
    if request.param == "sqlite":
        path = tmp_path / "state.sqlite3"
        sqlite3.connect(path).close()
        url = f"sqlite://{path}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = open_database(url, _QUICK)
    try:
        yield opened
    finally:
        opened.close()


def _alarm(name: str, state: str = "OK", when: float = 1.0) -> AlarmRow:
    return AlarmRow(name, '{"MetricName": "Invocations"}', state, "why", None, when, when, 0.5)


def test_alarms_are_replaced_and_keep_their_newest_history(database: Database) -> None:
    store = CloudWatchStore.open(database)
    CloudWatchStore.open(database)  # a second replica: the tables are there already
    history = [HistoryRow("a", float(i), "StateUpdate", f"s{i}", "{}") for i in range(5)]
    store.put_alarm(_alarm("a"), history, keep_history=3)
    store.put_alarm(_alarm("a", "ALARM", 2.0), [HistoryRow("a", 9.0, "Action", "s9", "{}")], 3)
    store.put_alarm(_alarm("b"), [], 3)
    assert store.alarms() == [_alarm("a", "ALARM", 2.0), _alarm("b")]
    assert [item.summary for item in store.history("a")] == ["s3", "s4", "s9"]
    assert len(store.history(None)) == 3
    store.delete_alarms(["a"])
    assert [alarm.name for alarm in store.alarms()] == ["b"]
    assert store.history("a") == []
    store.close()
    assert database.query("SELECT 1") == [(1,)]  # a database handed in stays open


def test_minutes_by_source_retention_and_series(database: Database) -> None:
    store = CloudWatchStore.open(database)
    figures = {"Invocations": {"n": 1, "sum": 2.5}}
    store.write_minutes("r1", [StoredMinute("ep", "A", 10, figures)], oldest=0)
    store.write_minutes(
        "r1", [StoredMinute("ep", "A", 10, {"Invocations": {"n": 2, "sum": 3.0}})], oldest=0
    )
    store.write_minutes("r2", [StoredMinute("ep", "B", 11, {"ModelLatency": {"n": 1}})], 0)
    own = store.read_minutes(0, 100, None, "r1", own=True)
    assert own == [StoredMinute("ep", "A", 10, {"Invocations": {"n": 2, "sum": 3.0}})]
    others = store.read_minutes(0, 100, [("ep", "B"), ("ep", "A")], "r1", own=False)
    assert others == [StoredMinute("ep", "B", 11, {"ModelLatency": {"n": 1}})]
    assert sorted(store.series()) == [
        ("ep", "A", "Invocations", 10),
        ("ep", "B", "ModelLatency", 11),
    ]
    store.write_minutes("r1", [], oldest=11)  # the retention drops minute 10
    assert store.read_minutes(0, 100, None, "r1", own=True) == []


def test_damaged_figures_are_left_out(database: Database) -> None:
    store = CloudWatchStore.open(database)
    store.write_minutes("r1", [StoredMinute("ep", "A", 5, {"Invocations": {"n": 1}})], 0)
    with database.transaction(write=True) as transaction:
        for source, figures in (("r2", "not json"), ("r3", "[1, 2]"), ("r4", '{"a": NaN')):
            transaction.execute(
                "INSERT INTO cloudwatch_minutes VALUES (?, 'ep', 'A', 6, ?)", (source, figures)
            )
    assert store.series() == [("ep", "A", "Invocations", 5)]
    assert store.read_minutes(0, 10, None, "r1", own=False) == []
