"""deploy/haproxy.cfg, as shipped, in front of two gateways over one PostgreSQL state."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import create_two_variant_endpoint
from tests.e2e.test_replicas import Load, client, invoked_variants, wait_for
from tests.e2e.test_replicas_postgres import controller_pid
from tests.support.gateway import Gateway, start_gateway
from tests.support.http import free_port

pytestmark = pytest.mark.e2e

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def balanced(
    tmp_path: Path, model_store: Path, postgres_url: str
) -> Iterator[tuple[str, Gateway, Gateway]]:
    """HAProxy's address, and gateways A (the controller) and B behind it."""
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (make test installs it)")
    started: list[Gateway] = []
    proxy = None
    try:
        for name in ("a", "b"):
            started.append(
                start_gateway(tmp_path / name / "state", model_store, "--state", postgres_url)
            )
            if name == "a":
                wait_for(lambda: controller_pid(postgres_url), 30, "A controlling")
        a, b = started
        port = free_port()
        environment = {
            **os.environ,
            "SPLITSERVE_BIND": f"127.0.0.1:{port}",
            "SPLITSERVE_GW1": a.url.removeprefix("http://"),
            "SPLITSERVE_GW2": b.url.removeprefix("http://"),
        }
        proxy = subprocess.Popen(["haproxy", "-db", "-f", str(CONFIG)], env=environment)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url), 15, "HAProxy answering")
        yield url, a, b
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        for gateway in started:
            gateway.stop()
            print(f"--- gateway {gateway.url} log ---\n{gateway.log()}")


def test_the_shipped_haproxy_config_spreads_requests_and_survives_a_dead_gateway(
    balanced: tuple[str, Gateway, Gateway], postgres_url: str
) -> None:
    url, a, b = balanced
    # The control plane through the balancer, whichever gateway takes the call.
    create_two_variant_endpoint(client("sagemaker", url), "ab")
    assert invoked_variants(url, 20).total() == 20
    load = Load(url, 2)
    time.sleep(1.0)
    b.process.send_signal(signal.SIGKILL)  # B does not control: A's instances keep serving
    b.process.wait()
    time.sleep(3.0)  # HAProxy's checks take B out within two intervals
    failed_before = len(load.failed)
    time.sleep(2.0)
    load.stop()
    # Only requests in flight on B when it died may fail; none after HAProxy took it out.
    assert failed_before <= 2
    assert len(load.failed) == failed_before
    assert load.ok > 0
    assert controller_pid(postgres_url) == a.process.pid
