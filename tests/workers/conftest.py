"""Fixtures shared by the worker tests: a short run directory, a per-test marker, a BYO model."""

from __future__ import annotations

import shutil
import tempfile
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
