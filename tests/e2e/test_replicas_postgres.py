"""Two gateways over one PostgreSQL state, as on two hosts: each its own state directory and port.

The test's private PostgreSQL (tests/support/postgres.py) holds the state; gateway A starts first
and controls the endpoints, gateway B joins as a replica. Their instances listen on TCP at the
advertise address (loopback here), which the other gateway forwards to.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.helpers import FAST_WAIT, create_two_variant_endpoint
from tests.e2e.test_replicas import Load, client, invoked_ok, invoked_variants, wait_for
from tests.support.gateway import Gateway, start_gateway
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.e2e


def controller_pid(url: str) -> int | None:
    """The pid of the live controller the PostgreSQL state lists."""
    import psycopg  # only these tests need the driver

    with psycopg.connect(url) as connection:
        row = connection.execute(
            "SELECT pid FROM cluster_replicas WHERE controller = 1 AND heartbeat >= %s",
            (time.time() - 5.0,),
        ).fetchone()
    return None if row is None else int(row[0])


@pytest.fixture
def pair(tmp_path: Path, model_store: Path, postgres_url: str) -> Iterator[tuple[Gateway, Gateway]]:
    """Gateways A (the controller) and B over `postgres_url`, endpoint `ab` created on A."""
    started: list[Gateway] = []
    try:
        for name in ("a", "b"):
            started.append(
                start_gateway(tmp_path / name / "state", model_store, "--state", postgres_url)
            )
            if name == "a":
                wait_for(lambda: controller_pid(postgres_url), 30, "A controlling")
        a, b = started
        create_two_variant_endpoint(a.client("sagemaker"), "ab")
        yield a, b
    finally:
        for gateway in started:
            gateway.stop()
            print(f"--- gateway {gateway.url} log ---\n{gateway.log()}")


def test_created_on_one_invoked_on_the_other_and_weights_follow(
    pair: tuple[Gateway, Gateway],
) -> None:
    a, b = pair
    assert set(invoked_variants(b.url, 20)) == {"Variant1", "Variant2"}
    client("sagemaker", b.url).update_endpoint_weights_and_capacities(
        EndpointName="ab",
        DesiredWeightsAndCapacities=[{"VariantName": "Variant2", "DesiredWeight": 0.0}],
    )
    # Answered on B, routed by A from its next request.
    assert invoked_variants(a.url, 20) == {"Variant1": 20}
    assert invoked_variants(b.url, 20) == {"Variant1": 20}


def test_killing_the_replica_that_does_not_control_fails_nothing_on_the_other(
    pair: tuple[Gateway, Gateway], postgres_url: str
) -> None:
    a, b = pair
    load = Load(a.url, 2)
    time.sleep(1.0)
    b.process.send_signal(signal.SIGKILL)
    b.process.wait()
    time.sleep(2.0)
    load.stop()
    assert load.ok > 0
    assert load.failed == []
    assert controller_pid(postgres_url) == a.process.pid


def test_killing_the_controller_hands_control_to_the_other_within_ten_seconds(
    pair: tuple[Gateway, Gateway], postgres_url: str
) -> None:
    a, b = pair
    load = Load(b.url, 2)
    time.sleep(1.0)
    killed_at = time.monotonic()
    os.kill(a.process.pid, signal.SIGKILL)
    a.process.wait()
    wait_for(lambda: controller_pid(postgres_url) == b.process.pid, 10, "B controlling")
    took_over = time.monotonic() - killed_at
    wait_for(lambda: invoked_ok(b.url), 60, "the endpoint answering again on B")
    served_again = time.monotonic() - killed_at
    load.stop()
    sagemaker = client("sagemaker", b.url)
    assert sagemaker.describe_endpoint(EndpointName="ab")["EndpointStatus"] == "InService"
    print(f"B took control in {took_over:.2f} s, served again after {served_again:.2f} s; "
          f"{len(load.failed)} requests failed meanwhile, {load.ok} succeeded")  # fmt: skip
    assert load.ok > 0


def test_postgresql_restarted_under_load(
    pair: tuple[Gateway, Gateway], postgres_server: PostgresServer
) -> None:
    a, b = pair
    loads = [Load(a.url, 1), Load(b.url, 1)]
    time.sleep(1.0)
    postgres_server.stop()
    try:
        # The data plane routes with the last state it had; the control plane answers 503.
        time.sleep(1.0)
        for gateway in (a, b):
            with pytest.raises(ClientError) as refused:
                client("sagemaker", gateway.url).describe_endpoint(EndpointName="ab")
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert invoked_variants(b.url, 5).total() == 5
    finally:
        postgres_server.start()
    # Caught up: the control plane answers again and changes reach both.
    sagemaker = client("sagemaker", b.url)
    wait_for(lambda: _describes(sagemaker), 30, "the control plane answering again")
    sagemaker.update_endpoint_weights_and_capacities(
        EndpointName="ab",
        DesiredWeightsAndCapacities=[{"VariantName": "Variant1", "DesiredWeight": 0.0}],
    )
    assert invoked_variants(a.url, 10) == {"Variant2": 10}
    for load in loads:
        load.stop()
    assert all(load.ok > 0 for load in loads)
    assert [f for load in loads for f in load.failed] == []
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName="ab", WaiterConfig=FAST_WAIT)


def _describes(sagemaker: Any) -> bool:
    try:
        sagemaker.describe_endpoint(EndpointName="ab")
    except ClientError:
        return False
    return True
