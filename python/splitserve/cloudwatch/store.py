"""CloudWatch's tables in the gateway's state database: alarms, their history, per-minute figures.

The state file (`Settings.state_file`) is the control plane's SQLite database; CloudWatch keeps
its own tables in it (`cloudwatch_*`), through its own connection, and never touches the control
plane's. Every method blocks (SQLite): callers run them off the event loop
(`asyncio.to_thread`); one lock serialises them, as the connection is shared by those threads.

Per-minute figures are kept per writer (`source`: one id per gateway process), so figures of
several processes, or of one process before and after a restart, add up instead of overwriting
each other.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = ["AlarmRow", "CloudWatchStore", "HistoryRow", "StoredMinute"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cloudwatch_alarms (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    reason_data TEXT,
    state_updated REAL NOT NULL,
    state_transitioned REAL NOT NULL,
    configuration_updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cloudwatch_alarm_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    timestamp REAL NOT NULL,
    item_type TEXT NOT NULL,
    summary TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cloudwatch_alarm_history_by_name
    ON cloudwatch_alarm_history (name, id);
CREATE TABLE IF NOT EXISTS cloudwatch_minutes (
    source TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    variant TEXT NOT NULL,
    minute INTEGER NOT NULL,
    figures TEXT NOT NULL,
    PRIMARY KEY (endpoint, variant, minute, source)
);
CREATE INDEX IF NOT EXISTS cloudwatch_minutes_by_minute ON cloudwatch_minutes (minute);
"""


@dataclass(frozen=True)
class AlarmRow:
    """One alarm as stored: its PutMetricAlarm parameters (JSON) and its state."""

    name: str
    definition: str
    state: str
    reason: str
    reason_data: str | None
    state_updated: float
    state_transitioned: float
    configuration_updated: float


@dataclass(frozen=True)
class HistoryRow:
    """One alarm history item."""

    name: str
    timestamp: float
    item_type: str
    summary: str
    data: str


@dataclass(frozen=True)
class StoredMinute:
    """One variant's figures of one minute from one source (metric -> aggregate JSON)."""

    endpoint: str
    variant: str
    minute: int
    figures: Mapping[str, object]


class CloudWatchStore:
    """CloudWatch's tables, through one connection of its own."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        """A store over an open connection (see `open`)."""
        self._connection = connection
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, busy_timeout_seconds: float = 5.0) -> CloudWatchStore:
        """Open the state database at `path` (which the control store has made) and create
        CloudWatch's tables if they are missing. Blocks.

        Raises:
            sqlite3.Error: the file cannot be opened or written.
        """
        connection = sqlite3.connect(
            f"file:{quote(str(path.absolute()))}?mode=rw",
            uri=True,
            timeout=busy_timeout_seconds,
            check_same_thread=False,
            isolation_level=None,
        )
        try:
            connection.executescript(_SCHEMA)
        except sqlite3.Error:
            connection.close()
            raise
        return cls(connection)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._connection.close()

    # --- alarms ---------------------------------------------------------------------------------

    def alarms(self) -> list[AlarmRow]:
        """Every alarm, by name."""
        with self._lock:
            rows = self._connection.execute(
                "SELECT name, definition, state, reason, reason_data, state_updated,"
                " state_transitioned, configuration_updated FROM cloudwatch_alarms ORDER BY name"
            ).fetchall()
        return [AlarmRow(*row) for row in rows]

    def put_alarm(self, alarm: AlarmRow, history: Iterable[HistoryRow], keep_history: int) -> None:
        """Write `alarm` (new or replacing its row) and append `history`, in one transaction;
        keep the newest `keep_history` history items of the alarm."""
        with self._lock, self._connection:
            self._connection.execute("BEGIN")
            self._connection.execute(
                "INSERT OR REPLACE INTO cloudwatch_alarms VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    alarm.name,
                    alarm.definition,
                    alarm.state,
                    alarm.reason,
                    alarm.reason_data,
                    alarm.state_updated,
                    alarm.state_transitioned,
                    alarm.configuration_updated,
                ),
            )
            self._append_history(history, keep_history)

    def delete_alarms(self, names: Iterable[str]) -> None:
        """Delete alarms and their history."""
        with self._lock, self._connection:
            self._connection.execute("BEGIN")
            for name in names:
                self._connection.execute("DELETE FROM cloudwatch_alarms WHERE name = ?", (name,))
                self._connection.execute(
                    "DELETE FROM cloudwatch_alarm_history WHERE name = ?", (name,)
                )

    def history(self, name: str | None) -> list[HistoryRow]:
        """The history of one alarm (or of all), oldest first."""
        query = "SELECT name, timestamp, item_type, summary, data FROM cloudwatch_alarm_history"
        arguments: tuple[str, ...] = ()
        if name is not None:
            query += " WHERE name = ?"
            arguments = (name,)
        with self._lock:
            rows = self._connection.execute(query + " ORDER BY id", arguments).fetchall()
        return [HistoryRow(*row) for row in rows]

    def _append_history(self, history: Iterable[HistoryRow], keep: int) -> None:
        names = set()
        for item in history:
            names.add(item.name)
            self._connection.execute(
                "INSERT INTO cloudwatch_alarm_history (name, timestamp, item_type, summary, data)"
                " VALUES (?, ?, ?, ?, ?)",
                (item.name, item.timestamp, item.item_type, item.summary, item.data),
            )
        for name in names:
            self._connection.execute(
                "DELETE FROM cloudwatch_alarm_history WHERE name = ? AND id NOT IN"
                " (SELECT id FROM cloudwatch_alarm_history WHERE name = ?"
                " ORDER BY id DESC LIMIT ?)",
                (name, name, keep),
            )

    # --- per-minute figures ---------------------------------------------------------------------

    def write_minutes(self, source: str, minutes: Iterable[StoredMinute], oldest: int) -> None:
        """Write (or rewrite) `source`'s figures of some minutes, and drop every source's
        figures older than minute `oldest` (the retention), in one transaction."""
        with self._lock, self._connection:
            self._connection.execute("BEGIN")
            self._connection.executemany(
                "INSERT OR REPLACE INTO cloudwatch_minutes VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        source,
                        minute.endpoint,
                        minute.variant,
                        minute.minute,
                        json.dumps(minute.figures),
                    )
                    for minute in minutes
                ],
            )
            self._connection.execute("DELETE FROM cloudwatch_minutes WHERE minute < ?", (oldest,))

    def read_minutes(
        self,
        first: int,
        last: int,
        keys: Iterable[tuple[str, str]] | None,
        source: str,
        *,
        own: bool,
    ) -> list[StoredMinute]:
        """The figures of minutes `first` to `last` of the variants `keys` (None: all): those
        `source` wrote (`own`), or those every other source wrote (not `own`)."""
        query = (
            "SELECT endpoint, variant, minute, figures FROM cloudwatch_minutes"
            f" WHERE minute BETWEEN ? AND ? AND source {'=' if own else '!='} ?"
        )
        rows: list[tuple[str, str, int, str]] = []
        with self._lock:
            if keys is None:
                rows = self._connection.execute(query, (first, last, source)).fetchall()
            else:
                for endpoint, variant in keys:
                    rows += self._connection.execute(
                        query + " AND endpoint = ? AND variant = ?",
                        (first, last, source, endpoint, variant),
                    ).fetchall()
        result = []
        for endpoint, variant, minute, figures in rows:
            try:
                decoded = json.loads(figures)
            except ValueError:
                continue  # a damaged row shows as a minute without figures
            if isinstance(decoded, dict):
                result.append(StoredMinute(endpoint, variant, minute, decoded))
        return result

    def series(self) -> list[tuple[str, str, str, int]]:
        """Every (endpoint, variant, metric, newest minute) with stored figures (rows that are not
        JSON are left out)."""
        with self._lock:
            rows = self._connection.execute(
                "SELECT endpoint, variant, metric.key, MAX(minute)"
                " FROM cloudwatch_minutes, json_each(cloudwatch_minutes.figures) AS metric"
                " WHERE json_valid(figures) AND json_type(figures) = 'object'"
                " GROUP BY endpoint, variant, metric.key"
            ).fetchall()
        return [
            (endpoint, variant, str(metric), int(minute))
            for endpoint, variant, metric, minute in rows
        ]
