"""Fixtures shared by the worker tests: a short run directory, a per-test marker, a BYO model,
an S3-compatible store."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitserve.workers.artifacts import remove_model_dir


@pytest.fixture
def marker() -> str:
    """A value unique to this test, for the workers' MARKER_VARIABLE."""
    return uuid.uuid4().hex


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short run directory (Unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ssw", dir="/tmp"))
    # Workers run as an unprivileged user when the tests run as root: let it through (not list).
    path.chmod(0o711)
    try:
        yield path / "run"
    finally:
        model_root = path / "run" / "m"
        if model_root.exists():
            for model_dir in model_root.iterdir():
                remove_model_dir(model_dir)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def byo_model(tmp_path: Path) -> Path:
    """A model directory for the example BYO server: 3 features."""
    model_dir = tmp_path / "byo-model"
    model_dir.mkdir()
    (model_dir / "model.json").write_text('{"coefficients": [0.5, -0.25, 1.0], "intercept": 0.1}')
    return model_dir


#: How long moto's server may take to answer at all (it imports much on a busy machine).
S3_SERVER_START_SECONDS = 60.0


@pytest.fixture(scope="module")
def s3_credentials() -> Iterator[None]:
    """Credentials boto3 finds in the environment (moto's server takes any); set before a Ray
    cluster starts, so its nodes' processes find them too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "splitserve-test")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "splitserve-test-secret")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield


@pytest.fixture(scope="module")
def s3_endpoint(s3_credentials: None) -> Iterator[str]:
    """A real S3-compatible server (moto's) on a free loopback port: its endpoint URL."""
    pytest.importorskip("moto.server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + S3_SERVER_START_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("moto's S3 server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
