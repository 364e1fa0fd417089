"""Spawning worker processes that cannot outlive the gateway, and stopping them.

Every instance is a fresh interpreter (or any program) started by `os.posix_spawn`, the
equivalent of multiprocessing's spawn context: nothing of the gateway's state is inherited but
what the environment and argv say. No code of the gateway's runs between fork and exec, which is
unsafe while other threads run (a child can deadlock on a lock another thread held at the fork):
not `preexec_fn`, and not the interpreter's at-fork handlers either, which uvloop's process
spawning runs in the child (two endpoints starting workers at once hung the gateway that way).
glibc's posix_spawn makes the child the leader of a new session and process group (so stopping
it reaches anything it started), points its stdout and stderr at one pipe and execs the shim
`launch.py`, which confines itself first thing and execs the server in the same process (see its
docstring):

- as the worker user, when the gateway runs as root (`WorkerUser`), with no_new_privs;
- with a parent-death signal (SIGKILL) and a check that its parent is still the gateway;
- pinned to its CPU set (`sched_setaffinity`), its address space optionally capped (`RLIMIT_AS`).

PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so spawn from the event loop's
thread (as asyncio does) and keep that loop on the main thread.

stdout and stderr are merged and read here, line by line, into `output.py`: a bounded ring of
the last lines (they end up in a deployment's FailureReason), the rate-limited
`splitserve.workers.output` log, and the instance's own log file when it has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pwd
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from splitserve.workers import launch
from splitserve.workers.output import (
    OUTPUT_LINE_CHARS,
    OutputFile,
    OutputRelay,
    OutputRing,
    output_logger,
)

logger = logging.getLogger(__name__)

_READ_CHUNK_BYTES = 65536

#: The shim every worker is exec'd through (run by path: it imports only the standard library).
LAUNCH_SCRIPT = Path(launch.__file__).resolve()

#: Variables the gateway sets in every worker's environment; a model's Environment never
#: overrides them (see `worker_environment`).
GATEWAY_VARIABLES = frozenset(
    {
        "PATH",
        "LANG",
        "LC_ALL",
        "HOME",
        "TMPDIR",
        "OMP_NUM_THREADS",
        "PYTHONUNBUFFERED",
        "PYTHONPATH",
        "SAGEMAKER_BIND_TO_PORT",
        "SM_MODEL_DIR",
    }
)

#: Prefixes of variables that change how the dynamic loader or the interpreter starts (code
#: injection); dropped from a model's Environment even if the control plane let one through.
_LOADER_PREFIXES = ("LD_", "PYTHON")


class WorkerUserError(ValueError):
    """The configured worker user does not exist."""


@dataclass(frozen=True)
class WorkerUser:
    """The unprivileged account workers run as when the gateway runs as root.

    Attributes:
        name: the account name.
        uid: its user id.
        gid: its primary group id.
        groups: every group it belongs to (its supplementary groups).
    """

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def for_gateway(cls, name: str) -> WorkerUser | None:
        """The user workers switch to, or None when they run as the gateway's own user.

        Only root can switch: a gateway run by another user runs its workers as itself. Naming
        root itself (or the gateway's own account) keeps workers as root, which the log warns of.

        Raises:
            WorkerUserError: the gateway runs as root and `name` is no account of this host.
        """
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise WorkerUserError(
                f"the worker user {name!r} does not exist: create it (an account with no login"
                " and no home is enough) or name another with --worker-user"
            ) from None
        if entry.pw_uid == 0:
            logger.warning(
                "workers run as root (--worker-user %s): a model server can do anything on this"
                " host",
                name,
            )
            return None
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)

    def spec(self) -> str:
        """The shim's `--user` value: `uid:gid:group,group`."""
        return f"{self.uid}:{self.gid}:{','.join(str(group) for group in self.groups)}"


def minimal_environment(home: Path, cpu_count: int) -> dict[str, str]:
    """The environment every worker starts from; none of the gateway's other variables.

    Args:
        home: the worker's HOME and TMPDIR (its private directory).
        cpu_count: the size of its CPU set, for OMP_NUM_THREADS.
    """
    locale = os.environ.get("LC_ALL") or os.environ.get("LANG") or "C.UTF-8"
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": os.environ.get("LANG", locale),
        "LC_ALL": locale,
        "HOME": str(home),
        "TMPDIR": str(home),
        # Native thread pools (OpenMP, BLAS) would otherwise size themselves to the host.
        "OMP_NUM_THREADS": str(cpu_count),
        # Output reaches the ring (and a failure reason) as it is printed, not at exit.
        "PYTHONUNBUFFERED": "1",
    }


def worker_environment(
    gateway: Mapping[str, str],
    image: Mapping[str, str],
    model: Mapping[str, str],
    *,
    name: str,
) -> dict[str, str]:
    """A worker's environment: the image's variables, then the model's, then the gateway's.

    The gateway's variables (`GATEWAY_VARIABLES`: where to listen, the model directory, HOME,
    TMPDIR, PATH, ...) win over both. A model's Environment comes from a CreateModel caller, so
    its loader and interpreter variables (`LD_*`, `PYTHON*`) are dropped too (the control plane
    refuses them already; this is the second line). The image's come from the operator's
    registry file and are kept.

    Args:
        gateway: what the gateway sets (`minimal_environment` plus the contract's variables).
        image: the image registry entry's `environment` (and PYTHONPATH from `python_path`).
        model: the model's Environment from CreateModel.
        name: the instance, for the log line naming what was dropped.
    """
    environment = dict(image)
    dropped = []
    for key, value in model.items():
        if key in GATEWAY_VARIABLES or key.startswith(_LOADER_PREFIXES):
            dropped.append(key)
        else:
            environment[key] = value
    if dropped:
        output_logger.warning(
            "%s: ignored the model's Environment variables the gateway controls: %s",
            name,
            ", ".join(sorted(dropped)),
        )
    environment.update(gateway)
    return environment


class SpawnedProcess:
    """A child started with `os.posix_spawn`: its pid, its output as a stream, its exit.

    The exit is watched through a pidfd (Linux 5.3 and later) on the event loop, so no thread
    waits per worker; where there is none, a thread does wait.
    """

    def __init__(self, pid: int, stdout: asyncio.StreamReader) -> None:
        """Watch child `pid`, whose stdout and stderr are `stdout`; use `SpawnedProcess.start`."""
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            task = loop.create_task(asyncio.to_thread(os.waitpid, pid, 0))
            task.add_done_callback(self._waited)
        else:
            loop.add_reader(self._pidfd, self._reap)

    @classmethod
    async def start(cls, argv: Sequence[str], environment: dict[str, str]) -> SpawnedProcess:
        """Spawn `argv[0]` (an absolute path) with `environment`, stdin from /dev/null, stdout and
        stderr into one pipe, as the leader of a new session.

        Raises:
            OSError: the program cannot be executed.
        """
        read_end, write_end = os.pipe()  # both close-on-exec; dup2 clears it on 1 and 2
        try:
            # On the event loop's thread, on purpose: the parent-death signal is tied to the
            # thread that spawned the child. posix_spawn returns once the child has exec'd.
            pid = os.posix_spawn(  # noqa: ASYNC221
                argv[0],
                list(argv),
                environment,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, write_end, 1),
                    (os.POSIX_SPAWN_DUP2, write_end, 2),
                ],
                setsid=True,
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb", buffering=0)
        )
        return cls(pid, reader)

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 0  # reaped elsewhere: nothing more to learn
        if pid == 0:
            return
        assert self._pidfd is not None
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._exit(status)

    def _waited(self, task: asyncio.Task[tuple[int, int]]) -> None:
        self._exit(0 if task.exception() is not None else task.result()[1])

    def _exit(self, status: int) -> None:
        self.returncode = os.waitstatus_to_exitcode(status)
        if not self._exited.done():
            self._exited.set_result(self.returncode)

    async def wait(self) -> int:
        """The exit status, once the process exited (negative: the signal that ended it)."""
        return await asyncio.shield(self._exited)


class WorkerProcess:
    """One running worker: its process, process group and output.

    Build one with `spawn_worker`.
    """

    def __init__(
        self,
        name: str,
        process: SpawnedProcess,
        output: OutputRing,
        log_lines_per_second: int,
        log_file: OutputFile | None = None,
    ) -> None:
        self.name = name
        self.process = process
        self.output = output
        self._log_file = log_file
        self._relay = OutputRelay(name, log_lines_per_second)
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
        self._relay.flush()

    async def _read_output(self) -> None:
        stream = self.process.stdout
        pending = b""
        while chunk := await stream.read(_READ_CHUNK_BYTES):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._record(line)
            if len(pending) > OUTPUT_LINE_CHARS * 4:
                self._record(pending)
                pending = b""
            if self._log_file is not None:
                self._log_file.flush()
        if pending:
            self._record(pending)
        if self._log_file is not None:
            self._log_file.flush()

    def _record(self, raw: bytes) -> None:
        if self._log_file is not None:
            self._log_file.write(raw)
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        self.output.append(line)
        self._relay.line(line[:OUTPUT_LINE_CHARS])


@dataclass(frozen=True)
class SpawnLimits:
    """How a worker process is confined (see `launch.py`).

    Attributes:
        cpus: the CPU set it is pinned to.
        memory_limit_bytes: its RLIMIT_AS, or None for no cap.
        user: the account it runs as, or None for the gateway's own.
        log_lines_per_second: how many of its output lines per second reach the log.
    """

    cpus: tuple[int, ...]
    memory_limit_bytes: int | None
    user: WorkerUser | None
    log_lines_per_second: int


def launch_argv(
    argv: Sequence[str], limits: SpawnLimits, parent_pid: int, cwd: Path | None = None
) -> list[str]:
    """The command line that runs `argv` through the confining shim (in `cwd`, if given)."""
    shim = [sys.executable, "-I", "-S", str(LAUNCH_SCRIPT), "--parent-pid", str(parent_pid)]
    shim += ["--cpus", ",".join(str(cpu) for cpu in limits.cpus)]
    if cwd is not None:
        shim += ["--cwd", str(cwd)]
    if limits.memory_limit_bytes is not None:
        shim += ["--memory-limit", str(limits.memory_limit_bytes)]
    if limits.user is not None:
        shim += ["--user", limits.user.spec()]
    return [*shim, "--", *argv]


async def spawn_worker(
    argv: Sequence[str],
    *,
    name: str,
    environment: Mapping[str, str],
    cwd: Path,
    limits: SpawnLimits,
    log_file: OutputFile | None = None,
) -> WorkerProcess:
    """Start one worker process (see the module docstring for how it is confined).

    A program that cannot be executed, or a confinement step that fails, makes the process exit
    at once (status `launch.EXIT_EXEC_FAILED` or `launch.EXIT_SETUP_FAILED`) saying why on its
    output.

    Args:
        argv: the program and its arguments.
        name: the instance name, for logs.
        environment: the complete environment (nothing is inherited).
        cwd: its working directory.
        limits: its CPU set, memory cap, user and log rate.
        log_file: where every line of its output is also kept, if anywhere.

    Returns:
        the running worker.

    Raises:
        OSError: the interpreter cannot be started, or `cwd` is missing.
    """
    if not cwd.is_dir():  # noqa: ASYNC240 (one stat, as the exec that follows costs)
        raise FileNotFoundError(errno.ENOENT, "the worker's directory is missing", str(cwd))
    process = await SpawnedProcess.start(
        launch_argv(argv, limits, os.getpid(), cwd), dict(environment)
    )
    if log_file is not None:
        log_file.write(
            f"--- splitserve: {name} started, pid {process.pid}, "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} ---".encode()
        )
    return WorkerProcess(name, process, OutputRing(), limits.log_lines_per_second, log_file)
