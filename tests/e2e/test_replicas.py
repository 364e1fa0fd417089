"""Gateway replicas over one SQLite state (`serve --processes N`), end to end with boto3.

Each replica also listens on its own internal address, which the state's `cluster_replicas`
table lists: the tests reach a chosen replica there, and the shared port as a client would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.e2e.helpers import FAST_WAIT, create_two_variant_endpoint, csv_rows
from tests.support.gateway import Gateway, running_gateway

pytestmark = pytest.mark.e2e

BODY = csv_rows(np.zeros((1, 13)))


@dataclass(frozen=True)
class Replica:
    """One row of the state's replicas table."""

    replica_id: str
    pid: int
    url: str
    controller: bool


def replicas(gateway: Gateway) -> list[Replica]:
    """The live replicas the state lists (heartbeat within the last 5 s)."""
    with contextlib.closing(sqlite3.connect(gateway.state_dir / "state.sqlite3")) as db:
        rows = db.execute(
            "SELECT replica_id, pid, internal_url, controller FROM cluster_replicas "
            "WHERE heartbeat >= ?",
            (time.time() - 5.0,),
        ).fetchall()
    return [Replica(r[0], int(r[1]), r[2], bool(r[3])) for r in rows]


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    """Poll `condition()` until it is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"{what} within {timeout} s")


def client(service: str, url: str) -> Any:
    """A boto3 client for `service` at `url`, one try per call."""
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


def invoked_variants(url: str, count: int) -> Counter[str]:
    """The variants that answered `count` invocations of endpoint `ab` sent to `url`."""
    runtime = client("sagemaker-runtime", url)
    return Counter(
        runtime.invoke_endpoint(EndpointName="ab", Body=BODY, ContentType="text/csv")[
            "InvokedProductionVariant"
        ]
        for _ in range(count)
    )


@pytest.fixture
def replicated(tmp_path: Path, model_store: Path) -> Any:
    """`serve --processes 4` with endpoint `ab` (two variants) InService, and its replicas."""
    with running_gateway(tmp_path / "state", model_store, "--processes", "4") as gateway:
        wait_for(lambda: len(replicas(gateway)) == 4, 30, "four replicas listed")
        create_two_variant_endpoint(gateway.client("sagemaker"), "ab")
        yield gateway


def test_every_replica_serves_and_a_weight_change_holds_on_every_replica_at_once(
    replicated: Gateway,
) -> None:
    listed = replicas(replicated)
    assert sum(r.controller for r in listed) == 1
    for replica in listed:
        assert set(invoked_variants(replica.url, 20)) == {"Variant1", "Variant2"}
    follower = next(r for r in listed if not r.controller)
    client("sagemaker", follower.url).update_endpoint_weights_and_capacities(
        EndpointName="ab",
        DesiredWeightsAndCapacities=[{"VariantName": "Variant1", "DesiredWeight": 0.0}],
    )
    # The change answered: every replica routes with it from its next request.
    for replica in listed:
        assert invoked_variants(replica.url, 20) == Counter({"Variant2": 20})
    described = client("sagemaker", follower.url).describe_endpoint(EndpointName="ab")
    assert [v["CurrentWeight"] for v in described["ProductionVariants"]] == [0.0, 1.0]


def test_concurrent_updates_on_two_replicas_one_wins(replicated: Gateway) -> None:
    sagemaker = replicated.client("sagemaker")
    sagemaker.create_endpoint_config(
        EndpointConfigName="ab-cfg2",
        ProductionVariants=[
            {
                "VariantName": "Variant1",
                "ModelName": "ab-m1",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.t2.medium",
            }
        ],
    )
    urls = [r.url for r in replicas(replicated)][:2]
    barrier = threading.Barrier(2)

    def update(url: str) -> str:
        barrier.wait()
        try:
            client("sagemaker", url).update_endpoint(
                EndpointName="ab", EndpointConfigName="ab-cfg2"
            )
        except ClientError as error:
            return str(error.response["Error"]["Message"])
        return "ok"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(update, urls))
    assert outcomes[1] == "ok"
    assert "update" in outcomes[0].lower() or "Updating" in outcomes[0], outcomes
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName="ab", WaiterConfig=FAST_WAIT)


class Load:
    """Threads invoking endpoint `ab` through `url` until stopped, counting outcomes."""

    def __init__(self, url: str, threads: int) -> None:
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(url,), daemon=True) for _ in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, url: str) -> None:
        runtime = client("sagemaker-runtime", url)
        while not self._stop.is_set():
            try:
                runtime.invoke_endpoint(EndpointName="ab", Body=BODY, ContentType="text/csv")
            except Exception as error:
                with self._lock:
                    self.failed.append(repr(error))
            else:
                with self._lock:
                    self.ok += 1

    def stop(self) -> None:
        """Stop the threads and wait for them."""
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def test_killing_a_replica_that_does_not_control_fails_no_request_of_the_others(
    replicated: Gateway,
) -> None:
    listed = replicas(replicated)
    victim = next(r for r in listed if not r.controller)
    survivors = [r for r in listed if r.replica_id != victim.replica_id]
    loads = [Load(r.url, 2) for r in survivors]
    time.sleep(1.0)
    os.kill(victim.pid, signal.SIGKILL)
    # The supervisor starts a new replica in its place.
    wait_for(
        lambda: len([r for r in replicas(replicated) if r.pid != victim.pid]) == 4,
        30,
        "the killed replica replaced",
    )
    time.sleep(1.0)
    for load in loads:
        load.stop()
    assert all(load.ok > 0 for load in loads)
    assert [failure for load in loads for failure in load.failed] == []
    # Each survivor counted exactly what it served (its load, sent to its own address).
    for replica, load in zip(survivors, loads, strict=True):
        assert own_invocations(replica.url) == load.ok
    assert invoked_variants(replicated.url, 10).total() == 10


def own_invocations(url: str) -> float:
    """Endpoint `ab`'s invocations in one replica's own exposition."""
    with urllib.request.urlopen(f"{url}/splitserve/metrics/own", timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("splitserve_invocations_total{") and 'endpoint_name="ab"' in line
    )


def test_killing_the_controller_hands_control_over_within_ten_seconds(
    replicated: Gateway,
) -> None:
    listed = replicas(replicated)
    controller = next(r for r in listed if r.controller)
    survivor = next(r for r in listed if not r.controller)
    load = Load(survivor.url, 2)
    time.sleep(1.0)
    killed_at = time.monotonic()
    os.kill(controller.pid, signal.SIGKILL)
    wait_for(
        lambda: any(r.controller and r.pid != controller.pid for r in replicas(replicated)),
        10,
        "another replica controlling",
    )
    took_over = time.monotonic() - killed_at
    # Its instances died with it: the new controller starts them again; requests fail only
    # until they pass their health checks.
    sagemaker = client("sagemaker", survivor.url)
    wait_for(
        lambda: invoked_ok(survivor.url),
        60,
        "the endpoint answering again",
    )
    served_again = time.monotonic() - killed_at
    assert sagemaker.describe_endpoint(EndpointName="ab")["EndpointStatus"] == "InService"
    load.stop()
    failures_after = load.failed
    print(f"control handed over in {took_over:.2f} s; served again after {served_again:.2f} s; "
          f"{len(failures_after)} requests failed in between, {load.ok} succeeded")  # fmt: skip
    assert took_over <= 10.0
    assert load.ok > 0


def invoked_ok(url: str) -> bool:
    """True when one invocation of `ab` at `url` succeeds."""
    try:
        invoked_variants(url, 1)
    except ClientError:
        return False
    return True
