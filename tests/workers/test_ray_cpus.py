"""The host's book of the CPUs Ray-placed servers are pinned to (no cluster needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from splitserve.workers import ray_cpus


def me() -> str:
    """This test process, as a holder."""
    holder = ray_cpus.process_identity(os.getpid())
    assert holder is not None
    return holder


def test_instances_get_disjoint_cpus_lowest_first(tmp_path: Path) -> None:
    assert ray_cpus.take_cpus(tmp_path, "a", 2, [0, 1, 2, 3], me()) == (0, 1)
    assert ray_cpus.take_cpus(tmp_path, "b", 1, [3, 2, 1, 0], me()) == (2,)
    assert ray_cpus.held_cpus(tmp_path) == {"a": (0, 1), "b": (2,)}


def test_fewer_free_cpus_than_asked_means_no_pinning(tmp_path: Path) -> None:
    assert ray_cpus.take_cpus(tmp_path, "a", 2, [0, 1, 2], me()) == (0, 1)
    # One CPU is left, and the node has fewer CPUs than this instance's type asks for at all.
    assert ray_cpus.take_cpus(tmp_path, "b", 2, [0, 1, 2], me()) == ()
    assert ray_cpus.take_cpus(tmp_path, "c", 8, [0, 1, 2], me()) == ()
    assert ray_cpus.held_cpus(tmp_path) == {"a": (0, 1)}


def test_released_cpus_and_a_retaken_name_are_given_again(tmp_path: Path) -> None:
    assert ray_cpus.take_cpus(tmp_path, "a", 2, [0, 1], me()) == (0, 1)
    # A replacement actor of the same name replaces its predecessor's reservation.
    assert ray_cpus.take_cpus(tmp_path, "a", 2, [0, 1], me()) == (0, 1)
    ray_cpus.release_cpus(tmp_path, "a")
    ray_cpus.release_cpus(tmp_path, "never-held")
    assert ray_cpus.take_cpus(tmp_path, "b", 2, [0, 1], me()) == (0, 1)


def test_the_cpus_of_a_process_that_is_gone_are_free(tmp_path: Path) -> None:
    # An actor killed with its node's raylet never gives its CPUs back itself.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = ray_cpus.process_identity(child.pid)
        assert holder is not None
        assert ray_cpus.take_cpus(tmp_path, "dead", 2, [0, 1], holder) == (0, 1)
        assert ray_cpus.take_cpus(tmp_path, "b", 2, [0, 1], me()) == ()
    finally:
        child.kill()
        child.wait()
    assert ray_cpus.process_identity(child.pid) is None
    assert ray_cpus.take_cpus(tmp_path, "b", 2, [0, 1], me()) == (0, 1)
    assert ray_cpus.held_cpus(tmp_path) == {"b": (0, 1)}


def test_a_reused_pid_does_not_keep_the_cpus(tmp_path: Path) -> None:
    pid = os.getpid()
    stale = f"{pid}:1"  # this pid, but a start time that is not this process's
    assert ray_cpus.take_cpus(tmp_path, "old", 2, [0, 1], stale) == (0, 1)
    assert ray_cpus.take_cpus(tmp_path, "new", 2, [0, 1], me()) == (0, 1)


def test_a_damaged_book_starts_over(tmp_path: Path) -> None:
    (tmp_path / ray_cpus.BOOK_FILE).write_text('{"a": [1, 2], "b": ')
    assert ray_cpus.take_cpus(tmp_path, "c", 1, [0], me()) == (0,)
    (tmp_path / ray_cpus.BOOK_FILE).write_text('["not", "a", "table"]')
    assert ray_cpus.held_cpus(tmp_path) == {}
