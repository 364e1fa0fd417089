"""The local placement's `InstanceBackend`: an instance as a child process of the gateway
(`LocalProcess`), what its fleet gives it (`InstanceSetup`), how its owner plans each start
(`LaunchPlanner`, `Launch`) and the loopback ports handed out to instances on TCP
(`LoopbackPorts`). `instance.WorkerInstance` drives it through the life every instance shares;
`ray_placement.ActorProcess` is its counterpart on a Ray cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from splitserve.config import WorkerSettings
from splitserve.contract.upstream import UpstreamAddress
from splitserve.errors import DeploymentError
from splitserve.workers.instance import ProcessDetails, ProcessExit, describe_status
from splitserve.workers.output import OutputFile
from splitserve.workers.process import SpawnLimits, WorkerProcess, WorkerUser, spawn_worker

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Launch:
    """How to start one process of an instance.

    Attributes:
        argv: the server's program and arguments.
        environment: its complete environment.
        cwd: its working directory.
        address: where it will listen.
    """

    argv: list[str]
    environment: dict[str, str]
    cwd: Path
    address: UpstreamAddress


class LaunchPlanner(Protocol):
    """What an instance asks its owner before each start of a process."""

    def plan(self, instance: LocalProcess) -> Launch:
        """The command, environment and address of `instance`'s next process.

        Raises:
            DeploymentError: no address could be found for it.
        """


class LoopbackPorts:
    """TCP ports of `host` (loopback by default) handed out to instances, so no two instances
    get the same one."""

    def __init__(self, host: str = LOOPBACK) -> None:
        self.host = host
        self._ports: dict[str, int] = {}

    def take(self, owner: str) -> int:
        """A free loopback port for `owner` (replacing the one it had).

        Raises:
            DeploymentError: no free port was found.
        """
        self.release(owner)
        taken = set(self._ports.values())
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((self.host, 0))
                port: int = probe.getsockname()[1]
            if port not in taken:
                self._ports[owner] = port
                return port
        raise DeploymentError("could not find a free loopback port")

    def release(self, owner: str) -> None:
        """Give `owner`'s port back (nothing if it has none)."""
        self._ports.pop(owner, None)


@dataclass(frozen=True)
class InstanceSetup:
    """Everything a local instance is given by its fleet.

    Attributes:
        name: its process-wide unique name.
        variant_name: the variant it serves.
        cpus: the CPUs it is pinned to.
        socket_path: the Unix socket it keeps across restarts, or None (it listens on TCP).
        private_dir: its HOME and TMPDIR, created before each start (mode 0700, owned by the
            worker user) and removed when it stops.
        limits: how its processes are confined.
        startup_timeout_seconds: how long a new process has to pass its first /ping.
        log_file: where every line its processes print is kept (rotated; kept after it stops,
            for the ModelError's LogStreamArn), or None for no file.
    """

    name: str
    variant_name: str
    cpus: tuple[int, ...]
    socket_path: Path | None
    private_dir: Path
    limits: SpawnLimits
    startup_timeout_seconds: float
    log_file: Path | None = None


class LocalProcess:
    """The `InstanceBackend` of a local instance: a child process of the gateway, spawned
    through the confining shim, pinned to its CPUs, restarted under the same name, private
    directory and socket path.

    Args:
        setup: what it is and how it runs.
        settings: the worker settings (listen host, log file rotation).
        planner: decides each process's command, environment and address.
        ports: where its TCP port, if any, is given back.
    """

    def __init__(
        self,
        setup: InstanceSetup,
        settings: WorkerSettings,
        planner: LaunchPlanner,
        ports: LoopbackPorts,
    ) -> None:
        self.setup = setup
        self.name = setup.name
        self._settings = settings
        self._planner = planner
        self._ports = ports
        self._worker: WorkerProcess | None = None
        self._log_file: OutputFile | None = None

    def placeholder_address(self) -> UpstreamAddress:
        """Its socket path, or the listen host until it has a port."""
        socket_path = self.setup.socket_path
        if socket_path is not None:
            return UpstreamAddress.unix(str(socket_path))
        return UpstreamAddress.tcp(self._settings.listen_host, 0)

    def details(self) -> ProcessDetails:
        """Its CPU set, and the pid of its process while one runs."""
        worker = self._worker
        pid = worker.pid if worker is not None and worker.returncode is None else None
        return ProcessDetails(cpus=self.setup.cpus, pid=pid)

    async def adopt(self) -> UpstreamAddress | None:
        """None: local processes die with the gateway that started them."""
        return None

    async def launch(self) -> UpstreamAddress:
        """Prepare the private directory and log file, plan the command and spawn it."""
        setup = self.setup
        try:
            await asyncio.to_thread(make_private_dir, setup.private_dir, setup.limits.user)
            if setup.log_file is not None and self._log_file is None:
                self._log_file = await asyncio.to_thread(
                    OutputFile,
                    setup.log_file,
                    self._settings.log_file_bytes,
                    self._settings.log_file_backups,
                )
            launch = self._planner.plan(self)
        except OSError as error:
            # E.g. the gateway out of descriptors or disk: a failed start, retried with backoff.
            raise DeploymentError(
                f"instance {self.name}: could not prepare its start: {error.strerror or error}"
            ) from error
        try:
            self._worker = await spawn_worker(
                launch.argv,
                name=self.name,
                environment=launch.environment,
                cwd=launch.cwd,
                limits=setup.limits,
                log_file=self._log_file,
            )
        except OSError as error:
            raise DeploymentError(
                f"instance {self.name}: could not start the model server"
                f" {launch.argv[0]!r}: {error.strerror or error}"
            ) from error
        return launch.address

    async def wait_exit(self) -> ProcessExit:
        """The exit status of the current process, once it exits."""
        worker = self._worker
        if worker is None:
            return ProcessExit(status=-1)
        return ProcessExit(status=await worker.wait())

    async def output_tail(self, max_chars: int) -> str:
        """The last lines the current process printed (all of them, once it exited)."""
        worker = self._worker
        if worker is None:
            return ""
        if worker.returncode is not None:
            await worker.kill()  # collects the output still in the pipe
        return worker.output.tail(max_chars)

    async def retire(self) -> None:
        """SIGKILL the process group (a hung server's whole group), give its port back."""
        worker = self._worker
        if worker is not None:
            await worker.kill()
            self._ports.release(self.name)

    async def stop(self, grace_seconds: float) -> None:
        """Stop the process, close its log file, remove its socket and private directory."""
        worker = self._worker
        if worker is not None:
            status = await worker.stop(grace_seconds)
            logger.info("%s stopped (status %s)", self.name, describe_status(status))
        if self._log_file is not None:
            self._log_file.close()
        self._ports.release(self.name)
        await asyncio.to_thread(
            _remove_instance_files, self.setup.socket_path, self.setup.private_dir
        )


def make_private_dir(path: Path, user: WorkerUser | None) -> None:
    """Create an instance's private directory (kept across restarts): 0700, the worker's own
    (here, or on a Ray node). Blocking."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if user is not None:
        os.chown(path, user.uid, user.gid)
    os.chmod(path, 0o700)


def _remove_instance_files(socket_path: Path | None, private_dir: Path) -> None:
    """Remove a stopped instance's socket and private directory. Blocking."""
    if socket_path is not None:
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
    shutil.rmtree(private_dir, ignore_errors=True)
