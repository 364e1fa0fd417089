"""The host's record of its replicas' counts, so a replica that dies does not take them along.

A host's /metrics sums its live replicas' counters (`metrics.host`). Were a replica that exits
(killed, crashed, restarted, or stopped cleanly) simply missing from the next scrape, the host's
counters would go down, and Prometheus would read the drop as a counter reset: rate() would count
everything left as new. So every scrape writes what it read of each replica (its own exposition
and those its peers answered with) into a host-local directory, one file per replica
(`<replica id>.prom`), and a stopping replica writes its own last time. A scrape adds the counters,
histograms and summaries of every replica it did not hear from live: a peer that did not answer
counts with what the last scrape saw of it, a dead one with its last record. Gauges of a replica
not heard from are left out: they describe a process, not a total.

The spool belongs to one run of `serve --processes N`: its directory is named after the
supervising process (`run_directory`), so a new run's counters start from zero, as a single
gateway's do, and the directories of runs whose supervisor is gone are removed (`prune_runs`).

A replica whose process is gone (by the pid in its id; `cluster.view.new_replica_id`) is folded
into `retired.prom`, the sum of every dead replica, and its id is listed in `folded` so that a
late write of it (a scrape that read it just before it died) is not counted twice. The files are
written whole (a temporary file then a rename) under an exclusive lock on `lock`, and a record
replaces a replica's file only when it is newer (its snapshot number: the replica's monotonic
clock when it made the exposition). Every method blocks: callers run them off the event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from splitserve.metrics.exposition import (
    Family,
    MalformedExposition,
    Merge,
    ReplicaFamilies,
    merge_families,
    parse_exposition,
    render,
    rule_of,
)

__all__ = ["MetricsSpool", "Snapshot", "prune_runs", "run_directory"]

_SUFFIX = ".prom"
_RETIRED = "retired"
_FOLDED = "folded"
_LOCK = "lock"
_HEADER = "# splitserve snapshot "


@dataclass(frozen=True)
class Snapshot:
    """One replica's own exposition as a scrape read it.

    Attributes:
        replica_id: the replica's id (letters, digits, '-' and '.').
        sequence: when the replica made it, on the replica's monotonic clock (nanoseconds).
        text: the exposition, Prometheus's text format.
    """

    replica_id: str
    sequence: int
    text: str


class MetricsSpool:
    """The records of one host's replicas, in `directory` (made when missing)."""

    def __init__(self, directory: Path, rules: Mapping[str, Merge]) -> None:
        """A spool in `directory`; `rules` are the families' merge rules
        (`prometheus.FAMILY_MERGE`): only families that add up are kept of a replica not heard
        from live."""
        self._directory = directory
        self._rules = rules
        self._host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())

    def record(self, snapshots: Sequence[Snapshot]) -> None:
        """Keep each snapshot as its replica's record, unless a newer one is kept or the replica
        was folded into the retired sum. A replica id that cannot be a file name is ignored."""
        with self._locked():
            folded = self._folded()
            for snapshot in snapshots:
                if not _valid_id(snapshot.replica_id) or snapshot.replica_id in folded:
                    continue
                path = self._directory / (snapshot.replica_id + _SUFFIX)
                if _sequence(path) >= snapshot.sequence:
                    continue
                _write(path, f"{_HEADER}{snapshot.sequence}\n{snapshot.text}")

    def absent(self, live: Collection[str]) -> list[ReplicaFamilies]:
        """The summed families of every replica recorded here but not in `live` (the replicas
        a scrape heard from): the retired sum and each other replica's record, dead ones folded
        into the retired sum first. A record that does not parse is left out (and, for a dead
        replica, dropped)."""
        with self._locked():
            folded = self._folded()
            retired = self._read(self._directory / (_RETIRED + _SUFFIX))
            newly_folded: list[str] = []
            records: list[list[Family]] = []
            for path in sorted(self._directory.glob("*" + _SUFFIX)):
                replica_id = path.name[: -len(_SUFFIX)]
                if replica_id == _RETIRED or replica_id in live or replica_id in folded:
                    continue
                families = self._read(path)
                if self._alive(replica_id):
                    if families is not None:
                        records.append(families)
                    continue
                if families is not None:
                    retired = self._summed([*([retired] if retired else []), families])
                newly_folded.append(replica_id)
            if newly_folded:
                _write(self._directory / (_RETIRED + _SUFFIX), render(retired or []).decode())
                _write(
                    self._directory / _FOLDED, "".join(f"{i}\n" for i in [*folded, *newly_folded])
                )
                for replica_id in newly_folded:
                    with contextlib.suppress(FileNotFoundError):
                        (self._directory / (replica_id + _SUFFIX)).unlink()
        return [ReplicaFamilies(families, False) for families in [*records, retired] if families]

    def _summed(self, sources: Sequence[list[Family]]) -> list[Family]:
        replicas = [ReplicaFamilies(families, False) for families in sources]
        return merge_families(replicas[0], replicas[1:], self._rules)

    def _read(self, path: Path) -> list[Family] | None:
        """The families of a record that add up, or None when there is none or it is damaged."""
        try:
            text = path.read_text()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        try:
            families = parse_exposition(text)
        except MalformedExposition:
            return None
        return [family for family in families if rule_of(family, self._rules) is Merge.SUM]

    def _folded(self) -> set[str]:
        try:
            return set((self._directory / _FOLDED).read_text().split())
        except FileNotFoundError:
            return set()

    def _alive(self, replica_id: str) -> bool:
        """Whether the replica's process may still run: a replica of another host, or one whose
        id does not say its pid, is taken as alive (it is never folded)."""
        parts = replica_id.rsplit("-", 2)
        if len(parts) != 3 or parts[0] != self._host or not parts[1].isdigit():
            return True
        return _pid_alive(int(parts[1]))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Only the gateway's user reads what its replicas counted.
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with (self._directory / _LOCK).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


_RUN_PREFIX = "supervisor-"


def run_directory(root: Path, supervisor_pid: int) -> Path:
    """The spool directory, under `root`, of the run whose supervising process is
    `supervisor_pid`."""
    return root / f"{_RUN_PREFIX}{supervisor_pid}"


def prune_runs(root: Path, current: Path) -> None:
    """Remove the spool directories under `root` of runs whose supervisor has exited (never
    `current`). Blocks."""
    try:
        children = list(root.iterdir())
    except FileNotFoundError:
        return
    for child in children:
        pid = child.name.removeprefix(_RUN_PREFIX)
        if child == current or child.name == pid or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        shutil.rmtree(child, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _valid_id(replica_id: str) -> bool:
    return (
        0 < len(replica_id) <= 200
        and all(c.isascii() and (c.isalnum() or c in "-.") for c in replica_id)
        and replica_id not in (_RETIRED, ".", "..")
    )


def _sequence(path: Path) -> int:
    """The snapshot number of a record, -1 when there is none (or it is damaged)."""
    try:
        with path.open() as file:
            first = file.readline()
    except FileNotFoundError:
        return -1
    if not first.startswith(_HEADER):
        return -1
    try:
        return int(first[len(_HEADER) :])
    except ValueError:
        return -1


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
