"""Throughput of the built-in XGBoost server, with and without dynamic batching.

Two live servers (batching with the WorkerSettings defaults, and batching off) serve the same
100-tree model on one pinned CPU; a raw HTTP/1.1 client on the other CPUs sends one-row CSV
requests over keep-alive Unix-socket connections, 1 or 32 at a time. One round is a fixed number
of requests; rows/s = rows / round time. Under `make test` (--benchmark-disable) each case runs one
round as a smoke test; `make bench` runs them for real. docs/benchmarks.md ("Worker batching")
holds the measured table and the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost

from splitserve.config import WorkerSettings

FEATURES = 13
REQUESTS_PER_ROUND = 512
ROUND_TIMEOUT_SECONDS = 60.0
STARTUP_TIMEOUT_SECONDS = 60.0


@dataclass
class Connection:
    """One keep-alive HTTP/1.1 connection, speaking just enough of the protocol."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def post(self, request: bytes) -> tuple[int, bytes]:
        """Send a complete request; return the status and body of its response."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lowered = head.lower()
        start = lowered.index(b"content-length:") + len(b"content-length:")
        length = int(lowered[start : lowered.index(b"\r\n", start)])
        return status, await self.reader.readexactly(length)


@dataclass
class LiveServer:
    """A server process, its client connections and the throughput of each round."""

    process: subprocess.Popen[bytes]
    socket_path: Path
    connections: list[Connection] = field(default_factory=list)
    rows_per_second: list[float] = field(default_factory=list)


def one_row_request(row: np.ndarray[Any, np.dtype[np.float32]]) -> bytes:
    """A POST /invocations of one CSV row."""
    body = (",".join(repr(float(value)) for value in row) + "\n").encode()
    return (
        b"POST /invocations HTTP/1.1\r\nHost: worker\r\nContent-Type: text/csv\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


@pytest.fixture(scope="module")
def event_loop_for_clients() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for every client connection of the module."""
    import uvloop

    loop = uvloop.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 100-tree, depth-6 binary:logistic model on 13 features, as `xgboost-model`."""
    generator = np.random.default_rng(42)
    features = generator.normal(size=(2000, FEATURES)).astype(np.float32)
    label = (features[:, 0] + features[:, 1] * features[:, 2] > 0).astype(np.float32)
    parameters = {"objective": "binary:logistic", "max_depth": 6, "nthread": 1, "seed": 0}
    booster = xgboost.train(parameters, xgboost.DMatrix(features, label=label), 100)
    directory = tmp_path_factory.mktemp("bench-model")
    (directory / "xgboost-model").write_bytes(bytes(booster.save_raw("json")))
    return directory


@pytest.fixture(scope="module")
def cpu_split() -> Iterator[tuple[set[int], set[int]]]:
    """Pin the servers to one CPU and this client process to the others, while the module runs."""
    original = os.sched_getaffinity(0)
    cpus = sorted(original)
    if len(cpus) < 2:
        yield original, original
        return
    server_cpus, client_cpus = {cpus[0]}, set(cpus[1:])
    os.sched_setaffinity(0, client_cpus)
    try:
        yield server_cpus, client_cpus
    finally:
        os.sched_setaffinity(0, original)


@contextlib.contextmanager
def live_server(
    model_dir: Path, socket_path: Path, cpus: set[int], max_rows: int, max_wait_us: int
) -> Iterator[LiveServer]:
    """Start a server pinned to `cpus`; wait for its socket; stop it on exit."""
    argv = [
        sys.executable,
        "-m",
        "splitserve.workers.xgboost_server",
        "--model-dir",
        str(model_dir),
        "--unix",
        str(socket_path),
        "--max-batch-rows",
        str(max_rows),
        "--max-batch-wait-us",
        str(max_wait_us),
    ]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),  # noqa: PLW1509 - async-signal-safe
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not socket_path.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker did not start (exit code {process.poll()})")
            time.sleep(0.05)
        yield LiveServer(process, socket_path)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def servers(
    model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    cpu_split: tuple[set[int], set[int]],
    event_loop_for_clients: asyncio.AbstractEventLoop,
) -> Iterator[dict[str, LiveServer]]:
    """The batching server (WorkerSettings defaults) and the unbatched one, with 32 connections."""
    defaults = WorkerSettings()
    configurations = {
        "batched": (defaults.max_batch_rows, defaults.max_batch_wait_microseconds),
        "unbatched": (1, 0),
    }
    run_dir = tmp_path_factory.mktemp("bench-run")
    server_cpus, _ = cpu_split
    with contextlib.ExitStack() as stack:
        started = {
            name: stack.enter_context(
                live_server(model_dir, run_dir / f"{name}.sock", server_cpus, rows, wait)
            )
            for name, (rows, wait) in configurations.items()
        }

        async def connect() -> None:
            for server in started.values():
                for _ in range(32):
                    reader, writer = await asyncio.open_unix_connection(str(server.socket_path))
                    server.connections.append(Connection(reader, writer))

        event_loop_for_clients.run_until_complete(connect())
        try:
            yield started
        finally:
            for server in started.values():
                for connection in server.connections:
                    connection.writer.close()
            event_loop_for_clients.run_until_complete(asyncio.sleep(0))


async def send_round(connections: list[Connection], requests: list[bytes]) -> None:
    """Send `requests`, spread over `connections` (each sends its share one after another)."""

    async def send_share(connection: Connection, share: list[bytes]) -> None:
        for request in share:
            status, body = await connection.post(request)
            if status != 200:
                raise AssertionError(f"status {status}: {body!r}")

    shares = [requests[index :: len(connections)] for index in range(len(connections))]
    await asyncio.wait_for(
        asyncio.gather(*(send_share(c, s) for c, s in zip(connections, shares, strict=True))),
        ROUND_TIMEOUT_SECONDS,
    )


@pytest.mark.parametrize("concurrency", [1, 32])
@pytest.mark.parametrize("batching", ["batched", "unbatched"])
def test_worker_rows_per_second(
    benchmark: Any,
    servers: dict[str, LiveServer],
    event_loop_for_clients: asyncio.AbstractEventLoop,
    batching: str,
    concurrency: int,
) -> None:
    server = servers[batching]
    rows = np.random.default_rng(7).normal(size=(REQUESTS_PER_ROUND, FEATURES))
    requests = [one_row_request(row.astype(np.float32)) for row in rows]
    connections = server.connections[:concurrency]
    throughput: list[float] = []

    def one_round() -> None:
        started = time.perf_counter()
        event_loop_for_clients.run_until_complete(send_round(connections, requests))
        throughput.append(REQUESTS_PER_ROUND / (time.perf_counter() - started))

    benchmark.group = f"worker concurrency {concurrency}"
    benchmark.pedantic(one_round, rounds=10, iterations=1, warmup_rounds=1)
    benchmark.extra_info["rows_per_second"] = round(statistics.median(throughput))
    assert throughput
    assert server.process.poll() is None
