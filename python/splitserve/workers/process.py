"""Spawning worker processes that cannot outlive the gateway, and stopping them.

Every instance is a fresh interpreter (or any program) started by
`asyncio.create_subprocess_exec`, the equivalent of multiprocessing's spawn context: nothing of
the gateway's state is inherited but what the environment and argv say. Between fork and exec the
child:

- becomes the leader of its own process group, so stopping it reaches anything it started;
- asks the kernel for SIGKILL when its parent dies (`prctl(PR_SET_PDEATHSIG)`), then checks that the
  parent is still the gateway, closing the race where the gateway died before the prctl;
- pins itself to its CPU set (`sched_setaffinity`);
- optionally caps its address space (`RLIMIT_AS`) at its instance type's memory.

PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so spawn from the event loop's
thread (as asyncio does) and keep that loop on the main thread.

stdout and stderr are merged and kept in a bounded ring of the last lines: they end up in a
deployment's FailureReason and in the `splitserve.workers.output` log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import resource
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: Where worker output is logged, one record per line, prefixed by the instance name.
output_logger = logging.getLogger("splitserve.workers.output")

#: linux/prctl.h
_PR_SET_PDEATHSIG = 1

#: How many lines of a worker's output are kept for failure reasons.
OUTPUT_LINES = 64

#: Longer lines are cut (a worker printing a huge line must not hold the memory).
OUTPUT_LINE_CHARS = 2000

_READ_CHUNK_BYTES = 65536


class OutputRing:
    """The last lines a worker printed.

    Args:
        max_lines: how many lines to keep.
        max_line_chars: lines are cut to this length.
    """

    def __init__(self, max_lines: int = OUTPUT_LINES, max_line_chars: int = OUTPUT_LINE_CHARS):
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._max_line_chars = max_line_chars

    def append(self, line: str) -> None:
        """Keep `line` (cut to the maximum length), dropping the oldest when full."""
        if len(line) > self._max_line_chars:
            line = line[: self._max_line_chars] + "…"
        self._lines.append(line)

    def lines(self) -> list[str]:
        """The kept lines, oldest first."""
        return list(self._lines)

    def tail(self, max_chars: int) -> str:
        """The newest lines that fit in `max_chars`, newline-joined (a cut line starts with …)."""
        kept: list[str] = []
        size = 0
        for line in reversed(self._lines):
            if size + len(line) + 1 > max_chars:
                room = max_chars - size - 2
                if room > 0 and not kept:
                    kept.append("…" + line[-room:])
                break
            kept.append(line)
            size += len(line) + 1
        return "\n".join(reversed(kept))


def minimal_environment(home: Path, cpu_count: int) -> dict[str, str]:
    """The environment every worker starts from; none of the gateway's other variables.

    Args:
        home: the worker's HOME (the run directory).
        cpu_count: the size of its CPU set, for OMP_NUM_THREADS.
    """
    locale = os.environ.get("LC_ALL") or os.environ.get("LANG") or "C.UTF-8"
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": os.environ.get("LANG", locale),
        "LC_ALL": locale,
        "HOME": str(home),
        # Native thread pools (OpenMP, BLAS) would otherwise size themselves to the host.
        "OMP_NUM_THREADS": str(cpu_count),
        # Output reaches the ring (and a failure reason) as it is printed, not at exit.
        "PYTHONUNBUFFERED": "1",
    }


@functools.cache
def _prctl() -> Callable[..., int]:
    # Loaded in the parent: dlopen between fork and exec is not async-signal-safe.
    libc = ctypes.CDLL(None, use_errno=True)
    function: Callable[..., int] = libc.prctl
    return function


def _child_setup(
    parent_pid: int, cpus: tuple[int, ...], memory_limit_bytes: int | None
) -> Callable[[], None]:
    prctl = _prctl()

    def setup() -> None:
        os.setpgid(0, 0)
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
        if os.getppid() != parent_pid:
            # The gateway died before the prctl took effect: nobody will ever stop us.
            os._exit(1)
        os.sched_setaffinity(0, cpus)
        if memory_limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))

    return setup


class WorkerProcess:
    """One running worker: its process, process group and output.

    Build one with `spawn_worker`.
    """

    def __init__(self, name: str, process: asyncio.subprocess.Process, output: OutputRing):
        self.name = name
        self.process = process
        self.output = output
        self._pump = asyncio.create_task(self._read_output(), name=f"output {name}")

    @property
    def pid(self) -> int:
        """The worker's pid (also its process group id)."""
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has been reaped, else None (negative: a signal)."""
        return self.process.returncode

    async def wait(self) -> int:
        """Wait for the process to exit; its exit status."""
        return await self.process.wait()

    def signal_group(self, signum: int) -> None:
        """Send `signum` to the worker's process group (it and anything it started)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    async def kill(self) -> int:
        """SIGKILL the process group and wait for the worker; its exit status."""
        self.signal_group(signal.SIGKILL)
        returncode = await self.process.wait()
        await self._finish_output()
        return returncode

    async def stop(self, grace_seconds: float) -> int:
        """SIGTERM the process group, wait up to `grace_seconds`, then SIGKILL it.

        Returns:
            the worker's exit status.
        """
        if self.process.returncode is None:
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace_seconds)
            except TimeoutError:
                output_logger.warning(
                    "%s did not exit %.1f s after SIGTERM; sending SIGKILL",
                    self.name,
                    grace_seconds,
                )
        # Also reaches anything the worker started and left behind in its group.
        return await self.kill()

    async def _finish_output(self) -> None:
        # The pipe closes when the last process holding it is gone; do not wait forever on it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._pump), 1.0)
        if not self._pump.done():
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

    async def _read_output(self) -> None:
        stream = self.process.stdout
        if stream is None:
            return
        pending = b""
        while chunk := await stream.read(_READ_CHUNK_BYTES):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._record(line)
            if len(pending) > OUTPUT_LINE_CHARS * 4:
                self._record(pending)
                pending = b""
        if pending:
            self._record(pending)

    def _record(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        self.output.append(line)
        output_logger.info("%s | %s", self.name, line)


async def spawn_worker(
    argv: Sequence[str],
    *,
    name: str,
    environment: Mapping[str, str],
    cwd: Path,
    cpus: Sequence[int],
    memory_limit_bytes: int | None = None,
) -> WorkerProcess:
    """Start one worker process (see the module docstring for what the child sets up).

    Args:
        argv: the program and its arguments.
        name: the instance name, for logs.
        environment: the complete environment (nothing is inherited).
        cwd: its working directory.
        cpus: the CPU set it is pinned to.
        memory_limit_bytes: its RLIMIT_AS, or None for no cap.

    Returns:
        the running worker.

    Raises:
        OSError: the program cannot be executed (missing, not executable).
        subprocess.SubprocessError: the setup between fork and exec failed.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
        env=dict(environment),
        close_fds=True,
        preexec_fn=_child_setup(os.getpid(), tuple(cpus), memory_limit_bytes),
    )
    return WorkerProcess(name, process, OutputRing())
