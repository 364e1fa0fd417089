"""End-to-end fixtures: the real `splitserve serve` in a subprocess, and boto3 clients for it.

The gateway wrapper itself is tests/support/gateway.py; its names stay importable from here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import Gateway, running_gateway, start_gateway
from tests.support.http import free_port

__all__ = ["Gateway", "free_port", "running_gateway", "start_gateway"]


@pytest.fixture
def gateway(tmp_path: Path, model_store: Path) -> Iterator[Gateway]:
    """A fresh gateway over the shared model store, stopped (SIGTERM) when the test ends."""
    with running_gateway(tmp_path / "state", model_store) as running:
        yield running


@pytest.fixture
def sagemaker(gateway: Gateway) -> Any:
    """A boto3 SageMaker (control plane) client against the gateway."""
    return gateway.client("sagemaker")


@pytest.fixture
def runtime(gateway: Gateway) -> Any:
    """A boto3 SageMaker runtime (data plane) client against the gateway."""
    return gateway.client("sagemaker-runtime")
