"""`serve --placement ray` end to end, on a real three-node Ray cluster on this machine.

Nodes `n1`, `n2`, `n3` have 2 CPUs and 8 GiB each: one ml.t2.medium instance (2 vCPUs) fills a
node, so a two-variant endpoint spreads over two nodes and the third is room for a replacement.
The test process is connected to the cluster too, to see and kill the actors.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from tests.e2e.helpers import FAST_WAIT, create_two_variant_endpoint, csv_rows, invoke_many
from tests.support.gateway import Gateway, running_gateway, start_gateway
from tests.support.http import free_port
from tests.support.models import NUM_FEATURES
from tests.support.ray_cluster import (
    NodeSpec,
    named_actors,
    ray,
    ray_cluster,
    wait_for_named_actors,
)
from tests.support.s3 import s3_credentials, s3_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]

NAMESPACE = "splitserve-e2e"
BODY = csv_rows(np.full((1, NUM_FEATURES), 0.5))


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    """The module's cluster (its address and node handles by name), this process a driver."""
    names = ("n1", "n2", "n3")
    # The nodes' processes inherit the credentials, for the test whose nodes fetch from S3.
    # The nodes' directory is the module's own, so its book of pinned CPUs is too, whatever
    # other Ray clusters on this host (other test processes, run beside) have pinned.
    node_dir = Path(tempfile.gettempdir()) / f"splitserve-ray-e2e-{os.getpid()}"
    with s3_credentials(), ray_cluster([NodeSpec(2, 8, {}) for _ in names]) as (running, handles):
        ray.init(address=running.address, namespace=NAMESPACE, log_to_driver=False)
        try:
            yield {
                "cluster": running,
                "node_dir": node_dir,
                **dict(zip(names, handles, strict=True)),
            }
        finally:
            shutil.rmtree(node_dir, ignore_errors=True)


def _serve_ray(state: Path, model_store: Path, cluster: dict[str, Any]) -> tuple[str, ...]:
    return (
        "--placement",
        "ray",
        "--ray-address",
        cluster["cluster"].address,
        "--ray-namespace",
        NAMESPACE,
        "--ray-node-dir",
        str(cluster["node_dir"]),
        "--health-check-interval",
        "0.5",
    )


def _raw_describe(gateway: Gateway, endpoint: str) -> dict[str, Any]:
    """DescribeEndpoint's JSON as sent (botocore drops splitserve's Instances)."""
    request = urllib.request.Request(
        gateway.url,
        data=json.dumps({"EndpointName": endpoint}).encode(),
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "SageMaker.DescribeEndpoint",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        document: dict[str, Any] = json.loads(answer.read())
        return document


def _instances(gateway: Gateway, endpoint: str) -> dict[str, dict[str, Any]]:
    """Each variant's one instance as DescribeEndpoint lists it."""
    described = _raw_describe(gateway, endpoint)
    return {
        variant["VariantName"]: variant["Instances"][0]
        for variant in described["ProductionVariants"]
    }


def _ping(address: str) -> int:
    """GET /ping straight at an instance's host:port."""
    with urllib.request.urlopen(f"http://{address}/ping", timeout=5) as answer:
        status: int = answer.status
        return status


def _delete_and_check_no_actor_is_left(gateway: Gateway, endpoint: str) -> None:
    sagemaker = gateway.client("sagemaker")
    sagemaker.delete_endpoint(EndpointName=endpoint)
    sagemaker.get_waiter("endpoint_deleted").wait(EndpointName=endpoint, WaiterConfig=FAST_WAIT)
    assert wait_for_named_actors(NAMESPACE, []) == []


def test_instances_outlive_a_killed_gateway_and_a_restarted_one_adopts_them(
    tmp_path: Path, model_store: Path, cluster: dict[str, Any]
) -> None:
    state = tmp_path / "state"
    extra = _serve_ray(state, model_store, cluster)
    first = start_gateway(state, model_store, *extra)
    try:
        create_two_variant_endpoint(first.client("sagemaker"), "ray-ab")
        seen = invoke_many(first.client("sagemaker-runtime"), "ray-ab", BODY, 30)
        assert set(seen) == {"Variant1", "Variant2"}
        before = _instances(first, "ray-ab")
        # One instance fills a node: the two are on different nodes, each with its address.
        assert before["Variant1"]["NodeId"] != before["Variant2"]["NodeId"]
        for instance in before.values():
            assert instance["VCpus"] == 2
            assert instance["State"] == "healthy"
            assert instance["Address"].split(":")[0] == instance["Node"]
        # Each server is pinned to 2 CPUs no other holds, as far as this host (which every
        # node shares) has them free; the others run unpinned and list none.
        pinned = [instance["Cpus"] for instance in before.values() if instance["Cpus"]]
        assert all(len(cpus) == 2 for cpus in pinned)
        assert len({cpu for cpus in pinned for cpu in cpus}) == 2 * len(pinned)
        assert len(pinned) == min(2, len(os.sched_getaffinity(0)) // 2)
        assert named_actors(NAMESPACE) == ["ray-ab/Variant1/g1/0", "ray-ab/Variant2/g1/0"]
    finally:
        first.stop(signal.SIGKILL)
    # The gateway is gone; its instances are not.
    for instance in before.values():
        assert _ping(instance["Address"]) == 200

    with running_gateway(state, model_store, *extra) as second:
        sagemaker = second.client("sagemaker")
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName="ray-ab", WaiterConfig=FAST_WAIT
        )
        after = _instances(second, "ray-ab")
        assert {v: (i["Address"], i["Cpus"]) for v, i in after.items()} == {
            v: (i["Address"], i["Cpus"]) for v, i in before.items()
        }
        assert "adopted its running actor" in second.log()
        assert named_actors(NAMESPACE) == ["ray-ab/Variant1/g1/0", "ray-ab/Variant2/g1/0"]
        seen = invoke_many(second.client("sagemaker-runtime"), "ray-ab", BODY, 30)
        assert set(seen) == {"Variant1", "Variant2"}

        # Blue/green: the green fleet starts on the cluster, then the blue actors are removed.
        sagemaker.create_endpoint_config(
            EndpointConfigName="ray-ab-green",
            ProductionVariants=[
                {
                    "VariantName": "Green",
                    "ModelName": "ray-ab-m2",
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.t2.medium",
                }
            ],
        )
        sagemaker.update_endpoint(EndpointName="ray-ab", EndpointConfigName="ray-ab-green")
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName="ray-ab", WaiterConfig=FAST_WAIT
        )
        assert wait_for_named_actors(NAMESPACE, ["ray-ab/Green/g2/0"]) == ["ray-ab/Green/g2/0"]
        # Scale out and in: a second actor, then back to one.
        for count in (2, 1):
            sagemaker.update_endpoint_weights_and_capacities(
                EndpointName="ray-ab",
                DesiredWeightsAndCapacities=[
                    {"VariantName": "Green", "DesiredInstanceCount": count}
                ],
            )
            sagemaker.get_waiter("endpoint_in_service").wait(
                EndpointName="ray-ab", WaiterConfig=FAST_WAIT
            )
            expected = [f"ray-ab/Green/g2/{index}" for index in range(count)]
            assert wait_for_named_actors(NAMESPACE, expected) == expected
        seen = invoke_many(second.client("sagemaker-runtime"), "ray-ab", BODY, 5)
        assert seen == Counter({"Green": 5})
        _delete_and_check_no_actor_is_left(second, "ray-ab")


def test_a_lost_node_has_its_instance_replaced_on_a_node_with_room(
    tmp_path: Path, model_store: Path, cluster: dict[str, Any]
) -> None:
    state = tmp_path / "state"
    with running_gateway(state, model_store, *_serve_ray(state, model_store, cluster)) as gateway:
        create_two_variant_endpoint(gateway.client("sagemaker"), "ray-lost")
        before = _instances(gateway, "ray-lost")
        doomed = next(
            name
            for name in ("n1", "n2", "n3")
            if cluster[name].node_id == before["Variant1"]["NodeId"]
        )
        outcomes: Counter[str] = Counter()
        stop = threading.Event()

        failed_at: list[float] = []

        def load(variant: str) -> None:
            runtime = gateway.client("sagemaker-runtime")
            while not stop.is_set():
                try:
                    runtime.invoke_endpoint(
                        EndpointName="ray-lost",
                        Body=BODY,
                        ContentType="text/csv",
                        TargetVariant=variant,
                    )["Body"].read()
                    outcomes[f"{variant} ok"] += 1
                except ClientError:
                    outcomes[f"{variant} failed"] += 1
                    if variant == "Variant1":
                        failed_at.append(time.monotonic())
                        time.sleep(0.01)  # boto3 does not retry here: no busy loop

        loaders = [threading.Thread(target=load, args=(v,)) for v in ("Variant1", "Variant2")]
        for loader in loaders:
            loader.start()
        lost_at = time.monotonic()
        try:
            cluster["cluster"].remove_node(cluster[doomed])
            deadline = time.monotonic() + 120
            after = _instances(gateway, "ray-lost")
            while time.monotonic() < deadline and (
                after["Variant1"]["NodeId"] == before["Variant1"]["NodeId"]
                or after["Variant1"]["State"] != "healthy"
            ):
                time.sleep(0.2)
                after = _instances(gateway, "ray-lost")
            replaced_at = time.monotonic()
            # Variant1's requests fail from the node's loss until the controller has replaced
            # its instance (no other instance to go to); printed for docs/benchmarks.md.
            print(
                f"node lost: Variant1 failed {outcomes['Variant1 failed']} requests over "
                f"{(failed_at[-1] - failed_at[0]) if failed_at else 0:.2f} s; replaced "
                f"{replaced_at - lost_at:.2f} s after the loss"
            )
        finally:
            stop.set()
            for loader in loaders:
                loader.join()
        assert after["Variant1"]["State"] == "healthy"
        assert after["Variant1"]["NodeId"] not in (
            before["Variant1"]["NodeId"],
            before["Variant2"]["NodeId"],
        )
        # The other variant's instance, on a node that stayed, never failed a request.
        assert outcomes["Variant2 failed"] == 0
        assert outcomes["Variant2 ok"] > 0
        seen = invoke_many(
            gateway.client("sagemaker-runtime"), "ray-lost", BODY, 5, TargetVariant="Variant1"
        )
        assert seen == Counter({"Variant1": 5})
        _delete_and_check_no_actor_is_left(gateway, "ray-lost")


def test_a_type_no_node_can_hold_fails_create_endpoint_with_a_reason(
    tmp_path: Path, model_store: Path, cluster: dict[str, Any]
) -> None:
    state = tmp_path / "state"
    gateway = start_gateway(state, model_store, *_serve_ray(state, model_store, cluster))
    try:
        sagemaker = gateway.client("sagemaker")
        sagemaker.create_model(
            ModelName="big-m",
            ExecutionRoleArn="arn:aws:iam::123456789012:role/SageMakerRole",
            PrimaryContainer={
                "Image": "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1",
                "ModelDataUrl": "s3://models/v1/model.tar.gz",
            },
        )
        sagemaker.create_endpoint_config(
            EndpointConfigName="big-cfg",
            ProductionVariants=[
                {
                    "VariantName": "Big",
                    "ModelName": "big-m",
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.m5.xlarge",
                }
            ],
        )
        sagemaker.create_endpoint(EndpointName="big", EndpointConfigName="big-cfg")
        with pytest.raises(Exception, match="Failed"):
            sagemaker.get_waiter("endpoint_in_service").wait(
                EndpointName="big", WaiterConfig=FAST_WAIT
            )
        described = sagemaker.describe_endpoint(EndpointName="big")
        assert described["EndpointStatus"] == "Failed"
        assert (
            "No node of the Ray cluster can hold an instance of ml.m5.xlarge"
            in (described["FailureReason"])
        )
        assert named_actors(NAMESPACE) == []
    finally:
        status = gateway.stop()
    # SIGTERM still stops the gateway in order (Ray's own handler would end it at once).
    assert status == 0, gateway.log()
    assert "SIGTERM received" not in gateway.log()


def test_with_s3_endpoint_url_nodes_fetch_model_data_the_gateway_does_not_have(
    tmp_path: Path, model_store: Path, cluster: dict[str, Any]
) -> None:
    boto3 = pytest.importorskip("boto3")
    state = tmp_path / "state"
    empty_store = tmp_path / "empty-store"  # the gateway's model store holds nothing
    empty_store.mkdir()
    with s3_server() as endpoint_url:
        s3 = boto3.client("s3", endpoint_url=endpoint_url)
        s3.create_bucket(Bucket="remote")
        s3.put_object(
            Bucket="remote",
            Key="v1/model.tar.gz",
            Body=(model_store / "models" / "v1" / "model.tar.gz").read_bytes(),
        )
        gateway = start_gateway(
            state,
            empty_store,
            *_serve_ray(state, empty_store, cluster),
            "--s3-endpoint-url",
            endpoint_url,
        )
        try:
            sagemaker = gateway.client("sagemaker")
            for name, url in (("fetched", "s3://remote/v1/model.tar.gz"),
                              ("absent", "s3://remote/nothing.tar.gz")):  # fmt: skip
                sagemaker.create_model(
                    ModelName=name,
                    ExecutionRoleArn="arn:aws:iam::123456789012:role/SageMakerRole",
                    PrimaryContainer={
                        "Image": "683313688378.dkr.ecr.us-east-1.amazonaws.com/"
                        "sagemaker-xgboost:1.7-1",
                        "ModelDataUrl": url,
                    },
                )
                sagemaker.create_endpoint_config(
                    EndpointConfigName=name,
                    ProductionVariants=[
                        {
                            "VariantName": "Only",
                            "ModelName": name,
                            "InitialInstanceCount": 1,
                            "InstanceType": "ml.t2.medium",
                        }
                    ],
                )
                sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
            sagemaker.get_waiter("endpoint_in_service").wait(
                EndpointName="fetched", WaiterConfig=FAST_WAIT
            )
            answer = gateway.client("sagemaker-runtime").invoke_endpoint(
                EndpointName="fetched", ContentType="text/csv", Body=BODY
            )
            assert answer["InvokedProductionVariant"] == "Only"
            with pytest.raises(Exception, match="Failed"):
                sagemaker.get_waiter("endpoint_in_service").wait(
                    EndpointName="absent", WaiterConfig=FAST_WAIT
                )
            reason = sagemaker.describe_endpoint(EndpointName="absent")["FailureReason"]
            assert "s3://remote/nothing.tar.gz could not be fetched" in reason
            _delete_and_check_no_actor_is_left(gateway, "fetched")
            sagemaker.delete_endpoint(EndpointName="absent")
        finally:
            assert gateway.stop() == 0, gateway.log()


def test_a_cluster_nothing_answers_at_stops_serve_with_status_2(tmp_path: Path) -> None:
    port = free_port()
    finished = subprocess.run(
        [
            sys.executable, "-m", "splitserve.cli", "serve", "--port", str(free_port()),
            "--state-dir", str(tmp_path / "state"), "--placement", "ray",
            "--ray-address", f"127.0.0.1:{port}",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines()[-1] == (
        f"splitserve: could not join the Ray cluster at 127.0.0.1:{port}: nothing answers there "
        "within 10 s (Connection refused); start its head (ray start --head) or give "
        "--ray-address HOST:PORT of a running one"
    )


def _replicas(gateway: Gateway) -> list[tuple[int, str, bool]]:
    """(pid, internal URL, controller) of each live replica in the state's replicas table."""
    with contextlib.closing(sqlite3.connect(gateway.state_dir / "state.sqlite3")) as db:
        rows = db.execute(
            "SELECT pid, internal_url, controller FROM cluster_replicas WHERE heartbeat >= ?",
            (time.time() - 5.0,),
        ).fetchall()
    return [(int(pid), str(url), bool(controller)) for pid, url, controller in rows]


def _until(condition: Any, what: str, limit_seconds: float = 60.0) -> Any:
    deadline = time.monotonic() + limit_seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {limit_seconds} s")
        time.sleep(0.1)


def test_killing_the_controller_replica_leaves_its_actors_serving_and_adopted(
    tmp_path: Path, model_store: Path, cluster: dict[str, Any]
) -> None:
    state = tmp_path / "state"
    extra = (*_serve_ray(state, model_store, cluster), "--processes", "2")
    with running_gateway(state, model_store, *extra) as gateway:
        _until(
            lambda: len(_replicas(gateway)) == 2 and any(r[2] for r in _replicas(gateway)),
            "two replicas listed, one controlling",
        )
        create_two_variant_endpoint(gateway.client("sagemaker"), "ray-rep")
        before = _instances(gateway, "ray-rep")
        controller = next(r for r in _replicas(gateway) if r[2])
        survivor_url = next(r for r in _replicas(gateway) if not r[2])[1]
        outcomes: Counter[str] = Counter()
        stop = threading.Event()

        def load() -> None:
            runtime = Gateway(gateway.process, survivor_url, state, model_store, gateway.log_path)
            client = runtime.client("sagemaker-runtime")
            while not stop.is_set():
                try:
                    client.invoke_endpoint(
                        EndpointName="ray-rep", Body=BODY, ContentType="text/csv"
                    )["Body"].read()
                    outcomes["ok"] += 1
                except ClientError as error:
                    outcomes[str(error)] += 1

        loader = threading.Thread(target=load)
        loader.start()
        try:
            _until(lambda: outcomes["ok"] > 10, "requests served before the kill")
            os.kill(controller[0], signal.SIGKILL)
            _until(
                lambda: any(r[2] and r[0] != controller[0] for r in _replicas(gateway)),
                "another replica controlling",
                30.0,
            )
            _until(lambda: "adopted its running actor" in gateway.log(), "the actors adopted")
            served = outcomes["ok"]
            _until(lambda: outcomes["ok"] > served + 10, "requests served after the adoption")
        finally:
            stop.set()
            loader.join()
        # The instances outlived their controller: none was started anew, and the replica taking
        # control kept routing to them with what it followed until it had adopted them
        # (`RoutingFollower.close_when_replaced`): no request failed.
        failures = {text: count for text, count in outcomes.items() if text != "ok"}
        print(f"controller killed: {outcomes['ok']} requests served, failures: {failures}")
        assert failures == {}
        assert named_actors(NAMESPACE) == ["ray-rep/Variant1/g1/0", "ray-rep/Variant2/g1/0"]
        after = _instances(gateway, "ray-rep")
        assert {v: i["Address"] for v, i in after.items()} == {
            v: i["Address"] for v, i in before.items()
        }
        _delete_and_check_no_actor_is_left(gateway, "ray-rep")
