"""Fixtures shared by the worker tests: a short run directory, a per-test marker, a BYO model,
an S3-compatible store."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitserve.workers.artifacts import remove_model_dir
from tests.support import s3 as support_s3


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


@pytest.fixture(scope="module")
def s3_credentials() -> Iterator[None]:
    """Credentials boto3 finds in the environment (moto's server takes any); set before a Ray
    cluster starts, so its nodes' processes find them too."""
    with support_s3.s3_credentials():
        yield


@pytest.fixture(scope="module")
def s3_endpoint(s3_credentials: None) -> Iterator[str]:
    """A real S3-compatible server (moto's) on a free loopback port: its endpoint URL."""
    with support_s3.s3_server() as url:
        yield url
