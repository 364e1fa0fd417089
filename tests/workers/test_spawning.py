"""How workers are spawned and confined: the exec shim, the worker user, the environment, the
relayed output, and health checks that a gateway out of file descriptors cannot fail."""

from __future__ import annotations

import errno
import json
import logging
import os
import pwd
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from splitserve.contract.upstream import UpstreamAddress, UpstreamConnectError, UpstreamPool
from splitserve.errors import DeploymentError
from splitserve.workers import launch, process
from splitserve.workers.catalog import InstanceCatalog
from splitserve.workers.fleet import VariantFleet
from splitserve.workers.health import HealthProbe, PingResult
from splitserve.workers.images import ImageRegistry
from splitserve.workers.local_placement import Launch, LocalProcess
from splitserve.workers.output import OUTPUT_LINES, OutputRelay
from splitserve.workers.process import (
    SpawnLimits,
    WorkerUser,
    WorkerUserError,
    launch_argv,
    worker_environment,
)
from splitserve.workers.supervisor import Supervisor
from tests.workers.test_supervisor import (
    ARTIFACT_ROOTS,
    FAULT_IMAGE,
    XGBOOST_IMAGE,
    RecordingListener,
    deployment,
    exists,
    fast_settings,
    processes_with_marker,
    wait_until,
)

PLAIN_SERVER = Path(__file__).resolve().parent / "plain_server.py"
SYSTEM_PYTHON = Path("/usr/bin/python3")
PLAIN_IMAGE = "test.local/plain-server:1"


def _limits(**overrides: object) -> SpawnLimits:
    values: dict[str, object] = {
        "cpus": tuple(sorted(os.sched_getaffinity(0)))[:1],
        "memory_limit_bytes": None,
        "user": None,
        "log_lines_per_second": 20,
    }
    values.update(overrides)
    return SpawnLimits(**values)  # type: ignore[arg-type]


def _nobody() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or _nobody() is None, reason="switching users needs root and 'nobody'"
)


# --- the exec shim ------------------------------------------------------------------------------


def test_the_shim_parses_its_options_and_the_program() -> None:
    options, program = launch.parse(
        ["--parent-pid", "7", "--cpus", "0,1", "--", "server", "--port", "1"]
    )
    assert options == {"--parent-pid": "7", "--cpus": "0,1"}
    assert program == ["server", "--port", "1"]
    for bad in (["--parent-pid", "7", "--cpus", "0"], ["--bogus", "1", "--", "x"], ["--cpus"]):
        with pytest.raises(launch.LaunchError):
            launch.parse(bad)


def test_the_shim_confines_then_execs_in_the_same_process() -> None:
    cpus = tuple(sorted(os.sched_getaffinity(0)))[-1:]
    argv = launch_argv(
        ["/bin/sh", "-c", "echo pid=$$; cat /proc/self/status /proc/self/limits"],
        _limits(cpus=cpus, memory_limit_bytes=3 * 1024**3),
        os.getpid(),
    )
    assert "-I" in argv
    assert "-S" in argv
    shim = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = shim.communicate(timeout=30)
    assert shim.returncode == 0, output
    lines = output.splitlines()
    assert lines[0] == f"pid={shim.pid}"  # exec'd, not forked again
    assert "NoNewPrivs:\t1" in lines
    assert f"Cpus_allowed_list:\t{cpus[0]}" in lines
    address_space = next(line for line in lines if line.startswith("Max address space"))
    assert address_space.split()[3] == str(3 * 1024**3)


def test_the_shim_exits_when_its_parent_is_not_the_gateway() -> None:
    # The gateway that spawned it died before the parent-death signal was armed.
    argv = launch_argv(["/bin/true"], _limits(), parent_pid=1)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == launch.EXIT_SETUP_FAILED
    assert "the gateway exited before the worker started" in result.stderr


def test_the_shim_says_when_the_program_cannot_be_executed() -> None:
    argv = launch_argv(["/nonexistent/server"], _limits(), os.getpid())
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == launch.EXIT_EXEC_FAILED
    assert "could not start the model server '/nonexistent/server'" in result.stderr


def test_the_shim_enters_its_directory_and_keeps_no_descriptor_but_the_standard_three(
    tmp_path: Path,
) -> None:
    # A descriptor left inheritable (as a C library may open one) must not reach the server.
    opened = os.open(os.devnull, os.O_RDONLY)
    leaked = os.dup2(opened, 50, inheritable=True)
    os.close(opened)
    try:
        argv = launch_argv(
            ["/bin/sh", "-c", "pwd; ls /proc/self/fd"], _limits(), os.getpid(), cwd=tmp_path
        )
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, check=False, close_fds=False
        )
    finally:
        os.close(leaked)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[0] == str(tmp_path)
    assert str(leaked) not in lines[1:]  # 0, 1, 2 and the one ls opened to list them


def test_the_shim_says_when_its_directory_is_missing(tmp_path: Path) -> None:
    argv = launch_argv(["/bin/true"], _limits(), os.getpid(), cwd=tmp_path / "gone")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == launch.EXIT_SETUP_FAILED
    assert "could not enter the working directory" in result.stderr


# --- the environment ----------------------------------------------------------------------------


def test_a_models_environment_never_overrides_the_gateways(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = {"PATH": "/usr/bin", "HOME": "/run/w/1", "SM_MODEL_DIR": "/run/m/x"}
    image = {"LD_LIBRARY_PATH": "/opt/lib", "IMAGE_SETTING": "1"}
    model = {
        "SM_MODEL_DIR": "/etc",
        "HOME": "/root",
        "PATH": "/tmp/evil",
        "TMPDIR": "/tmp",
        "LD_PRELOAD": "/tmp/evil.so",
        "PYTHONSTARTUP": "/tmp/evil.py",
        "PYTHONPATH": "/tmp",
        "MODEL_SETTING": "kept",
    }
    with caplog.at_level(logging.WARNING, logger="splitserve.workers.output"):
        environment = worker_environment(gateway, image, model, name="ep/A/g1/0")
    assert environment == {
        "PATH": "/usr/bin",
        "HOME": "/run/w/1",
        "SM_MODEL_DIR": "/run/m/x",
        "LD_LIBRARY_PATH": "/opt/lib",  # the operator's registry entry is trusted
        "IMAGE_SETTING": "1",
        "MODEL_SETTING": "kept",
    }
    assert (
        "ep/A/g1/0: ignored the model's Environment variables the gateway controls: HOME,"
        " LD_PRELOAD, PATH, PYTHONPATH, PYTHONSTARTUP, SM_MODEL_DIR, TMPDIR" in caplog.text
    )


# --- relayed output -----------------------------------------------------------------------------


def test_relayed_output_is_rate_limited_per_second(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.2]
    monkeypatch.setattr("splitserve.workers.output.time.monotonic", lambda: now[0])
    relay = OutputRelay("ep/A/g1/0", lines_per_second=3)
    with caplog.at_level(logging.INFO, logger="splitserve.workers.output"):
        for index in range(10):
            relay.line(f"traceback line {index}")
        now[0] = 101.0
        relay.line("next second")
        relay.line("and another")
        for index in range(5):
            relay.line(f"burst {index}")
        relay.flush()
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "ep/A/g1/0 | traceback line 0",
        "ep/A/g1/0 | traceback line 1",
        "ep/A/g1/0 | traceback line 2",
        "ep/A/g1/0 | (suppressed 7 lines of output over 3 per second; the last 64 are kept for"
        " the failure reason)",
        "ep/A/g1/0 | next second",
        "ep/A/g1/0 | and another",
        "ep/A/g1/0 | burst 0",
        "ep/A/g1/0 | (suppressed 4 lines of output over 3 per second; the last 64 are kept for"
        " the failure reason)",
    ]


async def test_a_chatty_worker_keeps_every_line_for_its_failure_reason(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    worker = await process.spawn_worker(
        ["/bin/sh", "-c", "for i in $(seq 1 500); do echo line $i; done"],
        name="chatty",
        environment={"PATH": os.defpath},
        cwd=tmp_path,
        limits=_limits(log_lines_per_second=5),
    )
    with caplog.at_level(logging.INFO, logger="splitserve.workers.output"):
        assert await worker.wait() == 0
        await worker.kill()
    relayed = [record.getMessage() for record in caplog.records if record.name.endswith("output")]
    assert worker.output.lines()[-1] == "line 500"
    assert len(worker.output.lines()) == OUTPUT_LINES
    assert len(relayed) < 100  # 500 printed; a few seconds' worth at most got through
    assert any("suppressed" in message for message in relayed)


# --- health checks and file descriptors ---------------------------------------------------------


async def test_a_probe_out_of_descriptors_is_not_a_failed_check(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    probe = HealthProbe(UpstreamAddress.tcp("127.0.0.1", 9), timeout_seconds=0.5)
    try:
        # Nothing listens on the discard port: a plain failure.
        assert await probe.ping() is PingResult.FAILED

        async def out_of_descriptors(*_args: object, **_kwargs: object) -> None:
            try:
                raise OSError(errno.EMFILE, "Too many open files")
            except OSError as error:
                raise UpstreamConnectError("cannot connect") from error

        monkeypatch.setattr(UpstreamPool, "request", out_of_descriptors)
        with caplog.at_level(logging.WARNING):
            assert await probe.ping() is PingResult.NOT_CHECKED
        assert "out of file descriptors" in caplog.text
        assert "not counted as a failed health check" in caplog.text
    finally:
        await probe.close()


async def test_an_instance_is_not_replaced_while_the_gateway_is_out_of_descriptors(
    images_file: ImageRegistry, run_dir: Path, marker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = RecordingListener()
    supervisor = Supervisor(
        fast_settings(run_dir),
        images_file,
        InstanceCatalog(),
        listener,
        artifact_roots=ARTIFACT_ROOTS,
    )
    try:
        fleet = supervisor.fleet(deployment(marker))
        await fleet.start()
        checks = 0

        async def not_checked(_probe: HealthProbe) -> PingResult:
            nonlocal checks
            checks += 1
            return PingResult.NOT_CHECKED

        monkeypatch.setattr(HealthProbe, "ping", not_checked)
        # Far more checks than `unhealthy_after_failures` failed ones would take.
        await wait_until(lambda: checks >= 3 * supervisor.settings.unhealthy_after_failures)
        (info,) = fleet.instances()
        assert info.state == "healthy"
        assert info.restarts == 0
        assert listener.kinds(info.name) == ["healthy"]
    finally:
        await supervisor.close()
    assert processes_with_marker(marker) == []


@pytest.fixture
def images_file(tmp_path: Path) -> ImageRegistry:
    """The fault server, and the standard-library server run by the system's Python."""
    from tests.workers.test_supervisor import FAULT_SERVER

    registry = tmp_path / "images.toml"
    registry.write_text(
        f'[images."{FAULT_IMAGE}"]\ncommand = ["{{python}}", "{FAULT_SERVER}"]\n\n'
        f'[images."{PLAIN_IMAGE}"]\ncommand = ["{SYSTEM_PYTHON}", "{PLAIN_SERVER}"]\n'
    )
    return ImageRegistry.load(registry)


# --- the worker user ----------------------------------------------------------------------------


def test_no_switch_unless_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert WorkerUser.for_gateway("no-such-user-anywhere") is None


@needs_root
def test_a_missing_worker_user_fails_clearly(run_dir: Path) -> None:
    with pytest.raises(WorkerUserError, match="the worker user 'no-such-user-x' does not exist"):
        Supervisor(
            fast_settings(run_dir, worker_user="no-such-user-x"),
            ImageRegistry(),
            InstanceCatalog(),
            RecordingListener(),
            artifact_roots=(),
        )


@needs_root
async def test_a_run_dir_the_worker_user_cannot_reach_fails_the_deploy_clearly(
    run_dir: Path, images_file: ImageRegistry
) -> None:
    closed = run_dir.parent / "closed"
    closed.mkdir(mode=0o700)
    supervisor = Supervisor(
        fast_settings(closed / "state" / "run", worker_user="nobody"),
        images_file,
        InstanceCatalog(),
        RecordingListener(),
        artifact_roots=(),
    )
    fleet = supervisor.fleet(deployment("m"))
    with pytest.raises(DeploymentError) as raised:
        await fleet.start()
    message = raised.value.message
    assert f"cannot reach the run directory {closed / 'state' / 'run'}" in message
    assert f"{closed} (mode 0700)" in message
    assert "--worker-user" in message
    assert supervisor.fleets() == []


@needs_root
def test_the_built_in_server_needs_an_interpreter_the_worker_user_can_run(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hidden = tmp_path / "private" / "python3"
    hidden.parent.mkdir(mode=0o700)
    hidden.write_bytes(b"")
    monkeypatch.setattr(sys, "executable", str(hidden))
    supervisor = Supervisor(
        fast_settings(run_dir, worker_user="nobody"),
        ImageRegistry(),
        InstanceCatalog(),
        RecordingListener(),
        artifact_roots=ARTIFACT_ROOTS,
    )
    model = tmp_path / "xgboost-model"
    model.write_bytes(b"m")
    with pytest.raises(DeploymentError, match=r"runs as 'nobody'.*cannot reach"):
        supervisor.fleet(deployment("m", image=XGBOOST_IMAGE, model_data=model))


@needs_root
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs /usr/bin/python3")
async def test_workers_of_a_root_gateway_run_unprivileged(
    images_file: ImageRegistry, run_dir: Path, marker: str, byo_model: Path
) -> None:
    import aiohttp

    nobody = _nobody()
    assert nobody is not None
    supervisor = Supervisor(
        fast_settings(run_dir, worker_user="nobody"),
        images_file,
        InstanceCatalog(),
        RecordingListener(),
        artifact_roots=ARTIFACT_ROOTS,
    )
    try:
        fleet = supervisor.fleet(deployment(marker, image=PLAIN_IMAGE, model_data=byo_model))
        await fleet.start()
        (instance,) = fleet.instances()
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{instance.address.port}/info") as response,
        ):
            info = json.loads(await response.read())
        assert (info["uid"], info["euid"], info["gid"]) == (nobody.pw_uid,) * 2 + (nobody.pw_gid,)
        assert sorted(info["groups"]) == sorted(set(os.getgrouplist("nobody", nobody.pw_gid)))
        assert info["no_new_privs"] == "1"
        assert info["home"] == info["tmpdir"]
        assert info["tmpdir_writable"] is True
        assert info["model_files"] == ["model.json"]  # the model directory stays readable
        private = Path(info["tmpdir"])
        assert private.parent == supervisor.run_dir / "w"
        status = os.stat(private)
        assert (status.st_uid, stat.S_IMODE(status.st_mode)) == (nobody.pw_uid, 0o700)
        await fleet.stop()
        assert not exists(private)
    finally:
        await supervisor.close()
    assert processes_with_marker(marker) == []


async def test_what_a_killed_gateway_left_in_the_run_directory_is_swept(
    images_file: ImageRegistry, run_dir: Path, marker: str
) -> None:
    leftover_home = run_dir / "w" / "0badc0de"
    (leftover_home / "tmp").mkdir(parents=True)
    (leftover_home / "tmp" / "big.bin").write_bytes(b"x" * 1024)
    (run_dir / "s").mkdir()
    (run_dir / "s" / "0badc0de.sock").write_bytes(b"")
    supervisor = Supervisor(
        fast_settings(run_dir),
        images_file,
        InstanceCatalog(),
        RecordingListener(),
        artifact_roots=(),
    )
    try:
        fleet = supervisor.fleet(deployment(marker))
        await fleet.start()
        assert not exists(leftover_home)
        assert not exists(run_dir / "s" / "0badc0de.sock")
        (info,) = fleet.instances()
        assert info.state == "healthy"
    finally:
        await supervisor.close()


async def test_a_restart_that_finds_the_gateway_out_of_descriptors_is_retried(
    images_file: ImageRegistry, run_dir: Path, marker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = RecordingListener()
    supervisor = Supervisor(
        fast_settings(run_dir), images_file, InstanceCatalog(), listener, artifact_roots=()
    )
    try:
        fleet = supervisor.fleet(deployment(marker))
        await fleet.start()
        (info,) = fleet.instances()
        real_plan = VariantFleet.plan
        failures = [OSError(errno.EMFILE, "Too many open files")]

        def plan_once_out_of_descriptors(self: VariantFleet, instance: LocalProcess) -> Launch:
            if failures:
                raise failures.pop()
            return real_plan(self, instance)

        monkeypatch.setattr(VariantFleet, "plan", plan_once_out_of_descriptors)
        assert info.pid is not None
        os.kill(info.pid, signal.SIGKILL)
        await listener.wait_for_kinds(info.name, ["healthy", "unhealthy", "healthy"])
        assert failures == []
        assert fleet.instances()[0].restarts == 2  # the failed start, then the good one
    finally:
        await supervisor.close()
    assert processes_with_marker(marker) == []


# --- the command line -----------------------------------------------------------------------------


def test_the_serve_flags_for_workers_and_artifacts() -> None:
    from splitserve import cli

    defaults = cli.settings_from_args(cli.build_parser().parse_args(["serve"]))
    assert defaults.workers.worker_user == "nobody"
    assert defaults.allowed_artifact_paths == ()
    assert (defaults.workers.max_artifact_bytes, defaults.workers.max_artifact_files) == (
        4 * 1024**3,
        10_000,
    )
    argv = ["serve", "--worker-user", "splitserve-worker", "--allow-artifact-path", "/srv/a"]
    argv += ["--allow-artifact-path", "/srv/b", "--max-artifact-bytes", "1000"]
    argv += ["--max-artifact-files", "7"]
    settings = cli.settings_from_args(cli.build_parser().parse_args(argv))
    assert settings.workers.worker_user == "splitserve-worker"
    assert settings.allowed_artifact_paths == (Path("/srv/a"), Path("/srv/b"))
    assert (settings.workers.max_artifact_bytes, settings.workers.max_artifact_files) == (1000, 7)


@needs_root
def test_serve_with_a_missing_worker_user_exits_2_saying_so(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [sys.executable, "-m", "splitserve.cli", "serve", "--port", str(port)]
    argv += ["--state-dir", str(tmp_path / "state"), "--worker-user", "no-such-user-x"]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "splitserve: the worker user 'no-such-user-x' does not exist" in result.stderr
