"""One gateway per state directory: the lock file holds the owner's pid, a second taker is
refused naming it, and a released (or dead) owner's lock can be taken again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from splitserve.cli import build_parser, settings_from_args
from splitserve.config import LOCK_FILE_NAME
from splitserve.wiring.lock import StateDirInUse, StateDirLock


def test_the_owner_s_pid_is_written_and_a_second_taker_is_refused(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE_NAME
    lock = StateDirLock.acquire(path)
    try:
        assert path.read_text() == f"{os.getpid()}\n"
        # flock locks belong to an open file: a second open, even in this process, is refused.
        with pytest.raises(StateDirInUse) as refused:
            StateDirLock.acquire(path)
        assert str(refused.value) == (
            f"the state directory {tmp_path} is in use by another gateway (pid {os.getpid()}); "
            "stop it, or give this one its own --state-dir"
        )
    finally:
        lock.release()
    lock.release()  # idempotent
    again = StateDirLock.acquire(path)
    again.release()


def test_a_stale_file_from_a_dead_owner_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE_NAME
    path.write_text("999999\n")  # a gateway killed with -9 left its pid; the kernel freed the lock
    lock = StateDirLock.acquire(path)
    try:
        assert path.read_text() == f"{os.getpid()}\n"
    finally:
        lock.release()


def test_an_owner_that_wrote_no_pid_yet_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE_NAME
    lock = StateDirLock.acquire(path)
    try:
        path.write_text("")
        with pytest.raises(StateDirInUse, match="a process whose pid it has not written"):
            StateDirLock.acquire(path)
    finally:
        lock.release()


def test_the_lock_file_is_in_the_state_directory(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--state-dir", str(tmp_path)])
    settings = settings_from_args(args)
    assert settings.lock_file == tmp_path / LOCK_FILE_NAME
    assert settings.workers.log_dir == tmp_path / "logs"


def test_log_options_reach_the_settings() -> None:
    args = build_parser().parse_args(
        ["serve", "--log-level", "debug", "--log-format", "json", "--access-log"]
    )
    logs = settings_from_args(args).logs
    assert (logs.level, logs.format, logs.access_log) == ("DEBUG", "json", "-")
    defaults = settings_from_args(build_parser().parse_args(["serve"])).logs
    assert (defaults.format, defaults.access_log) == ("text", None)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--log-level", "loud"], "not a log level: 'loud'"),
        (["--log-format", "xml"], "invalid choice: 'xml'"),
    ],
)
def test_bad_log_options_are_refused_by_name(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", *argv])
    assert exited.value.code == 2
    assert words in capsys.readouterr().err
