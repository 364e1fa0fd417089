"""Gateway benchmarks: the in-process parts of an invocation, and invocations through a gateway.

Groups (`make bench` prints each group as one table; in `make test` every case runs once):

- "gateway - parse": reading an InvokeEndpoint request into the service's `Invocation`
  (`runtime.routes.read_invocation`), against the obvious way: the headers copied into a dict and
  a frozen dataclass built by keyword.
- "gateway - metrics": what one successful invocation records (Invocations,
  InvocationsPerInstance, its minute, model and overhead latency), through a variant's
  `VariantRecorder` (`invoked` and `answered`), against prometheus_client's Counter and Histogram
  children (which the gateway used before) and against resolving the labels on every request.
- "gateway - live": a fixed batch of concurrent invocations through a live `splitserve serve`, in
  front of two stand-in workers (`benches/standin_server.py`, run as a bring-your-own image) that
  answer at once, against the plain aiohttp gateway (`benches/plain_gateway.py`) over the same
  stand-ins. The gateway has CPU 0 to itself, stand-ins and client share the other CPUs. The timer
  is scaled by 1/BATCH, so a round reads as one request and the `ops` column is requests/s;
  `extra_info` has the median requests/s and the gateway's CPU microseconds per request.
  BENCH_SERVE_OPTIONS passes options to `splitserve serve` (e.g. `--no-feedback-index`, to see
  what the feedback index costs).

The forwarding client and the router have their own suites (bench_upstream.py, bench_router.py);
benches/load.py measures whole gateways against nginx and HAProxy with wrk and oha.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, Counter, Histogram
from pytest_benchmark.fixture import BenchmarkFixture

from benches.load import BODY, INVOKE_PATH, Fleet, Gateway, start_others, start_splitserve
from benches.load_tools import Processes, cpu_seconds, pin, process_tree
from splitserve.metrics.minutes import VariantMinutes
from splitserve.metrics.prometheus import MODEL_BUCKETS, OVERHEAD_BUCKETS
from splitserve.metrics.recorder import VariantRecorder
from splitserve.runtime.routes import STICKY_KEY_HEADER, read_invocation
from splitserve.runtime.service import Invocation

CALLS_PER_ROUND = 100
#: Invocations per round of the live benchmark, and how many are in flight at once.
BATCH = 2000
IN_FLIGHT = 32
LIVE_ROUNDS = 8
ROUND_TIMEOUT_SECONDS = 60.0
STANDIN_IMAGE = "bench.local/standin-python:1"

#: The headers boto3's invoke_endpoint sends (the SigV4 ones included, which the gateway ignores).
REQUEST_HEADERS = {
    "Host": "127.0.0.1:8080",
    "Accept-Encoding": "identity",
    "Content-Type": "text/csv",
    "Accept": "application/json",
    "User-Agent": "Boto3/1.35.0 md/Botocore#1.35.0 ua/2.0 os/linux lang/python#3.11.7",
    "X-Amz-Date": "20240501T120000Z",
    "Authorization": "AWS4-HMAC-SHA256 Credential=x/20240501/us-east-1/sagemaker/aws4_request, "
    "SignedHeaders=accept;content-type;host;x-amz-date, Signature=0123456789abcdef",
    "amz-sdk-invocation-id": "8a5e9ec8-6a4d-4c3e-9f0e-2b8b1f0b8a3c",
    "amz-sdk-request": "attempt=1",
    "Content-Length": str(len(BODY)),
}

pytestmark = pytest.mark.benchmark(min_time=0.0001, warmup=True, disable_gc=True)


# --- parse ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _KeywordInvocation:
    """The reference's record: a frozen dataclass, as the service's Invocation once was."""

    endpoint_name: str
    body: bytes
    content_type: str | None = None
    accept: str | None = None
    custom_attributes: str | None = None
    target_variant: str | None = None
    sticky_key: str | None = None
    inference_id: str | None = None
    target_model: str | None = None


@pytest.fixture
def invoke_request() -> web.Request:
    """A routed InvokeEndpoint request as aiohttp hands it to the handler."""
    return make_mocked_request(
        "POST", INVOKE_PATH, headers=CIMultiDict(REQUEST_HEADERS), match_info={"name": "bench"}
    )


@pytest.mark.benchmark(group="gateway - parse")
def test_parse_read_invocation(benchmark: BenchmarkFixture, invoke_request: web.Request) -> None:
    """splitserve: read_invocation(request, body), CALLS_PER_ROUND times."""

    def calls() -> Invocation:
        for _ in itertools.repeat(None, CALLS_PER_ROUND - 1):
            read_invocation(invoke_request, BODY)
        return read_invocation(invoke_request, BODY)

    invocation = benchmark(calls)
    assert invocation.endpoint_name == "bench"
    assert invocation.content_type == "text/csv"
    assert invocation.target_variant is None


@pytest.mark.benchmark(group="gateway - parse")
def test_parse_reference_dict_and_dataclass(
    benchmark: BenchmarkFixture, invoke_request: web.Request
) -> None:
    """Reference: the headers into a dict (lower-cased names), a frozen dataclass by keyword."""

    def parse() -> _KeywordInvocation:
        headers = {name.lower(): value for name, value in invoke_request.headers.items()}
        return _KeywordInvocation(
            endpoint_name=invoke_request.match_info["name"],
            body=BODY,
            content_type=headers.get("content-type"),
            accept=headers.get("accept"),
            custom_attributes=headers.get("x-amzn-sagemaker-custom-attributes"),
            target_variant=headers.get("x-amzn-sagemaker-target-variant"),
            sticky_key=headers.get(STICKY_KEY_HEADER.lower()),
            inference_id=headers.get("x-amzn-sagemaker-inference-id"),
            target_model=headers.get("x-amzn-sagemaker-target-model"),
        )

    def calls() -> _KeywordInvocation:
        for _ in itertools.repeat(None, CALLS_PER_ROUND - 1):
            parse()
        return parse()

    assert benchmark(calls).content_type == "text/csv"


# --- metrics --------------------------------------------------------------------------------------

_MODEL_SECONDS = 0.0012
_OVERHEAD_SECONDS = 0.00004


@pytest.mark.benchmark(group="gateway - metrics")
def test_metrics_variant_recorder(benchmark: BenchmarkFixture) -> None:
    """splitserve: one success recorded through a variant's VariantRecorder, CALLS_PER_ROUND x."""
    recorder = VariantRecorder.resolve("bench-metrics", "Variant1", VariantMinutes(2))

    def calls() -> None:
        for _ in itertools.repeat(None, CALLS_PER_ROUND):
            recorder.invoked(1)
            recorder.answered(_MODEL_SECONDS, _OVERHEAD_SECONDS)

    benchmark(calls)
    assert recorder.metrics.invocations.value > 0


def _prometheus_families() -> tuple[Counter, Counter, Histogram, Histogram]:
    registry = CollectorRegistry()
    labels = ("endpoint_name", "variant_name")
    return (
        Counter("invocations", "", labels, registry=registry),
        Counter("invocations_per_instance", "", labels, registry=registry),
        Histogram("model_latency_seconds", "", labels, buckets=MODEL_BUCKETS, registry=registry),
        Histogram(
            "overhead_latency_seconds", "", labels, buckets=OVERHEAD_BUCKETS, registry=registry
        ),
    )


@pytest.mark.benchmark(group="gateway - metrics")
def test_metrics_reference_prometheus_children(benchmark: BenchmarkFixture) -> None:
    """Reference: prometheus_client children resolved once (the minutes recorded the same way)."""
    families = _prometheus_families()
    invocations, per_instance = (family.labels("bench", "Variant1") for family in families[:2])
    model, overhead = (family.labels("bench", "Variant1") for family in families[2:])
    minutes = VariantMinutes(2)

    def calls() -> None:
        for _ in itertools.repeat(None, CALLS_PER_ROUND):
            invocations.inc()
            per_instance.inc(1.0)
            minutes.count_invocation()
            model.observe(_MODEL_SECONDS)
            minutes.observe_latency(_MODEL_SECONDS)
            overhead.observe(_OVERHEAD_SECONDS)

    benchmark(calls)


@pytest.mark.benchmark(group="gateway - metrics")
def test_metrics_reference_labels_per_request(benchmark: BenchmarkFixture) -> None:
    """Reference: prometheus_client with .labels() looked up on every request."""
    invocations, per_instance, model, overhead = _prometheus_families()
    minutes = VariantMinutes(2)

    def calls() -> None:
        for _ in itertools.repeat(None, CALLS_PER_ROUND):
            invocations.labels("bench", "Variant1").inc()
            per_instance.labels("bench", "Variant1").inc(1.0)
            minutes.count_invocation()
            model.labels("bench", "Variant1").observe(_MODEL_SECONDS)
            minutes.observe_latency(_MODEL_SECONDS)
            overhead.labels("bench", "Variant1").observe(_OVERHEAD_SECONDS)

    benchmark(calls)


# --- live -----------------------------------------------------------------------------------------


@dataclass
class _LiveGateways:
    """The gateways under test and the CPUs the clients run on."""

    gateways: dict[str, Gateway]
    client_cpus: set[int]


@pytest.fixture(scope="module")
def live_gateways() -> Iterator[_LiveGateways]:
    """splitserve and the plain gateway over two stand-in workers; stopped afterwards."""
    cpus = sorted(os.sched_getaffinity(0))
    gateway_cpus, other_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (set(cpus),) * 2
    with tempfile.TemporaryDirectory(prefix="splitserve-bench-") as directory:
        workdir = Path(directory)
        registry = workdir / "images.toml"
        registry.write_text(
            f'[images."{STANDIN_IMAGE}"]\n'
            f'command = ["{{python}}", "{Path(__file__).with_name("standin_server.py")}"]\n'
            "startup_timeout_seconds = 30\n"
        )
        with Processes(workdir) as processes:
            fleet: Fleet = start_splitserve(
                processes,
                workdir,
                image=STANDIN_IMAGE,
                model_url=None,
                images_file=registry,
                options=shlex.split(os.environ.get("BENCH_SERVE_OPTIONS", "")),
            )
            pin(fleet.gateway.pids, gateway_cpus)
            for worker in fleet.workers.values():
                pin(process_tree(worker.pid), other_cpus)
            (plain,) = start_others(processes, workdir, fleet.upstreams(), ["plain"], gateway_cpus)
            yield _LiveGateways({"splitserve": fleet.gateway, "plain": plain}, other_cpus)


async def _push_batch(
    port: int, request: bytes, count: int, in_flight: int, refused: list[bytes] | None = None
) -> int:
    """Send `count` requests over `in_flight` kept-alive connections; the number answered 200.
    The head and body of each other answer go to `refused` when given."""
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(in_flight)]
    answered = 0

    async def share(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        nonlocal answered
        for _ in range(n):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lowered = head.lower()
            start = lowered.index(b"content-length:") + len(b"content-length:")
            body = await reader.readexactly(int(lowered[start : lowered.index(b"\r\n", start)]))
            if head.startswith(b"HTTP/1.1 200"):
                answered += 1
            elif refused is not None:
                refused.append(head + body)

    try:
        shares = [count // in_flight + (index < count % in_flight) for index in range(in_flight)]
        senders = (share(r, w, n) for (r, w), n in zip(connections, shares, strict=True))
        await asyncio.wait_for(asyncio.gather(*senders), ROUND_TIMEOUT_SECONDS)
    finally:
        for _, writer in connections:
            writer.close()
    return answered


def seconds_per_request() -> float:
    """The live benchmark's timer: wall-clock time scaled by 1/BATCH, so a round reads as one
    request (and pytest-benchmark's `ops` as requests/s)."""
    return time.perf_counter() / BATCH


@pytest.mark.slow
@pytest.mark.benchmark(group="gateway - live", timer=seconds_per_request)
@pytest.mark.parametrize("name", ["splitserve", "plain"])
def test_live_gateway_invocations(
    benchmark: BenchmarkFixture, live_gateways: _LiveGateways, name: str
) -> None:
    """BATCH invocations, IN_FLIGHT at a time, through a live gateway; a round reads as one."""
    gateway = live_gateways.gateways[name]
    request = (
        f"POST {INVOKE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    loop = uvloop.new_event_loop()
    original = os.sched_getaffinity(0)
    os.sched_setaffinity(0, live_gateways.client_cpus)
    throughput: list[float] = []
    cpu: list[float] = []
    failures: list[int] = []

    def one_round() -> None:
        used = cpu_seconds(gateway.pids)
        started = time.perf_counter()
        answered = loop.run_until_complete(_push_batch(gateway.port, request, BATCH, IN_FLIGHT))
        throughput.append(BATCH / (time.perf_counter() - started))
        cpu.append((cpu_seconds(gateway.pids) - used) * 1e6 / BATCH)
        if answered != BATCH:
            failures.append(BATCH - answered)

    try:
        # pytest-benchmark's pedantic() carries no annotations.
        benchmark.pedantic(  # type: ignore[no-untyped-call]
            one_round, rounds=LIVE_ROUNDS, iterations=1, warmup_rounds=1
        )
    finally:
        os.sched_setaffinity(0, original)
        loop.close()
    assert not failures
    benchmark.extra_info["requests_per_second"] = round(statistics.median(throughput))
    benchmark.extra_info["gateway_cpu_us_per_request"] = round(statistics.median(cpu), 1)
    benchmark.extra_info["python"] = sys.version.split()[0]
