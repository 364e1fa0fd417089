"""What runs on a Ray node for one instance: the actor that unpacks the model and runs the server.

`InstanceActor` is a detached, named Ray actor (see `ray_placement.py`, which makes and watches
it from the controller). Its job is small: unpack the model artifact the controller shipped
through Ray's object store (or fetch it from an S3-compatible store itself) with the same safe
unpacking as local instances (`artifacts.prepare_model_dir`), reserve its CPUs in the host's
book (`ray_cpus.py`), and start the server on its node, on the node's address: the built-in
XGBoost server, or a bring-your-own image's command with the node's address in `{host}` and
its port in `SAGEMAKER_BIND_TO_PORT` (`fleet.builtin_server_command` and
`fleet.custom_server_command`: the same commands and environment allow-list as locally).
`workers/launch.py` confines it as it does locally: a new session, pinned to its CPUs, the
worker user when the actor runs as root, no_new_privs, killed when the actor dies. It then
tells the controller where the server listens. The requests never pass through Ray: the
gateways' pools connect there directly.

This module imports `ray` and is imported only by `ray_placement.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray

from splitserve.config import WorkerSettings
from splitserve.errors import DeploymentError
from splitserve.workers.artifacts import (
    ArtifactLimits,
    S3Object,
    fetch_s3_object,
    prepare_model_dir,
    remove_model_dir,
)
from splitserve.workers.fleet import (
    ServerContext,
    builtin_server_command,
    custom_server_command,
)
from splitserve.workers.images import CustomImage
from splitserve.workers.local_placement import make_private_dir
from splitserve.workers.process import (
    SpawnLimits,
    WorkerProcess,
    WorkerUser,
    WorkerUserError,
    spawn_worker,
)
from splitserve.workers.ray_cpus import process_identity, release_cpus, take_cpus
from splitserve.workers.supervisor import check_runs_builtin_server

#: The most characters of the server's last output an actor hands back with a failure.
OUTPUT_TAIL_CHARS = 800


@dataclass(frozen=True)
class ActorSpec:
    """What one instance actor runs; pickled to its node.

    Attributes:
        name: the instance name, `{endpoint}/{variant}/g{generation}/{index}`.
        artifact_name: the artifact's file name (its bytes come through the object store or
            from `s3_artifact`), or None when the model has none.
        s3_artifact: where the node fetches the artifact itself (`fetch_s3_object`), or None
            when its bytes come through the object store.
        environment: the model's Environment from CreateModel.
        workers: the worker settings (batching, pickle, artifact limits, log rate).
        node_dir: the node directory for model and private directories and the host's CPU
            book (`ray_cpus.py`); None is the node's temporary directory.
        image: the bring-your-own image it runs (its registry entry: its command, working
            directory and python path must exist at the same paths on every node), or None
            for the built-in XGBoost server.
        vcpus: the instance type's vCPUs: how many CPUs its server is pinned to.
        memory_limit_bytes: the server's RLIMIT_AS (`--memory-cap`), or None.
    """

    name: str
    artifact_name: str | None
    s3_artifact: S3Object | None
    environment: dict[str, str]
    workers: WorkerSettings
    node_dir: Path | None
    image: CustomImage | None = None
    vcpus: int = 1
    memory_limit_bytes: int | None = None


@dataclass(frozen=True)
class ActorAddress:
    """Where an actor's server listens and what it runs on.

    Attributes:
        host: the node's address.
        port: the server's TCP port.
        node_id: Ray's id of the node.
        cpus: the CPUs of the node the server is pinned to; () when it is not pinned (fewer
            CPUs were free than its type has vCPUs: `ray_cpus.py`).
        pid: the server's process id, on its node.
    """

    host: str
    port: int
    node_id: str
    cpus: tuple[int, ...]
    pid: int


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
    return port


def _worker_user(name: str, *, builtin: bool) -> WorkerUser | None:
    """The account the server runs as on this node: as locally, the worker user when the actor
    runs as root (`WorkerUser.for_gateway`), else the actor's own.

    Raises:
        DeploymentError: the worker user does not exist on this node, or cannot run the
            built-in server.
    """
    try:
        user = WorkerUser.for_gateway(name)
    except WorkerUserError as error:
        node = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        raise DeploymentError(f"on node {node}: {error}") from None
    if builtin:
        check_runs_builtin_server(user)
    return user


@ray.remote(max_restarts=0)
class InstanceActor:
    """One instance on a Ray node (see the module docstring); its methods run on its loop."""

    def __init__(self, spec: ActorSpec, artifact: list[ray.ObjectRef[bytes]]) -> None:
        """Keep what `start` needs; the artifact stays a reference (in a list, so Ray does not
        fetch it) until `start` unpacks it."""
        self._spec = spec
        self._artifact = artifact
        self._base = spec.node_dir or Path(tempfile.gettempdir()) / "splitserve-ray"
        token = secrets.token_hex(4)
        self._model_dir = self._base / "m" / f"{token}"
        self._private_dir = self._base / "w" / f"{token}"
        self._worker: WorkerProcess | None = None
        self._address: ActorAddress | None = None

    async def start(self) -> ActorAddress:
        """Unpack the model and start the server; return where it listens (it may still be
        loading: the controller pings it).

        Raises:
            DeploymentError: the artifact is unsafe, corrupt or over the limits; the worker user
                does not exist or cannot run the built-in server.
            OSError: the server could not be started.
        """
        if self._address is not None:
            return self._address
        spec = self._spec
        settings = spec.workers
        user = _worker_user(settings.worker_user, builtin=spec.image is None)
        artifact: bytes | None = await self._artifact[0] if self._artifact else None
        self._artifact = []
        await asyncio.to_thread(self._prepare, artifact, user)
        host: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        port = _free_port(host)
        cpus = await asyncio.to_thread(
            take_cpus,
            self._base,
            spec.name,
            spec.vcpus,
            sorted(os.sched_getaffinity(0)),
            process_identity(os.getpid()) or "",
        )
        context = ServerContext(
            self._model_dir, self._private_dir, len(cpus) or spec.vcpus, spec.name
        )
        if spec.image is None:
            listen = ["--host", host, "--port", str(port)]
            command = builtin_server_command(settings, listen, context, spec.environment)
        else:
            command = custom_server_command(spec.image, host, port, context, spec.environment)
        try:
            self._worker = await spawn_worker(
                command.argv,
                name=spec.name,
                environment=command.environment,
                cwd=command.cwd,
                limits=SpawnLimits(
                    # No pinning (every CPU the actor may use) when none could be reserved.
                    cpus=cpus or tuple(sorted(os.sched_getaffinity(0))),
                    memory_limit_bytes=spec.memory_limit_bytes,
                    user=user,
                    log_lines_per_second=settings.output_log_lines_per_second,
                ),
            )
        except BaseException:
            await asyncio.to_thread(release_cpus, self._base, spec.name)
            raise
        node_id = ray.get_runtime_context().get_node_id()
        self._address = ActorAddress(host, port, node_id, cpus, self._worker.pid)
        return self._address

    def address(self) -> ActorAddress | None:
        """Where the server listens (None before `start`): what a new controller adopts."""
        return self._address

    async def watch(self) -> int:
        """Return the server's exit status once it exits (-1 if it never started)."""
        worker = self._worker
        if worker is None:
            return -1
        return await worker.wait()

    def output_tail(self) -> str:
        """The server's last output lines (for a FailureReason)."""
        worker = self._worker
        return "" if worker is None else worker.output.tail(OUTPUT_TAIL_CHARS)

    async def stop(self, grace_seconds: float) -> int | None:
        """SIGTERM the server, SIGKILL it `grace_seconds` later; remove its files."""
        status = None
        if self._worker is not None:
            status = await self._worker.stop(grace_seconds)
        await asyncio.to_thread(self._remove)
        await asyncio.to_thread(release_cpus, self._base, self._spec.name)
        return status

    def _prepare(self, artifact: bytes | None, user: WorkerUser | None) -> None:
        """Write the shipped artifact to a private staging directory and unpack it safely;
        make the instance's private directory (the worker user's own, as locally)."""
        spec = self._spec
        for directory in (self._base, self._base / "m", self._base / "w"):
            # Others (the worker user) may pass through, not list.
            directory.mkdir(mode=0o711, parents=True, exist_ok=True)
        make_private_dir(self._private_dir, user)
        staging = Path(tempfile.mkdtemp(prefix="artifact-", dir=self._private_dir.parent))
        try:
            source = None
            if spec.artifact_name is not None and spec.s3_artifact is not None:
                source = staging / spec.artifact_name
                fetch_s3_object(spec.s3_artifact, source, spec.workers.max_artifact_bytes)
            elif artifact is not None and spec.artifact_name is not None:
                source = staging / spec.artifact_name
                source.write_bytes(artifact)
            prepare_model_dir(
                source,
                self._model_dir,
                ArtifactLimits(
                    roots=(staging,),
                    max_bytes=spec.workers.max_artifact_bytes,
                    max_files=spec.workers.max_artifact_files,
                ),
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _remove(self) -> None:
        with contextlib.suppress(OSError):
            remove_model_dir(self._model_dir)
        shutil.rmtree(self._private_dir, ignore_errors=True)
