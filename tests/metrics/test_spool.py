"""The host's record of its replicas' counts, called directly: newer records win, replicas not
heard from count with their last record (counters only), dead ones are folded into one retired
sum and a late write of them is not counted twice."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from splitserve.metrics.exposition import ReplicaFamilies
from splitserve.metrics.prometheus import FAMILY_MERGE
from splitserve.metrics.spool import MetricsSpool, Snapshot, prune_runs, run_directory


def exposition(invocations: int, weight: float = 0.5) -> str:
    """A replica's own exposition: a counter and a gauge."""
    return (
        "# HELP splitserve_invocations_total Requests.\n"
        "# TYPE splitserve_invocations_total counter\n"
        f'splitserve_invocations_total{{variant_name="A"}} {invocations}.0\n'
        "# HELP splitserve_variant_weight Weight.\n"
        "# TYPE splitserve_variant_weight gauge\n"
        f'splitserve_variant_weight{{variant_name="A"}} {weight}\n'
    )


def host() -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())


def dead_replica_id() -> str:
    """An id of this host whose process has exited."""
    process = subprocess.Popen(["true"])
    process.wait()
    return f"{host()}-{process.pid}-0badcafe"


def live_replica_id() -> str:
    """An id of this host whose process runs: this test's."""
    return f"{host()}-{os.getpid()}-feedbeef"


def totals(absent: list[ReplicaFamilies]) -> list[float]:
    """Each absent record's invocations, and whether any gauge came along."""
    values = []
    for replica in absent:
        families = list(replica.families)
        assert all(family.type != "gauge" for family in families)
        values += [value for family in families for value in family.series.values()]
    return values


def test_a_replica_not_heard_from_counts_with_its_newest_record(tmp_path: Path) -> None:
    spool = MetricsSpool(tmp_path / "metrics", FAMILY_MERGE)
    alive = live_replica_id()
    spool.record([Snapshot(alive, 10, exposition(5)), Snapshot("other-host-1-x", 10, "")])
    spool.record([Snapshot(alive, 9, exposition(3))])  # older: ignored
    assert totals(spool.absent({"other-host-1-x"})) == [5.0]
    spool.record([Snapshot(alive, 11, exposition(7))])
    assert totals(spool.absent({"other-host-1-x"})) == [7.0]
    # Heard from live: its record is not added (the live figures are).
    assert totals(spool.absent({alive, "other-host-1-x"})) == []


def test_dead_replicas_are_folded_into_one_sum_counted_once(tmp_path: Path) -> None:
    spool = MetricsSpool(tmp_path / "metrics", FAMILY_MERGE)
    first, second = dead_replica_id(), dead_replica_id()
    spool.record([Snapshot(first, 1, exposition(4)), Snapshot(second, 1, exposition(6))])
    assert totals(spool.absent(set())) == [10.0]
    assert sorted(path.name for path in (tmp_path / "metrics").glob("*.prom")) == ["retired.prom"]
    # A scrape that read the first just before it died writes it late: not counted again.
    spool.record([Snapshot(first, 2, exposition(9))])
    assert totals(spool.absent(set())) == [10.0]
    another = dead_replica_id()
    spool.record([Snapshot(another, 1, exposition(1))])
    assert totals(spool.absent(set())) == [11.0]


def test_damaged_records_and_bad_ids_are_left_out(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    spool = MetricsSpool(directory, FAMILY_MERGE)
    spool.record([Snapshot("../escape", 1, exposition(1)), Snapshot("retired", 1, exposition(1))])
    assert not (tmp_path / "escape.prom").exists()
    assert totals(spool.absent(set())) == []
    (directory / f"{live_replica_id()}.prom").write_text("# splitserve snapshot 1\n{{{ garbage\n")
    (directory / f"{dead_replica_id()}.prom").write_bytes(b"\xff\xfe not text")
    assert totals(spool.absent(set())) == []
    assert not list(directory.glob(f"{host()}-*-0badcafe.prom"))  # the dead one's was dropped


def test_each_run_has_its_own_spool_and_finished_runs_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "metrics"
    process = subprocess.Popen(["true"])
    process.wait()
    finished = run_directory(root, process.pid)
    current = run_directory(root, os.getpid())
    running = run_directory(root, os.getppid())
    for directory in (finished, current, running, root / "not-a-run"):
        MetricsSpool(directory, FAMILY_MERGE).record([Snapshot("other-host-1-x", 1, "")])
    prune_runs(root, current)
    assert sorted(path.name for path in root.iterdir()) == sorted(
        [current.name, running.name, "not-a-run"]
    )
    prune_runs(tmp_path / "missing", current)  # nothing to prune: no error
