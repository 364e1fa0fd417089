"""Faults under steady traffic: dead, hung and missing instances, a killed gateway, weight storms.

Each test drives the real `splitserve serve` with boto3 client threads on loopback (bounded request
counts, boto3 retries off) while it breaks something, and counts what the clients saw. Most use the
contract server of tests/workers/fault_server.py as a bring-your-own image, its faults chosen by the
model's Environment; the figures they measure are in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar

import numpy as np
import psutil
import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import binom

from tests.e2e.helpers import FAST_WAIT, create_two_variant_endpoint, csv_rows
from tests.support.gateway import Gateway, running_gateway, start_gateway
from tests.support.models import ROLE

pytestmark = pytest.mark.e2e

_T = TypeVar("_T")

FAULT_SERVER = Path(__file__).resolve().parents[1] / "workers" / "fault_server.py"
FAULT_IMAGE = "local/fault-server:1"
#: The gateway's invocation timeout in these tests (`serve --invocation-timeout`).
INVOCATION_TIMEOUT_SECONDS = 1.0
#: How many client threads keep requests in flight.
CONCURRENCY = 8
#: A bound no request may exceed: "never a hang".
NO_HANG_SECONDS = 5.0
_ECHO_BODY = b"1,2,3\n"
# Two-sided bounds that a correct router breaks with probability 1e-6 per check.
_ALPHA = 1e-6


def assert_share(count: int, total: int, share: float) -> None:
    """`count` out of `total` is what a split with probability `share` can give."""
    low, high = binom.interval(1 - _ALPHA, total, share)
    assert low <= count <= high, f"{count}/{total} is not a {share:.0%} share"


def wait_until(check: Callable[[], _T], timeout: float, interval: float = 0.05) -> _T:
    """Poll `check` until it returns something truthy; that value. Fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(interval)


@dataclass(frozen=True)
class Outcome:
    """One request of a `Traffic`: when it started (perf_counter), how long it took, and either
    the variant that answered or the error code the client saw."""

    started: float
    seconds: float
    variant: str | None
    error: str | None


class Traffic:
    """Client threads, each with its own boto3 client, invoking an endpoint in a loop.

    It stops when the `with` block ends or after `limit` requests in all, whichever comes first.
    """

    def __init__(
        self,
        gateway: Gateway,
        endpoint: str,
        *,
        threads: int = CONCURRENCY,
        limit: int = 5000,
        body: bytes = _ECHO_BODY,
        **invoke: Any,
    ) -> None:
        self._clients = [
            gateway.client("sagemaker-runtime", read_timeout=10, connect_timeout=2)
            for _ in range(threads)
        ]
        self._request = {"EndpointName": endpoint, "Body": body, "ContentType": "text/csv"}
        self._request.update(invoke)
        self._limit = limit
        self._sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._threads = [threading.Thread(target=self._send, args=(c,)) for c in self._clients]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sending and wait for the requests in flight."""
        self._stop.set()
        for thread in self._threads:
            thread.join(NO_HANG_SECONDS * 3)
            assert not thread.is_alive(), "a client thread hangs"

    def outcomes(self) -> list[Outcome]:
        """Every finished request so far."""
        with self._lock:
            return list(self._outcomes)

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Wait until `count` requests have finished."""
        wait_until(lambda: len(self.outcomes()) >= count, timeout)

    def _send(self, client: Any) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._sent >= self._limit:
                    return
                self._sent += 1
            started = perf_counter()
            variant: str | None = None
            error: str | None = None
            try:
                response = client.invoke_endpoint(**self._request)
                response["Body"].read()
                variant = response["InvokedProductionVariant"]
            except ClientError as failure:
                error = failure.response["Error"]["Code"]
            except Exception as failure:  # botocore's connection and read-timeout errors
                error = type(failure).__name__
            with self._lock:
                self._outcomes.append(Outcome(started, perf_counter() - started, variant, error))


def failures(outcomes: list[Outcome]) -> list[Outcome]:
    """The outcomes that are errors."""
    return [outcome for outcome in outcomes if outcome.error is not None]


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile of `values`."""
    return float(np.percentile(values, q))


# --- the gateway and its workers ------------------------------------------------------------------


def write_images_file(directory: Path) -> Path:
    """An image registry that runs the fault server as FAULT_IMAGE."""
    path = directory / "images.toml"
    path.write_text(f'[images."{FAULT_IMAGE}"]\ncommand = ["{{python}}", "{FAULT_SERVER}"]\n')
    return path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[Gateway]:
    """One gateway for the tests of this module (each uses endpoints of its own), with a short
    invocation timeout and a health check every 0.5 s."""
    root = tmp_path_factory.mktemp("faults")
    with running_gateway(
        root / "state",
        model_store,
        "--images",
        str(write_images_file(root)),
        "--invocation-timeout",
        str(INVOCATION_TIMEOUT_SECONDS),
        "--health-check-interval",
        "0.5",
    ) as running:
        yield running


@pytest.fixture
def sagemaker(gateway: Gateway) -> Any:
    """A boto3 SageMaker client against the module's gateway."""
    return gateway.client("sagemaker")


def create_fault_model(sagemaker: Any, name: str, **faults: str) -> None:
    """CreateModel running the fault server with `faults` (FAULT_* variables) in its environment."""
    sagemaker.create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": FAULT_IMAGE, "Environment": faults},
    )


def create_endpoint(
    sagemaker: Any,
    endpoint: str,
    variants: list[tuple[str, str, int, float]],
    **extra: Any,
) -> None:
    """Config `<endpoint>-cfg` of (variant, model, instance count, weight), the endpoint, and
    wait for InService."""
    sagemaker.create_endpoint_config(
        EndpointConfigName=f"{endpoint}-cfg",
        ProductionVariants=[
            {
                "VariantName": variant,
                "ModelName": model,
                "InitialInstanceCount": count,
                "InstanceType": "ml.t2.medium",
                "InitialVariantWeight": weight,
            }
            for variant, model, count, weight in variants
        ],
    )
    sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-cfg", **extra)
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=FAST_WAIT)


def worker_pids(gateway: Gateway, endpoint: str, variant: str) -> set[int]:
    """The running worker processes of one variant (found by their SM_MODEL_DIR)."""
    marker = f"{endpoint}.{variant}.g"
    pids = set()
    for child in psutil.Process(gateway.process.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and marker in child.environ().get(
                "SM_MODEL_DIR", ""
            ):
                pids.add(child.pid)
        except psutil.Error:
            continue  # exited meanwhile
    return pids


def served(pid: int) -> int:
    """How many invocations the fault server with process id `pid` has answered (GET /info);
    0 while it does not listen yet."""
    port = psutil.Process(pid).environ()["SAGEMAKER_BIND_TO_PORT"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=5) as response:
            invocations: int = json.loads(response.read())["invocations"]
    except OSError:
        return 0
    return invocations


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 if none)."""
    with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def assert_alive(gateway: Gateway) -> None:
    """The gateway process runs and answers /ping."""
    assert gateway.process.poll() is None, gateway.log()[-3000:]
    with urllib.request.urlopen(f"{gateway.url}/ping", timeout=5) as response:
        assert response.status == 200


# --- the tests ------------------------------------------------------------------------------------


def test_kill_9_of_one_instance(gateway: Gateway, sagemaker: Any) -> None:
    create_fault_model(sagemaker, "kill-echo")
    create_endpoint(
        sagemaker, "kill", [("Variant1", "kill-echo", 2, 1.0), ("Variant2", "kill-echo", 1, 1.0)]
    )
    before = worker_pids(gateway, "kill", "Variant1")
    assert len(before) == 2
    victim = min(before)
    with Traffic(gateway, "kill", limit=6000) as traffic:
        traffic.wait_for(300)
        killed_at = perf_counter()
        os.kill(victim, signal.SIGKILL)
        (replacement,) = wait_until(lambda: worker_pids(gateway, "kill", "Variant1") - before, 20)
        replaced_at = perf_counter()
        # The new process takes traffic again.
        wait_until(lambda: served(replacement) >= 20, 20)
        served_by_replacement = served(replacement)
    outcomes = traffic.outcomes()
    failed = failures(outcomes)
    assert_alive(gateway)
    print(
        f"kill -9 of one of 3 instances: {len(failed)} of {len(outcomes)} requests failed "
        f"({Counter(o.error for o in failed)}) at concurrency {CONCURRENCY}; replacement "
        f"process after {replaced_at - killed_at:.2f} s, then served {served_by_replacement}"
    )
    # Only the requests in flight on the instance (at most one per client) fail, quickly, and
    # as the runtime errors a client expects; while it is down the instance gets no new requests
    # (each would have failed too).
    assert len(failed) <= CONCURRENCY
    assert {o.error for o in failed} <= {"ModelError", "ServiceUnavailable"}
    assert all(o.started + o.seconds >= killed_at and o.started <= replaced_at for o in failed)
    assert metric(gateway, "splitserve_instance_restarts_total", endpoint_name="kill") == 1
    sagemaker.delete_endpoint(EndpointName="kill")


def test_hung_instance_times_out_and_is_replaced(gateway: Gateway, sagemaker: Any) -> None:
    # Accepts connections, answers its first /ping (start-up), then never answers anything.
    create_fault_model(
        sagemaker,
        "hang-stuck",
        FAULT_INVOCATION_DELAY_SECONDS="3600",
        FAULT_PING_HANG_AFTER="1",
        FAULT_DIE_ON_SIGTERM="1",
    )
    create_fault_model(sagemaker, "hang-echo")
    create_endpoint(
        sagemaker, "hang", [("Stuck", "hang-stuck", 1, 1.0), ("Good", "hang-echo", 1, 1.0)]
    )
    in_service_at = perf_counter()
    (stuck,) = worker_pids(gateway, "hang", "Stuck")
    with Traffic(gateway, "hang", threads=2, limit=200, TargetVariant="Good") as baseline:
        baseline.wait_for(200)
    with (
        Traffic(gateway, "hang", threads=2, limit=4, TargetVariant="Stuck") as hung,
        Traffic(gateway, "hang", threads=2, limit=100_000, TargetVariant="Good") as good,
    ):
        hung.wait_for(4)
        replacement = wait_until(lambda: worker_pids(gateway, "hang", "Stuck") - {stuck}, 30)
        replaced_after = perf_counter() - in_service_at
    timed_out = hung.outcomes()
    assert [o.error for o in timed_out] == ["ModelError"] * 4
    # Not before the invocation timeout; how long after is the host's business (printed below).
    assert all(o.seconds >= INVOCATION_TIMEOUT_SECONDS - 0.05 for o in timed_out), [
        o.seconds for o in timed_out
    ]
    assert replacement
    assert metric(gateway, "splitserve_instance_restarts_total", endpoint_name="hang") >= 1
    # The other variant's instance keeps its latency: no request waits on the hung one.
    before = [o.seconds for o in baseline.outcomes()]
    during = [o.seconds for o in good.outcomes()]
    assert failures(baseline.outcomes() + good.outcomes()) == []
    print(
        f"hung instance: {len(timed_out)} requests timed out after "
        f"{min(o.seconds for o in timed_out):.2f}-{max(o.seconds for o in timed_out):.2f} s "
        f"(timeout {INVOCATION_TIMEOUT_SECONDS:g} s); replaced {replaced_after:.1f} s after "
        f"InService; other variant p50/p99 {percentile(before, 50) * 1e3:.1f}/"
        f"{percentile(before, 99) * 1e3:.1f} ms before, {percentile(during, 50) * 1e3:.1f}/"
        f"{percentile(during, 99) * 1e3:.1f} ms during ({len(during)} requests)"
    )
    # No request of the other variant waited on the hung one: it would have timed out with a
    # ModelError, and none failed (asserted above); its latency is in the report printed above.
    sagemaker.delete_endpoint(EndpointName="hang")


def test_a_stopped_worker_gives_a_model_error_not_a_retryable_503(
    tmp_path: Path, model_store: Path
) -> None:
    # With the default-like long invocation timeout, a SIGSTOPped worker fails its health checks
    # and is replaced while a request waits on it. That request reached the worker, so it must
    # end as a ModelError (boto3 does not retry it), never as a 503 (which it would send again).
    with running_gateway(
        tmp_path / "state",
        model_store,
        "--images",
        str(write_images_file(tmp_path)),
        "--invocation-timeout",
        "60",
        "--health-check-interval",
        "0.5",
    ) as gateway:
        sagemaker = gateway.client("sagemaker")
        create_fault_model(sagemaker, "stop-echo")
        create_endpoint(sagemaker, "stop", [("Only", "stop-echo", 1, 1.0)])
        runtime = gateway.client("sagemaker-runtime", read_timeout=90)
        for _ in range(3):  # kept-alive connections to the worker, as under steady traffic
            runtime.invoke_endpoint(EndpointName="stop", Body=_ECHO_BODY, ContentType="text/csv")
        (stopped,) = worker_pids(gateway, "stop", "Only")
        os.kill(stopped, signal.SIGSTOP)
        try:
            with pytest.raises(ClientError) as raised:
                runtime.invoke_endpoint(
                    EndpointName="stop", Body=_ECHO_BODY, ContentType="text/csv"
                )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
        error = raised.value.response
        assert error["Error"]["Code"] == "ModelError", error
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
        # The replacement serves again.
        wait_until(lambda: worker_pids(gateway, "stop", "Only") - {stopped}, 30)
        wait_until(lambda: _invokes(runtime, "stop"), 30)


def _invokes(runtime: Any, endpoint: str) -> bool:
    """Whether one request to `endpoint` is answered."""
    try:
        runtime.invoke_endpoint(EndpointName=endpoint, Body=_ECHO_BODY, ContentType="text/csv")
    except ClientError:
        return False
    return True


def test_after_a_restart_endpoints_are_unavailable_or_failed_never_unknown(
    tmp_path: Path, model_store: Path
) -> None:
    # While the restarted gateway redeploys an endpoint (its worker takes a while to start), the
    # endpoint exists: boto3 must get a retryable 503, not a 400 "not found" it will not retry.
    # A Failed endpoint says that it failed and why.
    images = write_images_file(tmp_path)
    state = tmp_path / "state"
    with running_gateway(state, model_store, "--images", str(images)) as first:
        sagemaker = first.client("sagemaker")
        create_fault_model(sagemaker, "back-slow", FAULT_STARTUP_DELAY_SECONDS="2")
        create_endpoint(sagemaker, "back", [("Only", "back-slow", 1, 1.0)])
        create_fault_model(sagemaker, "back-broken", FAULT_EXIT_AT_START="3")
        sagemaker.create_endpoint_config(
            EndpointConfigName="broken-cfg",
            ProductionVariants=[
                {
                    "VariantName": "Only",
                    "ModelName": "back-broken",
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.t2.medium",
                }
            ],
        )
        sagemaker.create_endpoint(EndpointName="broken", EndpointConfigName="broken-cfg")
        wait_until(
            lambda: (
                sagemaker.describe_endpoint(EndpointName="broken")["EndpointStatus"] == "Failed"
            ),
            60,
        )
        reason = sagemaker.describe_endpoint(EndpointName="broken")["FailureReason"]
    with running_gateway(state, model_store, "--images", str(images)) as second:
        runtime = second.client("sagemaker-runtime")
        refusals: list[str] = []

        def answered() -> bool:
            try:
                runtime.invoke_endpoint(
                    EndpointName="back", Body=_ECHO_BODY, ContentType="text/csv"
                )
            except ClientError as error:
                refusals.append(error.response["Error"]["Code"])
                return False
            return True

        wait_until(answered, 60, interval=0.1)
        assert set(refusals) <= {"ServiceUnavailable"}, refusals
        print(f"after the restart: {len(refusals)} x 503 before the endpoint answered")
        with pytest.raises(ClientError) as raised:
            runtime.invoke_endpoint(EndpointName="broken", Body=_ECHO_BODY, ContentType="text/csv")
        error = raised.value.response["Error"]
        assert error["Code"] == "ValidationError"
        assert "failed" in error["Message"]
        assert reason[:100] in error["Message"]


def test_variant_down_fails_fast_unless_failover_is_on(
    gateway: Gateway, sagemaker: Any, tmp_path: Path
) -> None:
    flag = tmp_path / "down"
    create_fault_model(sagemaker, "down-flaky", FAULT_EXIT_IF_FILE_EXISTS=str(flag))
    create_fault_model(sagemaker, "down-echo")
    variants = [("Up", "down-echo", 1, 1.0), ("Flaky", "down-flaky", 1, 1.0)]
    create_endpoint(sagemaker, "down", variants)
    create_endpoint(
        sagemaker, "fo", variants, Tags=[{"Key": "splitserve:failover", "Value": "true"}]
    )
    # Every instance of Flaky dies, and every restart exits at once while the flag exists.
    flag.touch()
    for endpoint in ("down", "fo"):
        for pid in worker_pids(gateway, endpoint, "Flaky"):
            os.kill(pid, signal.SIGKILL)
    runtime = gateway.client("sagemaker-runtime")
    for endpoint in ("down", "fo"):

        def flaky_is_down(endpoint: str = endpoint) -> bool:
            try:
                runtime.invoke_endpoint(
                    EndpointName=endpoint, Body=_ECHO_BODY, TargetVariant="Flaky"
                )
            except runtime.exceptions.ServiceUnavailable:
                return True
            return False

        wait_until(flaky_is_down, 10)

    with Traffic(gateway, "down", threads=4, limit=400) as without:
        without.wait_for(400)
    with Traffic(gateway, "fo", threads=4, limit=400) as with_failover:
        with_failover.wait_for(400)
    flag.unlink()

    plain = without.outcomes()
    failed = failures(plain)
    assert {o.error for o in failed} == {"ServiceUnavailable"}
    assert {o.variant for o in plain if o.error is None} == {"Up"}
    assert_share(len(failed), len(plain), 0.5)
    # Refused by the router (ServiceUnavailable, above), so nothing waited for a worker: a worker
    # that was waited for fails with ModelError at the invocation timeout.
    refusal_ms = [o.seconds * 1e3 for o in failed]
    print(
        f"no healthy instance: refused in p50 {percentile(refusal_ms, 50):.1f} ms, "
        f"at most {max(refusal_ms):.1f} ms"
    )
    assert metric(gateway, "splitserve_failover_total", endpoint_name="down") == 0

    rerouted = with_failover.outcomes()
    assert failures(rerouted) == []
    assert {o.variant for o in rerouted} == {"Up"}
    failovers = metric(gateway, "splitserve_failover_total", endpoint_name="fo", variant_name="Up")
    assert_share(int(failovers), len(rerouted), 0.5)
    # Failover is for untargeted requests only: TargetVariant still means that variant.
    with pytest.raises(runtime.exceptions.ServiceUnavailable):
        runtime.invoke_endpoint(EndpointName="fo", Body=_ECHO_BODY, TargetVariant="Flaky")
    print(
        f"variant down: {len(failed)} of {len(plain)} untargeted requests got 503 in at most "
        f"{max(o.seconds for o in failed) * 1e3:.1f} ms; with failover 0 of {len(rerouted)} "
        f"failed, {failovers:g} rerouted"
    )
    for endpoint in ("down", "fo"):
        sagemaker.delete_endpoint(EndpointName=endpoint)


#: Weight pairs that all give Variant1 a 25 % share, so the split can be checked while they
#: change, and a torn pair (one variant's weight from one update, the other's from another)
#: would show in DescribeEndpoint as a pair not in this list.
_WEIGHT_PAIRS = [(1.0, 3.0), (2.0, 6.0), (0.5, 1.5), (3.0, 9.0)]
_UPDATES_PER_SECOND = 100
_UPDATE_SECONDS = 3.0

#: The weight updates run in a process of their own, so that the client threads of the traffic
#: (which hold the GIL most of the time) do not slow its boto3 calls: argv is the gateway's URL,
#: the rate and the count; it prints "ready", waits for a line on stdin, then prints a JSON list of
#: [start, end, refusal message or null] per update (perf_counter of its own).
_UPDATER = """
import json, sys, time
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
url, rate, count, pairs = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
sagemaker = boto3.client(
    "sagemaker", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
    aws_secret_access_key="test", config=Config(retries={"total_max_attempts": 1}),
)
print("ready", flush=True)
sys.stdin.readline()
results = []
first = time.perf_counter()
for index in range(count):
    time.sleep(max(0.0, first + index / rate - time.perf_counter()))
    weights = pairs[index % len(pairs)]
    started = time.perf_counter()
    try:
        sagemaker.update_endpoint_weights_and_capacities(
            EndpointName="weights",
            DesiredWeightsAndCapacities=[
                {"VariantName": "Variant1", "DesiredWeight": weights[0]},
                {"VariantName": "Variant2", "DesiredWeight": weights[1]},
            ],
        )
        refusal = None
    except ClientError as error:
        refusal = error.response["Error"]["Message"]
    results.append([started, time.perf_counter(), refusal])
print(json.dumps(results), flush=True)
"""


def test_100_weight_updates_per_second_under_traffic(gateway: Gateway, sagemaker: Any) -> None:
    create_fault_model(sagemaker, "weights-echo")
    create_endpoint(
        sagemaker,
        "weights",
        [("Variant1", "weights-echo", 1, 1.0), ("Variant2", "weights-echo", 1, 1.0)],
    )
    described: list[tuple[str, tuple[float, ...], tuple[float, ...]]] = []
    stop_describing = threading.Event()

    def describe() -> None:
        describer = gateway.client("sagemaker")
        while not stop_describing.is_set():
            answer = describer.describe_endpoint(EndpointName="weights")
            summaries = answer["ProductionVariants"]
            described.append(
                (
                    answer["EndpointStatus"],
                    tuple(v["CurrentWeight"] for v in summaries),
                    tuple(v["DesiredWeight"] for v in summaries),
                )
            )

    count = int(_UPDATES_PER_SECOND * _UPDATE_SECONDS)
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            _UPDATER,
            gateway.url,
            str(_UPDATES_PER_SECOND),
            str(count),
            json.dumps(_WEIGHT_PAIRS),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as updater:
        assert updater.stdin is not None
        assert updater.stdout is not None
        assert updater.stdout.readline().strip() == "ready"
        describing = threading.Thread(target=describe)
        with Traffic(gateway, "weights", threads=4, limit=100_000) as traffic:
            describing.start()
            traffic.wait_for(50)
            started = perf_counter()
            updater.stdin.write("go\n")
            updater.stdin.flush()
            results = json.loads(updater.stdout.readline())
            ended = perf_counter()
            stop_describing.set()
            describing.join(NO_HANG_SECONDS)
    first_end, last_start = results[0][1], results[-1][0]
    rate = (count - 1) / (last_start - results[0][0])
    refused = [refusal for _, _, refusal in results if refusal is not None]
    took = [end - start for start, end, _ in results]
    outcomes = traffic.outcomes()
    # Requests sent once the first update was in and before the last one began: every weight
    # pair then in force gives Variant1 25 %. (The updater's clock is its own: map it to ours
    # by the time the run took.)
    offset = started - results[0][0]
    window = (first_end + offset + 0.05, min(last_start + offset, ended))
    during = [o for o in outcomes if window[0] < o.started < window[1]]
    shares = Counter(o.variant for o in during)
    print(
        f"{count} weight updates at {rate:.0f}/s ({len(refused)} refused, each took "
        f"p50 {percentile(took, 50) * 1e3:.1f} ms, p99 {percentile(took, 99) * 1e3:.1f} ms); "
        f"{len(during)} requests meanwhile, Variant1 share "
        f"{shares['Variant1'] / len(during):.3f} (weights ask 0.25); {len(described)} "
        "DescribeEndpoint answers, none torn"
    )
    assert refused == []
    assert failures(outcomes) == []
    assert_share(shares["Variant1"], len(during), 0.25)
    allowed = {(1.0, 1.0), *_WEIGHT_PAIRS}
    assert described
    for status, current, desired in described:
        assert status in ("InService", "Updating")
        assert current in allowed, current
        assert desired in allowed, desired
    # Whether the updater reaches 100/s, and how long each update took (printed above), depend on
    # how busy the (shared) machine is; what the gateway decides is that it refuses none.
    sagemaker.delete_endpoint(EndpointName="weights")


_BLUE_GREEN_THREADS = 12


def test_blue_green_update_under_heavier_traffic(gateway: Gateway, sagemaker: Any) -> None:
    create_two_variant_endpoint(sagemaker, "bgload")
    sagemaker.create_endpoint_config(
        EndpointConfigName="bgload-green",
        ProductionVariants=[
            {
                "VariantName": "Green",
                "ModelName": "bgload-m2",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.t2.medium",
            }
        ],
    )
    body = csv_rows(np.zeros((1, 13), dtype=np.float32))
    with Traffic(
        gateway, "bgload", threads=_BLUE_GREEN_THREADS, limit=100_000, body=body
    ) as traffic:
        traffic.wait_for(100)
        sagemaker.update_endpoint(EndpointName="bgload", EndpointConfigName="bgload-green")
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName="bgload", WaiterConfig=FAST_WAIT
        )
        switched = len(traffic.outcomes())
        traffic.wait_for(switched + 200)
    outcomes = traffic.outcomes()
    print(
        f"blue/green at {_BLUE_GREEN_THREADS} client threads: {len(failures(outcomes))} of "
        f"{len(outcomes)} requests failed"
    )
    assert failures(outcomes) == []
    assert {o.variant for o in outcomes[switched + _BLUE_GREEN_THREADS :]} == {"Green"}
    sagemaker.delete_endpoint(EndpointName="bgload")


# --- kill -9 of the gateway -----------------------------------------------------------------------


def _processes_of(state_dir: Path) -> list[int]:
    """Every process whose command line or environment names `state_dir`."""
    needle = os.fsencode(state_dir)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (
                needle in (entry / "cmdline").read_bytes()
                or needle in (entry / "environ").read_bytes()
            ):
                found.append(int(entry.name))
        except OSError:
            continue  # exited, or not ours to read
    return found


def _running(process: psutil.Process) -> bool:
    """Whether `process` still runs (a zombie waiting for a reaper does not)."""
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _weights_and_counts(client: Any, endpoint: str) -> dict[str, tuple[float, int]]:
    described = client.describe_endpoint(EndpointName=endpoint)
    return {
        v["VariantName"]: (v["CurrentWeight"], v["CurrentInstanceCount"])
        for v in described["ProductionVariants"]
    }


def test_kill_9_of_the_gateway_mid_traffic(tmp_path: Path, model_store: Path) -> None:
    state_dir = tmp_path / "state"
    images = write_images_file(tmp_path)
    first = start_gateway(state_dir, model_store, "--images", str(images))
    try:
        sagemaker = first.client("sagemaker")
        create_two_variant_endpoint(sagemaker, "crash-xgb")
        create_fault_model(sagemaker, "crash-echo")
        create_endpoint(
            sagemaker, "crash-echo", [("A", "crash-echo", 1, 2.0), ("B", "crash-echo", 1, 1.0)]
        )
        for endpoint, changes in (
            ("crash-xgb", [("Variant1", 1.0, None), ("Variant2", 3.0, 2)]),
            ("crash-echo", [("A", 1.0, None), ("B", 4.0, None)]),
        ):
            sagemaker.update_endpoint_weights_and_capacities(
                EndpointName=endpoint,
                DesiredWeightsAndCapacities=[
                    {"VariantName": name, "DesiredWeight": weight}
                    | ({} if count is None else {"DesiredInstanceCount": count})
                    for name, weight, count in changes
                ],
            )
            sagemaker.get_waiter("endpoint_in_service").wait(
                EndpointName=endpoint, WaiterConfig=FAST_WAIT
            )
        expected = {
            endpoint: _weights_and_counts(sagemaker, endpoint)
            for endpoint in ("crash-xgb", "crash-echo")
        }
        assert expected["crash-xgb"] == {"Variant1": (1.0, 1), "Variant2": (3.0, 2)}
        workers = psutil.Process(first.process.pid).children()
        assert len(workers) == 5
        body = csv_rows(np.zeros((1, 13), dtype=np.float32))
        with Traffic(first, "crash-xgb", threads=4, limit=100_000, body=body) as traffic:
            traffic.wait_for(200)
            first.process.kill()
            first.process.wait(10)
    finally:
        first.stop(signal.SIGKILL)
        print(f"--- first gateway's log ---\n{first.log()}")
    # The workers die with their gateway (PR_SET_PDEATHSIG): no orphan is left.
    wait_until(lambda: not any(_running(worker) for worker in workers), 5)
    assert _processes_of(state_dir) == []
    connection = sqlite3.connect(state_dir / "state.sqlite3")
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        connection.close()

    second = start_gateway(state_dir, model_store, "--images", str(images))
    try:
        sagemaker = second.client("sagemaker")
        runtime = second.client("sagemaker-runtime")
        for endpoint, weights_and_counts in expected.items():
            sagemaker.get_waiter("endpoint_in_service").wait(
                EndpointName=endpoint, WaiterConfig=FAST_WAIT
            )
            assert _weights_and_counts(sagemaker, endpoint) == weights_and_counts
            for variant in weights_and_counts:
                answer = runtime.invoke_endpoint(
                    EndpointName=endpoint, Body=body, ContentType="text/csv", TargetVariant=variant
                )
                assert answer["InvokedProductionVariant"] == variant
        assert len(psutil.Process(second.process.pid).children()) == 5
        print(
            f"kill -9 of the gateway after {len(traffic.outcomes())} requests: "
            f"{len(workers)} workers died with it, no orphan, state file ok, both endpoints back"
        )
    finally:
        second.stop()
        print(f"--- second gateway's log ---\n{second.log()}")
