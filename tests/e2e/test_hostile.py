"""Hostile clients against the real `splitserve serve`: connections that exhaust descriptors, bodies
that exhaust memory, heads trickled to hold connections (docs/reliability.md, "Hostile input").

The gateway runs under `prlimit --nofile=400:400`, so that descriptors run out after a few hundred
connections (hard limit 400 too: the gateway raises its soft limit to the hard one).
"""

from __future__ import annotations

import contextlib
import select
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.helpers import FAST_WAIT, csv_rows
from tests.support.gateway import Gateway, running_gateway
from tests.support.models import NUM_FEATURES, ROLE, XGBOOST_IMAGE

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)"),
]

#: The gateway's descriptor limit (soft and hard) in these tests.
DESCRIPTOR_LIMIT = 400
#: The connection cap the gateway derives from it: (400 - 256 reserved) // 2.
CONNECTION_CAP = 72
HEADER_READ_TIMEOUT_SECONDS = 1.0
INFLIGHT_BODY_BYTES = 64 * 1024 * 1024
HEALTH_CHECK_INTERVAL_SECONDS = 0.5
_MIB = 1024 * 1024
_GOOD_ROW = csv_rows(np.zeros((1, NUM_FEATURES), dtype=np.float32))
# How long a test waits for something the gateway does on its own (generous: a busy machine).
_PATIENCE_SECONDS = 30.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[Gateway]:
    """A gateway with few descriptors, serving endpoint `hostile` (one XGBoost instance)."""
    root = tmp_path_factory.mktemp("hostile")
    with running_gateway(
        root / "state",
        model_store,
        "--health-check-interval", str(HEALTH_CHECK_INTERVAL_SECONDS),
        "--header-read-timeout", str(HEADER_READ_TIMEOUT_SECONDS),
        "--max-inflight-body-bytes", str(INFLIGHT_BODY_BYTES),
        command_prefix=("prlimit", f"--nofile={DESCRIPTOR_LIMIT}:{DESCRIPTOR_LIMIT}"),
    ) as running:  # fmt: skip
        sagemaker = running.client("sagemaker", read_timeout=20)
        sagemaker.create_model(
            ModelName="hostile-model",
            ExecutionRoleArn=ROLE,
            PrimaryContainer={
                "Image": XGBOOST_IMAGE,
                "ModelDataUrl": "s3://models/v1/model.tar.gz",
            },
        )
        sagemaker.create_endpoint_config(
            EndpointConfigName="hostile-cfg",
            ProductionVariants=[
                {
                    "VariantName": "Only",
                    "ModelName": "hostile-model",
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.t2.medium",
                }
            ],
        )
        sagemaker.create_endpoint(EndpointName="hostile", EndpointConfigName="hostile-cfg")
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName="hostile", WaiterConfig=FAST_WAIT
        )
        yield running


@pytest.fixture
def runtime(gateway: Gateway) -> Any:
    """A boto3 runtime client, one attempt per call."""
    return gateway.client("sagemaker-runtime", read_timeout=20)


def _address(gateway: Gateway) -> tuple[str, int]:
    host, port = gateway.url.removeprefix("http://").split(":")
    return host, int(port)


def _metric(gateway: Gateway, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 if none)."""
    with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


_ENFORCEMENTS = "splitserve_edge_enforcements_total"


def assert_serving(gateway: Gateway, runtime: Any) -> None:
    """The gateway is up, answers /ping, and its worker answers a good request."""
    assert gateway.process.poll() is None, gateway.log()[-3000:]
    with urllib.request.urlopen(f"{gateway.url}/ping", timeout=10) as response:
        assert response.status == 200
    answer = runtime.invoke_endpoint(EndpointName="hostile", Body=_GOOD_ROW, ContentType="text/csv")
    assert answer["Body"].read()


def _wait_for(condition: Callable[[], bool]) -> bool:
    """Whether `condition` came to hold within the patience."""
    deadline = time.monotonic() + _PATIENCE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_idle_connections_beyond_the_descriptor_limit_leave_the_gateway_serving(
    gateway: Gateway, runtime: Any
) -> None:
    assert f"edge limits: {CONNECTION_CAP} client connections" in gateway.log()
    # Kept-alive connections, each idle after one request: 500, more than the gateway's limit of
    # 400 descriptors. Before the cap, accept() and then the health checks failed with EMFILE, and
    # the healthy worker was replaced.
    connections: list[socket.socket] = []
    answered = 0
    try:
        for _ in range(500):
            sock = socket.create_connection(_address(gateway), timeout=10)
            connections.append(sock)
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: gateway\r\n\r\n")
            with contextlib.suppress(ConnectionError, TimeoutError):
                answered += sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        # Long enough for several health checks (3 failures in a row replace an instance).
        time.sleep(8 * HEALTH_CHECK_INTERVAL_SECONDS)
        assert_serving(gateway, runtime)
        for _ in range(20):
            assert_serving(gateway, runtime)
        still_open = sum(1 for sock in connections if not _closed(sock))
    finally:
        for sock in connections:
            sock.close()
    print(f"{answered} of 500 idle-flood requests answered; {still_open} connections left open")
    assert answered == 500  # each was answered before later arrivals closed it
    assert still_open <= CONNECTION_CAP
    assert _metric(gateway, "splitserve_instance_restarts_total") == 0
    assert _metric(gateway, _ENFORCEMENTS, action="closed_idle_connection") >= 500 - still_open
    assert_serving(gateway, runtime)


def _closed(sock: socket.socket) -> bool:
    """Whether the peer closed `sock` (without blocking)."""
    poller = select.poll()  # not select(): the test process may hold descriptors above 1,024
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        return sock.recv(4096, socket.MSG_PEEK) == b""
    except ConnectionError:
        return True


def test_trickled_heads_are_cut_off_while_others_are_served(gateway: Gateway, runtime: Any) -> None:
    head = (
        b"POST /endpoints/hostile/invocations HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: text/csv\r\nContent-Length: %d\r\n\r\n" % len(_GOOD_ROW)
    )
    trickling = [socket.create_connection(_address(gateway), timeout=10) for _ in range(50)]
    closed: set[int] = set()
    sent = 0
    try:
        # A header byte per connection every 200 ms: a head would take 20 s.
        while len(closed) < len(trickling) and sent < len(head) - 1:
            for index, sock in enumerate(trickling):
                if index in closed:
                    continue
                if _closed(sock):
                    closed.add(index)
                    continue
                try:
                    sock.sendall(head[sent : sent + 1])
                except ConnectionError:
                    closed.add(index)
            sent += 1
            assert_serving(gateway, runtime)  # meanwhile everyone else is served
            time.sleep(0.2)
    finally:
        for sock in trickling:
            sock.close()
    print(f"trickled heads: {len(closed)} of 50 closed after {sent} bytes each")
    assert len(closed) == len(trickling), "some trickled heads were still open"
    assert sent < len(head) - 1
    assert _metric(gateway, _ENFORCEMENTS, action="closed_slow_head") >= len(trickling)
    assert_serving(gateway, runtime)


def _rss(gateway: Gateway) -> int:
    rss: int = psutil.Process(gateway.process.pid).memory_info().rss
    return rss


def _peak_rss(gateway: Gateway) -> int:
    """The gateway's peak RSS since `_reset_peak_rss` (VmHWM)."""
    for line in Path(f"/proc/{gateway.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def _reset_peak_rss(gateway: Gateway) -> None:
    Path(f"/proc/{gateway.process.pid}/clear_refs").write_text("5")


def _send_body(
    gateway: Gateway, size: int, all_but_last_sent: threading.Barrier, heads: list[bytes]
) -> None:
    """POST `size` bytes to InvokeEndpoint of a missing endpoint (a 400 once the body is read):
    all but the last byte, then, once every sender is there, the last; note the answer's head."""
    request = (
        b"POST /endpoints/nowhere/invocations HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: text/csv\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size
    ) + b"1" * size
    answer = b""
    with socket.create_connection(_address(gateway), timeout=60) as sock:
        try:
            sock.sendall(request[:-1])
        finally:
            all_but_last_sent.wait()
        sock.sendall(request[-1:])
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    heads.append(answer.partition(b"\r\n\r\n")[0])


def test_a_burst_of_large_bodies_is_bounded_in_memory_and_returned(
    gateway: Gateway, runtime: Any
) -> None:
    assert_serving(gateway, runtime)
    before = _rss(gateway)
    _reset_peak_rss(gateway)
    heads: list[bytes] = []
    # 60 connections (below the connection cap) each sending a body just under 6 MiB, all held
    # in flight at once: 360 MiB, against a budget of 64 MiB.
    count = 60
    all_but_last_sent = threading.Barrier(count, timeout=_PATIENCE_SECONDS)
    senders = [
        threading.Thread(
            target=_send_body, args=(gateway, 6 * _MIB - 1024, all_but_last_sent, heads)
        )
        for _ in range(count)
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    peak = _peak_rss(gateway)
    statuses = sorted(head.split(b" ", 2)[1] for head in heads)
    refused = [head for head in heads if head.startswith(b"HTTP/1.1 503 ")]
    # Back to near where it was: the freed bodies are returned to the system (malloc_trim).
    returned = _wait_for(lambda: _rss(gateway) - before < 48 * _MIB)
    after = _rss(gateway)
    print(
        f"large-body burst: RSS {before / _MIB:.0f} MiB before, peak {peak / _MIB:.0f} MiB, "
        f"{after / _MIB:.0f} MiB after; {len(refused)} of {count} refused with 503"
    )
    assert len(statuses) == count
    assert set(statuses) == {b"400", b"503"}, statuses
    assert all(b"Retry-After: 1" in head for head in refused)
    assert _metric(gateway, _ENFORCEMENTS, action="refused_body") == len(refused)
    # The budget is 64 MiB of bodies; a body is held about twice while it is read.
    assert peak - before < 4 * INFLIGHT_BODY_BYTES
    assert returned, f"RSS stayed {(after - before) / _MIB:.0f} MiB above its level before"
    assert_serving(gateway, runtime)
