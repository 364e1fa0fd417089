"""`Gateway`: the real `splitserve serve` in a subprocess on a free port, for end-to-end tests.

tests/e2e/conftest.py turns it into fixtures; tests that need a gateway of their own (other
flags, a restart, a command prefix) call `start_gateway` or `running_gateway` directly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.support.http import free_port

_START_TIMEOUT_SECONDS = 60.0

#: Run as root, the gateway runs its workers as `nobody`, who can reach neither pytest's 0700
#: temporary directories nor an interpreter under /root: keep them root here (tests/workers tests
#: the switch itself).
_WORKER_USER = ("--worker-user", "root") if os.geteuid() == 0 else ()


@dataclass
class Gateway:
    """A running `splitserve serve` process."""

    process: subprocess.Popen[bytes]
    url: str
    state_dir: Path
    model_store: Path
    log_path: Path

    def client(self, service: str, **config: Any) -> Any:
        """A boto3 client for `service` ("sagemaker" or "sagemaker-runtime") against the gateway."""
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}, **config),
        )

    def log(self) -> str:
        """What the gateway has printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        """Signal the gateway and wait for it to exit; return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_gateway(
    state_dir: Path, model_store: Path, *extra: str, command_prefix: Sequence[str] = ()
) -> Gateway:
    """Start `splitserve serve` on a free port and wait until it answers /ping.

    `command_prefix` runs it under another command, e.g. `prlimit --nofile=400:400`.
    """
    port = free_port()
    log_path = state_dir.parent / f"gateway-{port}.log"
    state_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *command_prefix,
                sys.executable, "-m", "splitserve.cli", "serve", "--port", str(port),
                "--state-dir", str(state_dir), "--model-store", str(model_store),
                *_WORKER_USER, *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    gateway = Gateway(process, f"http://127.0.0.1:{port}", state_dir, model_store, log_path)
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{gateway.log()}")
        try:
            with urllib.request.urlopen(f"{gateway.url}/ping", timeout=1):
                return gateway
        except OSError:
            time.sleep(0.1)
    gateway.stop(signal.SIGKILL)
    raise RuntimeError(f"gateway did not answer /ping in time:\n{gateway.log()}")


@contextlib.contextmanager
def running_gateway(
    state_dir: Path, model_store: Path, *extra: str, command_prefix: Sequence[str] = ()
) -> Iterator[Gateway]:
    """`start_gateway`, stopped (SIGTERM) at the end, its log printed for a failing test."""
    running = start_gateway(state_dir, model_store, *extra, command_prefix=command_prefix)
    try:
        yield running
    finally:
        running.stop()
        # pytest shows a test's captured output only when it fails: the gateway's side of it.
        print(f"--- gateway log ---\n{running.log()}")
