"""A real S3-compatible store for tests: moto's server on a free loopback port, and the
credentials boto3 (and Ray nodes started after them) find in the environment."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

#: How long moto's server may take to answer at all (it imports much on a busy machine).
S3_SERVER_START_SECONDS = 60.0

#: moto's server takes any credentials; boto3 needs some to sign.
S3_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "splitserve-test",
    "AWS_SECRET_ACCESS_KEY": "splitserve-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def s3_credentials() -> Iterator[None]:
    """`S3_ENVIRONMENT` set in this process's environment (inherited by what it starts)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in S3_ENVIRONMENT.items():
            patch.setenv(name, value)
        yield


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free loopback port, stopped at the end: its endpoint URL."""
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
