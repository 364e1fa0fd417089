"""The worker supervisor: owns the fleets of every variant the gateway serves.

It checks each deployment (instance type, image, artifact, socket path), makes one `VariantFleet`
per variant generation (see `fleet.py`), and holds what the fleets share: the CPU allocator, the
loopback ports, the run directory and the account workers run as. Each fleet's instances
(`instance.py`) spawn, health-check and restart themselves.

When the gateway runs as root, workers run as `WorkerSettings.worker_user` (default `nobody`):
the run directory is laid out so that user can reach what it needs and nothing more (see
`_prepare_run_dirs`), and the directories above it must let it through (checked when a fleet
starts: the endpoint fails, saying which directory is in the way).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import splitserve
from splitserve.config import WorkerSettings
from splitserve.errors import DeploymentError
from splitserve.workers.artifacts import ArtifactLimits
from splitserve.workers.catalog import CpuAllocator, InstanceCatalog, UnknownInstanceType
from splitserve.workers.fleet import (
    MODEL_DIR,
    PRIVATE_DIR,
    SOCKET_DIR,
    FleetResources,
    VariantDeployment,
    VariantFleet,
    socket_path_in,
)
from splitserve.workers.images import BuiltinXGBoostImage, ImageRegistry
from splitserve.workers.instance import InstanceInfo, InstanceListener
from splitserve.workers.local_placement import LoopbackPorts
from splitserve.workers.process import WorkerUser

__all__ = [
    "MAX_UNIX_PATH_BYTES",
    "InstanceInfo",
    "InstanceListener",
    "Supervisor",
    "VariantDeployment",
    "VariantFleet",
]

logger = logging.getLogger(__name__)

#: The longest AF_UNIX socket path Linux accepts (sun_path is 108 bytes with the NUL).
MAX_UNIX_PATH_BYTES = 107


class Supervisor:
    """Makes and tracks the fleets of every variant the gateway serves.

    Args:
        settings: the worker settings (run directory, timeouts, CPU pool, worker user, ...).
        images: the image registry (bring-your-own images; XGBoost images are built in).
        catalog: the instance types.
        listener: told when instances become healthy or unhealthy; asked for in-flight counts.
        artifact_roots: the directories model artifacts may come from (the model store and
            every `--allow-artifact-path`); anything else is refused at deploy time.

    Raises:
        WorkerUserError: the gateway runs as root and the worker user does not exist.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        images: ImageRegistry,
        catalog: InstanceCatalog,
        listener: InstanceListener,
        *,
        artifact_roots: Sequence[Path],
    ) -> None:
        self.settings = settings
        self.images = images
        self.catalog = catalog
        # Workers run with another cwd: every path handed to them is absolute.
        self.run_dir = settings.run_dir.resolve()
        self.cpu_allocator = CpuAllocator(settings.host_cpus())
        self.worker_user = WorkerUser.for_gateway(settings.worker_user)
        try:
            check_runs_builtin_server(self.worker_user)
        except DeploymentError as error:
            # Said at start, not only in a FailureReason later: bring-your-own images may still
            # run, so this is a warning rather than a refusal.
            logger.warning("endpoints with the built-in server will fail: %s", error.message)
        self._resources = FleetResources(
            settings=settings,
            listener=listener,
            run_dir=self.run_dir,
            cpus=self.cpu_allocator,
            ports=LoopbackPorts(settings.listen_host),
            user=self.worker_user,
            artifacts=ArtifactLimits(
                roots=tuple(artifact_roots),
                max_bytes=settings.max_artifact_bytes,
                max_files=settings.max_artifact_files,
            ),
            prepare_run_dirs=self._prepare_run_dirs,
            forget=self._forget,
        )
        self._fleets: dict[tuple[str, str, int], VariantFleet] = {}
        self._closed = False
        # Fleets start concurrently, each preparing the run directory from a thread.
        self._run_dir_lock = threading.Lock()
        self._swept = False

    def fleet(self, deployment: VariantDeployment) -> VariantFleet:
        """A new, not yet started fleet for `deployment`.

        Raises:
            DeploymentError: unknown instance type or image, an XGBoost image without a model
                artifact, an instance count below 1, a Unix socket path that would be too long,
                or a fleet for the same endpoint, variant and generation already exists.
        """
        if self._closed:
            raise DeploymentError("the worker supervisor is shut down")
        if deployment.instance_count < 1:
            raise DeploymentError(
                f"variant {deployment.variant_name}: the instance count must be at least 1"
            )
        try:
            instance_type = self.catalog.get(deployment.instance_type)
        except UnknownInstanceType as error:
            raise DeploymentError(str(error)) from None
        image = self.images.resolve(deployment.image)
        if isinstance(image, BuiltinXGBoostImage):
            if deployment.model_data is None:
                raise DeploymentError(
                    f"variant {deployment.variant_name}: the SageMaker XGBoost image needs a"
                    " model artifact (ModelDataUrl)"
                )
            if not self.settings.use_tcp:
                self._check_socket_path_length()
            check_runs_builtin_server(self.worker_user)
        fleet = VariantFleet(self._resources, deployment, instance_type, image)
        if fleet.key in self._fleets:
            raise DeploymentError(
                f"variant {deployment.variant_name} of endpoint {deployment.endpoint_name}"
                f" generation {deployment.generation} is already deployed"
            )
        self._fleets[fleet.key] = fleet
        return fleet

    def fleets(self) -> list[VariantFleet]:
        """Every fleet not yet stopped."""
        return list(self._fleets.values())

    #: Local instances are children of the gateway and die with it (`placement.Placement`).
    outlives_controller = False

    def cpu_usage(self) -> dict[int, int]:
        """How many running instances each host CPU is given to."""
        return self.cpu_allocator.usage()

    async def keep_only(self, generations: Mapping[str, int]) -> None:
        """Nothing to stop: no instance outlives the gateway that started it."""

    async def close(self) -> None:
        """Stop every fleet (gateway shutdown); no fleet can be made afterwards."""
        self._closed = True
        await asyncio.gather(*(fleet.stop() for fleet in list(self._fleets.values())))

    # --- given to the fleets -------------------------------------------------------------------

    def _forget(self, fleet: VariantFleet) -> None:
        """Drop a stopped fleet."""
        if self._fleets.get(fleet.key) is fleet:
            del self._fleets[fleet.key]

    def _prepare_run_dirs(self) -> None:
        """Create the run directory's layout. Blocking; idempotent.

        Raises:
            DeploymentError: the worker user could not reach the run directory.

        - `s/` holds the Unix sockets: only the workers' account may enter it (sockets are not
          authenticated, so nobody else may connect); the gateway, as root, still can.
        - `m/` holds the read-only model directories, `w/` the instances' private directories
          (each 0700 and the worker's own); other users may pass through both, not list them.

        The first call also removes what instances of a previous gateway left in `w/` and `s/`
        (after a kill -9 nothing else would): no instance of this one exists yet.
        """
        user = self.worker_user
        if user is not None:
            _check_reachable(self.run_dir, user)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self._run_dir_lock:
            for name, mode in ((MODEL_DIR, 0o711), (PRIVATE_DIR, 0o711), (SOCKET_DIR, 0o700)):
                path = self.run_dir / name
                path.mkdir(mode=mode, exist_ok=True)
                os.chmod(path, mode)
                if not self._swept and name != MODEL_DIR:
                    for leftover in path.iterdir():
                        if leftover.is_dir() and not leftover.is_symlink():
                            shutil.rmtree(leftover, ignore_errors=True)
                        else:
                            leftover.unlink(missing_ok=True)
            self._swept = True
        if user is not None:
            os.chmod(self.run_dir, stat.S_IMODE(self.run_dir.stat().st_mode) | 0o711)
            os.chown(self.run_dir / SOCKET_DIR, user.uid, user.gid)

    def _check_socket_path_length(self) -> None:
        example = socket_path_in(self.run_dir, "0" * 8)
        length = len(os.fsencode(example))
        if length > MAX_UNIX_PATH_BYTES:
            raise DeploymentError(
                f"the worker socket path {example} is {length} bytes, over the"
                f" {MAX_UNIX_PATH_BYTES}-byte limit of Unix sockets: use a shorter run directory"
                " or TCP workers"
            )


def _permits(status: os.stat_result, user: WorkerUser, owner: int, group: int, other: int) -> bool:
    """Whether `status`'s mode grants `user` the permission whose bits are given."""
    if status.st_uid == user.uid:
        return bool(status.st_mode & owner)
    if status.st_gid in user.groups:
        return bool(status.st_mode & group)
    return bool(status.st_mode & other)


def _blocking_directory(path: Path, user: WorkerUser) -> tuple[Path, int] | None:
    """The first existing directory above `path` that `user` may not pass, with its mode."""
    for directory in reversed(path.parents):
        try:
            status = directory.stat()
        except FileNotFoundError:
            return None  # created later by the gateway, with the modes `_prepare_run_dirs` sets
        if not _permits(status, user, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            return directory, stat.S_IMODE(status.st_mode)
    return None


def _check_reachable(run_dir: Path, user: WorkerUser) -> None:
    """Refuse a run directory the worker user could not reach (its model directories, sockets
    and private directories are under it).

    Raises:
        DeploymentError: a directory above `run_dir` does not let the user search it.
    """
    blocking = _blocking_directory(run_dir, user)
    if blocking is not None:
        directory, mode = blocking
        raise DeploymentError(
            f"workers run as {user.name!r} (the gateway runs as root) but cannot reach the run"
            f" directory {run_dir}: {directory} (mode {mode:04o}) does not let {user.name!r}"
            f" through. Let it (chmod o+x {directory}), move --state-dir, or name another"
            " --worker-user"
        )


def check_runs_builtin_server(user: WorkerUser | None) -> None:
    """Refuse to deploy the built-in server when the worker user cannot run this interpreter or
    import this splitserve (both are the gateway's own: e.g. a Python installed under /root).

    Raises:
        DeploymentError: naming the directory or file that stops it.
    """
    if user is None:
        return
    interpreter = Path(os.path.realpath(sys.executable))
    package = Path(os.path.realpath(splitserve.__file__)).parent
    for needed in (interpreter, package):
        blocking = _blocking_directory(needed, user)
        if blocking is not None:
            directory, mode = blocking
            raise DeploymentError(
                f"the built-in XGBoost server runs as {user.name!r} (the gateway runs as root),"
                f" which cannot reach {needed}: {directory} (mode {mode:04o}) does not let it"
                " through. Install Python and splitserve where other users can run them, or"
                " name another --worker-user"
            )
    status = interpreter.stat()
    if not _permits(status, user, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
        raise DeploymentError(
            f"the built-in XGBoost server runs as {user.name!r}, which may not execute"
            f" {interpreter} (mode {stat.S_IMODE(status.st_mode):04o})"
        )
