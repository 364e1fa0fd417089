"""What runs on a Ray node for one instance: the actor that unpacks the model and runs the server.

`InstanceActor` is a detached, named Ray actor (see `ray_placement.py`, which makes and watches
it from the controller). Its job is small: unpack the model artifact the controller shipped
through Ray's object store with the same safe unpacking as local instances
(`artifacts.prepare_model_dir`), start the built-in XGBoost server on its node listening on the
node's address (`workers/launch.py` confines it as it does locally: a new session, the actor's
CPUs, killed when the actor dies), and tell the controller where it listens. The requests never
pass through Ray: the gateways' pools connect to that address directly.

This module imports `ray` and is imported only by `ray_placement.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ray

import splitserve
from splitserve.config import WorkerSettings
from splitserve.workers.artifacts import ArtifactLimits, prepare_model_dir, remove_model_dir
from splitserve.workers.process import (
    SpawnLimits,
    WorkerProcess,
    minimal_environment,
    spawn_worker,
    worker_environment,
)

#: The module the built-in XGBoost server runs as (as `fleet.XGBOOST_SERVER_MODULE`).
XGBOOST_SERVER_MODULE = "splitserve.workers.xgboost_server"

#: The most characters of the server's last output an actor hands back with a failure.
OUTPUT_TAIL_CHARS = 800


@dataclass(frozen=True)
class ActorSpec:
    """What one instance actor runs; pickled to its node.

    Attributes:
        name: the instance name, `{endpoint}/{variant}/g{generation}/{index}`.
        artifact_name: the artifact's file name (its bytes come through the object store), or
            None when the model has none.
        environment: the model's Environment from CreateModel.
        workers: the worker settings (batching, pickle, artifact limits, log rate).
        node_dir: the node directory for model and private directories; None is the node's
            temporary directory.
    """

    name: str
    artifact_name: str | None
    environment: dict[str, str]
    workers: WorkerSettings
    node_dir: Path | None


@dataclass(frozen=True)
class ActorAddress:
    """Where an actor's server listens and what it runs on.

    Attributes:
        host: the node's address.
        port: the server's TCP port.
        node_id: Ray's id of the node.
        cpus: the CPUs of the node the server may run on (the actor's affinity).
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


@ray.remote(max_restarts=0)
class InstanceActor:
    """One instance on a Ray node (see the module docstring); its methods run on its loop."""

    def __init__(self, spec: ActorSpec, artifact: list[ray.ObjectRef[bytes]]) -> None:
        """Keep what `start` needs; the artifact stays a reference (in a list, so Ray does not
        fetch it) until `start` unpacks it."""
        self._spec = spec
        self._artifact = artifact
        base = spec.node_dir or Path(tempfile.gettempdir()) / "splitserve-ray"
        token = secrets.token_hex(4)
        self._model_dir = base / "m" / f"{token}"
        self._private_dir = base / "w" / f"{token}"
        self._worker: WorkerProcess | None = None
        self._address: ActorAddress | None = None

    async def start(self) -> ActorAddress:
        """Unpack the model and start the server; return where it listens (it may still be
        loading: the controller pings it).

        Raises:
            DeploymentError: the artifact is unsafe, corrupt or over the limits.
            OSError: the server could not be started.
        """
        if self._address is not None:
            return self._address
        spec = self._spec
        settings = spec.workers
        artifact: bytes | None = await self._artifact[0] if self._artifact else None
        self._artifact = []
        package_root = await asyncio.to_thread(self._prepare, artifact)
        host: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        port = _free_port(host)
        cpus = tuple(sorted(os.sched_getaffinity(0)))
        argv = [sys.executable, "-m", XGBOOST_SERVER_MODULE, "--model-dir", str(self._model_dir)]
        argv += ["--host", host, "--port", str(port)]
        argv += ["--max-batch-rows", str(settings.max_batch_rows)]
        argv += ["--max-batch-wait-us", str(settings.max_batch_wait_microseconds)]
        if settings.allow_pickle:
            argv.append("--allow-pickle")
        gateway = minimal_environment(self._private_dir, len(cpus))
        gateway["SM_MODEL_DIR"] = str(self._model_dir)
        gateway["PYTHONPATH"] = package_root
        environment = worker_environment(gateway, {}, spec.environment, name=spec.name)
        self._worker = await spawn_worker(
            argv,
            name=spec.name,
            environment=environment,
            cwd=self._private_dir,
            limits=SpawnLimits(
                cpus=cpus,
                memory_limit_bytes=None,
                user=None,
                log_lines_per_second=settings.output_log_lines_per_second,
            ),
        )
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
        return status

    def _prepare(self, artifact: bytes | None) -> str:
        """Write the shipped artifact to a private staging directory and unpack it safely;
        return where this node's splitserve is imported from (the server imports the same)."""
        spec = self._spec
        self._private_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="artifact-", dir=self._private_dir.parent))
        try:
            source = None
            if artifact is not None and spec.artifact_name is not None:
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
        return str(Path(splitserve.__file__).resolve().parent.parent)

    def _remove(self) -> None:
        with contextlib.suppress(OSError):
            remove_model_dir(self._model_dir)
        shutil.rmtree(self._private_dir, ignore_errors=True)
