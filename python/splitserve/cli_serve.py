"""`splitserve serve`: the serve options as `Settings` (`settings_from_args`), and the run itself
(`serve`): the refusals that need no gateway (an unsigned non-loopback listener, Ray without Ray),
the state directory's lock, then either the replicas' supervisor (`--processes N`) or one gateway.

Part of the face, beside `cli` (which parses argv and dispatches here). The gateway's modules are
imported inside `serve`, so the other commands never load the Rust router or the planes.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace

from splitserve.config import LOOPBACK_ADDRESS, STATE_DIRECTORY_MODE, Settings, WorkerSettings
from splitserve.errors import DeploymentError

_DEFAULTS = Settings()


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The `Settings` for `splitserve serve` with the given arguments."""
    located = replace(
        _DEFAULTS.with_state_dir(args.state_dir, args.model_store),
        state_database_url=args.state,
    )
    # Over a PostgreSQL state, replicas on other hosts forward to the instances directly.
    across_hosts = located.state_on_server
    workers: WorkerSettings = replace(
        located.workers,
        allow_pickle=args.allow_pickle,
        use_tcp=args.worker_tcp or across_hosts,
        listen_host=args.advertise_address if across_hosts else LOOPBACK_ADDRESS,
        max_batch_rows=args.max_batch_rows,
        pipeline_depth=args.pipeline_depth,
        invocation_timeout_seconds=args.invocation_timeout,
        health_interval_seconds=args.health_check_interval,
        worker_user=args.worker_user,
        max_artifact_bytes=args.max_artifact_bytes,
        max_artifact_files=args.max_artifact_files,
    )
    return replace(
        located,
        host=args.host,
        port=args.port,
        images_file=args.images,
        allowed_artifact_paths=tuple(args.allow_artifact_path),
        body_read_timeout_seconds=args.body_read_timeout,
        workers=workers,
        edge=replace(
            _DEFAULTS.edge,
            header_read_timeout_seconds=args.header_read_timeout,
            max_connections=args.max_connections,
            max_inflight_body_bytes=args.max_inflight_body_bytes,
        ),
        control=replace(
            _DEFAULTS.control,
            max_instances_per_variant=args.max_instances_per_variant,
            max_vcpu_overcommit=args.max_vcpu_overcommit,
        ),
        auth=replace(_DEFAULTS.auth, keys_file=args.auth, data_plane=args.auth_data_plane),
        cloudwatch=replace(_DEFAULTS.cloudwatch, retention_days=args.metrics_retention),
        metrics_created=args.metrics_created,
        feedback=replace(
            _DEFAULTS.feedback, metric=args.experiment_metric, index_enabled=args.feedback_index
        ),
        placement=replace(
            _DEFAULTS.placement,
            backend=args.placement,
            ray_address=args.ray_address,
            ray_namespace=args.ray_namespace,
            type_resources=tuple(args.ray_type_resource),
            s3_endpoint_url=args.s3_endpoint_url,
            node_model_dir=args.ray_node_dir,
        ),
        replicas=replace(
            _DEFAULTS.replicas,
            processes=args.processes,
            advertise_address=args.advertise_address,
            supervisor_pid=args.supervisor_pid,
            replica_index=args.replica_index,
        ),
        logs=replace(
            _DEFAULTS.logs,
            level=args.log_level,
            format=args.log_format,
            access_log=args.access_log,
        ),
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: Settings, *, insecure: bool, argv: Sequence[str] = ()) -> int:
    """Run the gateway until SIGINT or SIGTERM; return the exit code.

    With `--processes N` (N > 1) this process supervises N replicas, each started with the
    serve command `argv` (wiring.processes); a replica it started runs the gateway itself.
    """
    authenticated = settings.auth.keys_file is not None
    if settings.auth.data_plane and not authenticated:
        print("splitserve: --auth-data-plane needs --auth FILE", file=sys.stderr)
        return 2
    if not _is_loopback(settings.host) and not insecure and not authenticated:
        print(
            f"splitserve: refusing to listen on {settings.host}: anyone who can reach it could "
            "change endpoints and traffic weights. Listen on 127.0.0.1, require signatures "
            "with --auth FILE, or pass --insecure.",
            file=sys.stderr,
        )
        return 2
    if not _is_loopback(settings.host) and authenticated and not settings.auth.data_plane:
        logging.getLogger(__name__).warning(
            "listening on %s with an unsigned data plane: anyone who can reach it can invoke "
            "endpoints (--auth-data-plane requires signatures there too)",
            settings.host,
        )
    # The gateway's modules are imported here, not at the top: they load the Rust router and the
    # planes, and `splitserve evaluate` and `stats` must run without either (where the extension
    # was never built: tests/test_architecture.py).
    from splitserve.app import create_app  # noqa: PLC0415
    from splitserve.control.store import StateFileError  # noqa: PLC0415
    from splitserve.database import DatabaseError, DatabaseUnavailable  # noqa: PLC0415
    from splitserve.wiring import edge, logs  # noqa: PLC0415
    from splitserve.wiring.auth import AuthFileError  # noqa: PLC0415
    from splitserve.wiring.lock import StateDirInUse, StateDirLock  # noqa: PLC0415
    from splitserve.wiring.processes import (  # noqa: PLC0415
        ReplicaSupervisor,
        SupervisorGone,
        die_with_supervisor,
        prepare_state,
        reserve_port,
    )
    from splitserve.workers.images import ImageRegistryError  # noqa: PLC0415
    from splitserve.workers.process import WorkerUserError  # noqa: PLC0415

    if settings.placement.backend == "ray" and importlib.util.find_spec("ray") is None:
        print(
            "splitserve: --placement ray needs Ray, which is not installed: "
            "pip install 'splitserve[ray]' (or pip install ray)",
            file=sys.stderr,
        )
        return 2
    placement = settings.placement
    for flag, given, reason in (
        (
            "--s3-endpoint-url",
            placement.s3_endpoint_url,
            "its nodes fetch model data themselves); local instances read s3:// URLs under "
            "--model-store",
        ),
        (
            "--ray-node-dir",
            placement.node_model_dir,
            "a directory on its nodes); local instances keep theirs under --state-dir",
        ),
    ):
        if given is not None and placement.backend != "ray":
            print(f"splitserve: {flag} is for --placement ray ({reason}", file=sys.stderr)
            return 2
    logs.configure(settings.logs)
    replicas = settings.replicas
    if replicas.supervisor_pid is not None:
        # A replica of `--processes N`: its supervisor holds the state directory's lock.
        try:
            die_with_supervisor(replicas.supervisor_pid)
        except SupervisorGone as error:
            print(f"splitserve: {error}", file=sys.stderr)
            return 2
        lock = None
    else:
        try:
            # The state directory first, with its own mode (the model store is usually inside
            # it), then its lock: nothing else may touch the directory while a gateway owns it.
            settings.state_dir.mkdir(mode=STATE_DIRECTORY_MODE, parents=True, exist_ok=True)
            lock = StateDirLock.acquire(settings.lock_file)
        except (StateDirInUse, OSError) as error:
            print(f"splitserve: {_one_line(error)}", file=sys.stderr)
            return 2
    if replicas.processes > 1:
        try:
            prepare_state(settings)
            reserved = reserve_port(settings.host, settings.port)
        except (StateFileError, OSError) as error:
            where = (
                "" if isinstance(error, StateFileError) else f"{settings.host}:{settings.port}: "
            )
            print(f"splitserve: {where}{_one_line(error)}", file=sys.stderr)
            if lock is not None:
                lock.release()
            return 2
        try:
            print(
                f"======== {replicas.processes} replicas on http://{settings.host}:"
                f"{settings.port} ========",
                flush=True,
            )
            return ReplicaSupervisor(settings, argv).run()
        finally:
            reserved.close()
            if lock is not None:
                lock.release()
    try:
        settings.model_store.mkdir(parents=True, exist_ok=True)
        edge.run(create_app(settings), settings, lambda message: print(message, flush=True))
    except (DatabaseUnavailable, DatabaseError) as error:
        detail = f" ({error.detail})" if isinstance(error, DatabaseUnavailable) else ""
        print(f"splitserve: {error}{detail}", file=sys.stderr)
        return 2
    except (
        StateFileError,
        ImageRegistryError,
        AuthFileError,
        edge.EdgeLimitError,
        edge.ListenError,
        logs.LogSetupError,
        WorkerUserError,
        DeploymentError,
    ) as error:
        print(f"splitserve: {error}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.release()
    return 0


def _one_line(error: Exception) -> str:
    """`error` as one line: an OSError by its reason and file, anything else by its message."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return str(error)
