"""Which CPUs of a host the servers of Ray-placed instances are pinned to: one small book per
host, shared by every instance actor on it (docs/architecture.md, "Placement").

Ray reserves logical CPUs (`num_cpus`) but does not pin: the actor pins its server itself. It
takes the instance type's vCPU count of CPUs from its process's affinity set that no other live
splitserve server on the host holds, lowest numbers first, and gives them back when it stops.
When there are not that many free (the node declares more CPUs than the host has, or several
Ray nodes share one host, as in the tests), the server is not pinned at all and the instance
reports no CPUs: pinning it onto CPUs another server holds would make both slower, and the
reservation Ray made is still in force.

The book is a JSON file beside a lock file (`fcntl.flock`) under the node directory; an entry
names the actor process that holds the CPUs (pid and start time, so a reused pid does not keep
them), and entries of processes that are gone (an actor killed with its node's raylet, or by
`ray.kill`) are dropped at the next reservation. Everything here blocks: call it from a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

#: The book and its lock, in the node directory.
BOOK_FILE = "cpus.json"
LOCK_FILE = "cpus.lock"


def process_identity(pid: int) -> str | None:
    """`pid:start time` of a running process, or None when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return f"{pid}:{fields[19]}"  # field 22, the start time in clock ticks


def take_cpus(
    book_dir: Path, name: str, count: int, available: Sequence[int], holder: str
) -> tuple[int, ...]:
    """Reserve `count` CPUs of `available` for the instance `name`, held by the process whose
    `process_identity` is `holder`; () when fewer than `count` are free (no pinning).

    A reservation already held by `name` is replaced.
    """
    with _locked(book_dir) as book:
        held = {
            entry_name: entry
            for entry_name, entry in book.items()
            if entry_name != name and _alive(entry.get("holder"))
        }
        taken = {cpu for entry in held.values() for cpu in entry.get("cpus", ())}
        free = [cpu for cpu in sorted(available) if cpu not in taken]
        cpus = tuple(free[:count]) if 0 < count <= len(free) else ()
        if cpus:
            held[name] = {"holder": holder, "cpus": list(cpus)}
        book.clear()
        book.update(held)
    return cpus


def release_cpus(book_dir: Path, name: str) -> None:
    """Give back the CPUs the instance `name` holds (nothing if it holds none)."""
    with _locked(book_dir) as book:
        book.pop(name, None)


def held_cpus(book_dir: Path) -> dict[str, tuple[int, ...]]:
    """Which CPUs each live instance of the host holds."""
    with _locked(book_dir) as book:
        return {
            name: tuple(entry.get("cpus", ()))
            for name, entry in book.items()
            if _alive(entry.get("holder"))
        }


def _alive(holder: Any) -> bool:
    if not isinstance(holder, str) or ":" not in holder:
        return False
    pid = holder.split(":", 1)[0]
    return pid.isdigit() and process_identity(int(pid)) == holder


@contextlib.contextmanager
def _locked(book_dir: Path) -> Iterator[dict[str, dict[str, Any]]]:
    """The book, read under the host-wide lock and written back (atomically) on exit."""
    book_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    with open(book_dir / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = book_dir / BOOK_FILE
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError):
            loaded = {}  # none yet, or torn by a crash mid-write of an older version: start over
        book: dict[str, dict[str, Any]] = (
            {name: entry for name, entry in loaded.items() if isinstance(entry, dict)}
            if isinstance(loaded, dict)
            else {}
        )
        yield book
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(book, sort_keys=True))
        os.replace(partial, path)
