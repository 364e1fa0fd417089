"""Each instance's output log file: every line its processes print, across restarts, rotated by
size into a few files, kept after the instance stops (a ModelError's LogStreamArn names it)."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from splitserve.workers import process
from splitserve.workers.catalog import InstanceCatalog
from splitserve.workers.images import ImageRegistry
from splitserve.workers.output import OutputFile
from splitserve.workers.process import SpawnLimits
from splitserve.workers.supervisor import Supervisor
from tests.workers.test_supervisor import (
    ARTIFACT_ROOTS,
    FAULT_IMAGE,
    FAULT_SERVER,
    RecordingListener,
    deployment,
    fast_settings,
    processes_with_marker,
)


def _limits() -> SpawnLimits:
    return SpawnLimits(
        cpus=tuple(sorted(os.sched_getaffinity(0)))[:1],
        memory_limit_bytes=None,
        user=None,
        log_lines_per_second=5,
    )


def test_the_file_is_rotated_by_size_keeping_a_few(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "ep" / "A" / "g1" / "0.log"
    output = OutputFile(path, max_bytes=100, backups=2)
    for number in range(60):
        output.write(f"line {number:04d}".encode())  # 10 bytes and a newline
    output.close()
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["0.log", "0.log.1", "0.log.2"]
    assert all(p.stat().st_size <= 100 for p in path.parent.iterdir())
    # The newest lines are in the current file, the ones before in .1.
    assert path.read_text().splitlines()[-1] == "line 0059"
    last_of_older = (path.parent / "0.log.1").read_text().splitlines()[-1]
    assert last_of_older == f"line {int(path.read_text().split()[1]) - 1:04d}"
    # Worker output may hold secrets: only the gateway's user reads it.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_reopened_file_is_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "i.log"
    first = OutputFile(path, max_bytes=1000, backups=1)
    first.write(b"before")
    first.close()
    second = OutputFile(path, max_bytes=1000, backups=1)
    second.write(b"after")
    second.close()
    assert path.read_text() == "before\nafter\n"


def test_no_backups_means_one_file_started_afresh(tmp_path: Path) -> None:
    path = tmp_path / "i.log"
    output = OutputFile(path, max_bytes=20, backups=0)
    for number in range(10):
        output.write(f"line {number}".encode())
    output.close()
    assert [p.name for p in tmp_path.iterdir()] == ["i.log"]
    assert path.read_text().splitlines()[-1] == "line 9"


def test_a_failed_write_stops_the_file_not_the_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output = OutputFile(tmp_path / "i.log", max_bytes=1000, backups=1)

    class Full:
        def write(self, _data: bytes) -> int:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    output.close()
    output._file = Full()  # type: ignore[assignment]
    output.write(b"line")
    output.write(b"line")  # ignored: the file was given up
    output.flush()
    assert caplog.text.count("No space left on device") == 1


async def test_every_line_reaches_the_file_though_the_log_gets_few(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "chatty.log"
    log_file = OutputFile(path, max_bytes=1 << 20, backups=1)
    worker = await process.spawn_worker(
        ["/bin/sh", "-c", "for i in $(seq 1 500); do echo line $i; done"],
        name="chatty",
        environment={"PATH": os.defpath},
        cwd=tmp_path,
        limits=_limits(),
        log_file=log_file,
    )
    assert await worker.wait() == 0
    await worker.kill()
    log_file.close()
    lines = path.read_text().splitlines()
    assert lines[0].startswith(f"--- splitserve: chatty started, pid {worker.pid}, ")
    assert lines[1:] == [f"line {number}" for number in range(1, 501)]


async def test_an_instance_keeps_one_file_across_restarts_and_after_it_stops(
    tmp_path: Path, run_dir: Path, marker: str
) -> None:
    registry = tmp_path / "images.toml"
    registry.write_text(f'[images."{FAULT_IMAGE}"]\ncommand = ["{{python}}", "{FAULT_SERVER}"]\n')
    log_dir = tmp_path / "logs"
    listener = RecordingListener()
    supervisor = Supervisor(
        fast_settings(run_dir, log_dir=log_dir),
        ImageRegistry.load(registry),
        InstanceCatalog(),
        listener,
        artifact_roots=ARTIFACT_ROOTS,
    )
    try:
        fleet = supervisor.fleet(deployment(marker))
        await fleet.start()
        (info,) = fleet.instances()
        assert info.pid is not None
        os.kill(info.pid, signal.SIGKILL)
        await listener.wait_for_kinds(info.name, ["healthy", "unhealthy", "healthy"])
        await fleet.stop()
    finally:
        await supervisor.close()
    assert processes_with_marker(marker) == []
    path = log_dir / f"{info.name}.log"
    assert path == log_dir / "ep" / "A" / "g1" / "0.log"
    starts = [line for line in path.read_text().splitlines() if line.startswith("--- splitserve")]
    assert len(starts) == 2
