"""The Ray placement on a real three-node Ray cluster on this machine (one per module).

Nodes: `small` (2 CPUs, 16 GiB, resource `general`), `big` (4 CPUs, 32 GiB, resource
`compute`), `spare` (2 CPUs, 16 GiB, resources `general` and `spare`). Instances are built-in
XGBoost servers in detached actors; the test process is the Ray driver, as the controller is.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from splitserve.config import PlacementSettings, WorkerSettings
from splitserve.errors import DeploymentError
from splitserve.workers.catalog import InstanceCatalog
from splitserve.workers.fleet import VariantDeployment
from splitserve.workers.images import ImageRegistry
from splitserve.workers.instance import InstanceInfo
from tests.support.models import XGBOOST_IMAGE, train_binary_model, write_model_tarball
from tests.support.ray_cluster import (
    NodeSpec,
    named_actors,
    ray,
    ray_cluster,
    wait_for_named_actors,
)

ray_placement = pytest.importorskip("splitserve.workers.ray_placement")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NAMESPACE = "splitserve-test-workers"

#: The nodes' directory, this process's own: its book of pinned CPUs is then the tests' alone,
#: whatever other Ray clusters on this host (the end-to-end tier's, run beside) have pinned.
NODE_DIR = Path(tempfile.gettempdir()) / f"splitserve-ray-test-{os.getpid()}"

PLACEMENT = PlacementSettings(
    backend="ray",
    ray_namespace=NAMESPACE,
    node_model_dir=NODE_DIR,
    type_resources=(("ml.c5.*", "compute"), ("ml.m5.*", "general")),
    # A new actor's worker process starts within this, on a busy 2-core machine too.
    placement_timeout_seconds=30.0,
    actor_call_timeout_seconds=20.0,
)

#: The bring-your-own server of the worker tests, and an interpreter any user may run.
PLAIN_SERVER = Path(__file__).resolve().parent / "plain_server.py"
SYSTEM_PYTHON = Path("/usr/bin/python3")
HAS_SYSTEM_PYTHON = SYSTEM_PYTHON.exists()
PLAIN_IMAGE = "test.local/plain-server:1"

WORKERS = WorkerSettings(
    # Run as root, as the gateways of the tests do: this interpreter lives under /root.
    worker_user="root",
    health_interval_seconds=0.2,
    unhealthy_after_failures=2,
    startup_timeout_seconds=90.0,
    restart_backoff_initial_seconds=0.1,
    restart_backoff_max_seconds=1.0,
    stop_grace_seconds=2.0,
)


@dataclass
class Listener:
    """An InstanceListener recording what it is told."""

    healthy: list[InstanceInfo] = field(default_factory=list)
    unhealthy: list[InstanceInfo] = field(default_factory=list)

    def instance_healthy(self, instance: InstanceInfo) -> None:
        """Recorded."""
        self.healthy.append(instance)

    def instance_unhealthy(self, instance: InstanceInfo) -> None:
        """Recorded."""
        self.unhealthy.append(instance)

    def in_flight(self, instance_name: str) -> int:
        """Nothing is ever in flight here."""
        return 0


@pytest.fixture(scope="module")
def cluster(s3_credentials: None) -> Iterator[dict[str, Any]]:
    """The module's cluster, with this process connected as the driver; node handles by name.
    Its nodes find S3 credentials in their environment."""
    nodes = {
        "small": NodeSpec(2, 16, {"general": 1}),
        "big": NodeSpec(4, 32, {"compute": 1}),
        "spare": NodeSpec(2, 16, {"general": 1, "spare": 1}),
    }
    with ray_cluster(list(nodes.values())) as (running, handles):
        ray_placement.connect(
            PlacementSettings(ray_address=running.address, ray_namespace=NAMESPACE)
        )
        try:
            yield {"cluster": running, **dict(zip(nodes, handles, strict=True))}
        finally:
            shutil.rmtree(NODE_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model.tar.gz on the controller's disk only (nodes get it through the object store)."""
    return write_model_tarball(
        train_binary_model(1, 5), tmp_path_factory.mktemp("ray-model") / "model.tar.gz"
    )


def placement(listener: Listener, settings: PlacementSettings = PLACEMENT) -> Any:
    """A RayPlacement over the module's cluster."""
    return ray_placement.RayPlacement(
        settings, WORKERS, ImageRegistry(), InstanceCatalog(), listener
    )


def deployment(
    artifact: Path, variant: str, instance_type: str, count: int, generation: int = 1
) -> VariantDeployment:
    """A deployment of the built-in server on endpoint `e1`."""
    return VariantDeployment(
        endpoint_name="e1",
        variant_name=variant,
        generation=generation,
        image=XGBOOST_IMAGE,
        model_data=artifact,
        environment={},
        instance_type=instance_type,
        instance_count=count,
    )


def node_of(cluster: dict[str, Any], info: InstanceInfo) -> str:
    """Which of the module's nodes (by name) an instance runs on."""
    for name in ("small", "big", "spare"):
        handle = cluster[name]
        if handle.node_id == info.node_id:
            return name
    raise AssertionError(f"{info.name} runs on no known node ({info.node_id})")


async def invoke(info: InstanceInfo) -> bytes:
    """POST one CSV row straight to the instance's address (the data path has no Ray in it)."""
    host, port = info.address.host, info.address.port
    reader, writer = await asyncio.open_connection(host, port)
    body = b",".join(b"0.5" for _ in range(13))
    writer.write(
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def until(condition: Callable[[], bool], limit_seconds: float = 120.0) -> None:
    """Wait until `condition()` holds (a deadline only so a broken test ends)."""
    deadline = time.monotonic() + limit_seconds
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        await asyncio.sleep(0.05)


# --- on the cluster ------------------------------------------------------------------------------


async def test_instances_spread_by_type_and_serve_straight_from_their_node(
    cluster: dict[str, Any], artifact: Path
) -> None:
    listener = Listener()
    ray_place = placement(listener)
    compute = ray_place.fleet(deployment(artifact, "compute", "ml.c5.large", 2))
    general = ray_place.fleet(deployment(artifact, "general", "ml.m5.large", 1))
    try:
        await asyncio.gather(compute.start(), general.start())
        assert all(node_of(cluster, info) == "big" for info in compute.instances())
        assert node_of(cluster, general.instances()[0]) in ("small", "spare")
        assert named_actors(NAMESPACE) == [
            "e1/compute/g1/0",
            "e1/compute/g1/1",
            "e1/general/g1/0",
        ]
        for info in compute.instances() + general.instances():
            assert (info.state, info.vcpus, info.pid) == ("healthy", 2, None)
            assert info.node is not None
            assert info.address.host == info.node
            assert (await invoke(info)).startswith(b"HTTP/1.1 200")
        assert {info.name for info in listener.healthy} == {
            "e1/compute/g1/0",
            "e1/compute/g1/1",
            "e1/general/g1/0",
        }
    finally:
        await asyncio.gather(compute.stop(), general.stop())
    assert wait_for_named_actors(NAMESPACE, []) == []


async def test_a_type_no_node_can_hold_fails_at_once(
    cluster: dict[str, Any], artifact: Path
) -> None:
    fleet = placement(Listener()).fleet(deployment(artifact, "huge", "ml.m5.12xlarge", 1))
    with pytest.raises(DeploymentError, match=r"No node of the Ray cluster can hold.*48 CPUs"):
        await fleet.start()
    assert named_actors(NAMESPACE) == []


async def test_a_type_no_node_has_room_for_fails_after_the_placement_timeout(
    cluster: dict[str, Any], artifact: Path
) -> None:
    # ml.c5.xlarge (4 vCPUs, compute) fits only `big`, which has room for one.
    impatient = replace(PLACEMENT, placement_timeout_seconds=5.0)
    fleet = placement(Listener(), impatient).fleet(
        deployment(artifact, "crowded", "ml.c5.xlarge", 2)
    )
    with pytest.raises(DeploymentError, match="no node of the Ray cluster had room"):
        await fleet.start()
    assert wait_for_named_actors(NAMESPACE, []) == []


async def get_info(info: InstanceInfo) -> dict[str, Any]:
    """GET /info of a plain server (tests/workers/plain_server.py) at the instance's address."""
    reader, writer = await asyncio.open_connection(info.address.host, info.address.port)
    writer.write(b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    loaded: dict[str, Any] = json.loads(body)
    return loaded


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A directory the worker user can pass through (pytest's own are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="ssr", dir="/tmp"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_a_bring_your_own_image_runs_confined_on_its_node_on_cpus_of_its_own(
    cluster: dict[str, Any], open_root: Path
) -> None:
    # The registry entry's command must exist at the same path on every node (it does: the
    # nodes share this machine); the model reaches the node through the object store.
    server = open_root / "plain_server.py"
    shutil.copy(PLAIN_SERVER, server)
    server.chmod(0o644)
    model = open_root / "model"
    model.mkdir()
    (model / "model.json").write_text('{"coefficients": [1.0]}')
    python = SYSTEM_PYTHON if HAS_SYSTEM_PYTHON else Path(sys.executable)
    images = ImageRegistry.parse(
        f'[images."{PLAIN_IMAGE}"]\ncommand = ["{python}", "{server}", "{{host}}"]\n',
        open_root / "images.toml",
    )
    as_root = os.geteuid() == 0 and HAS_SYSTEM_PYTHON
    workers = replace(WORKERS, worker_user="nobody") if as_root else WORKERS
    listener = Listener()
    ray_place = ray_placement.RayPlacement(PLACEMENT, workers, images, InstanceCatalog(), listener)
    byo = VariantDeployment(
        "e1", "byo", 1, PLAIN_IMAGE, model, {"MODEL_VAR": "x"}, "ml.m5.large", 2
    )
    fleet = ray_place.fleet(byo)
    try:
        await fleet.start()
        infos = fleet.instances()
        details = [await get_info(info) for info in infos]
        for info, detail in zip(infos, details, strict=True):
            assert info.state == "healthy"
            assert info.address.host == info.node != "127.0.0.1"
            assert node_of(cluster, info) in ("small", "spare")
            assert detail["no_new_privs"] == "1"
            assert detail["tmpdir_writable"] is True
            assert detail["home"] == detail["tmpdir"]
            assert detail["model_text"] == '{"coefficients": [1.0]}'
            if as_root:
                assert detail["uid"] == pwd.getpwnam("nobody").pw_uid
            # Pinned CPUs are the server's whole affinity; unpinned, it has the actor's.
            if info.cpus:
                assert detail["cpus"] == list(info.cpus)
        # ml.m5.large has 2 vCPUs: as many instances are pinned as the host has free pairs,
        # on CPUs no other instance holds (the nodes share this machine's CPUs).
        pinned = [info.cpus for info in infos if info.cpus]
        assert all(len(cpus) == 2 for cpus in pinned)
        assert len({cpu for cpus in pinned for cpu in cpus}) == 2 * len(pinned)
        assert len(pinned) == min(2, len(os.sched_getaffinity(0)) // 2)
    finally:
        await fleet.stop()
    assert wait_for_named_actors(NAMESPACE, []) == []


async def test_a_bring_your_own_server_that_cannot_run_on_its_node_fails_with_a_reason(
    cluster: dict[str, Any], open_root: Path
) -> None:
    images = ImageRegistry.parse(
        f'[images."{PLAIN_IMAGE}"]\ncommand = ["{open_root}/no-such-server", "{{host}}"]\n',
        open_root / "images.toml",
    )
    byo = VariantDeployment("e1", "byo", 1, PLAIN_IMAGE, None, {}, "ml.m5.large", 1)
    missing = ray_placement.RayPlacement(PLACEMENT, WORKERS, images, InstanceCatalog(), Listener())
    with pytest.raises(DeploymentError, match="exited with status 127 before answering GET /ping"):
        await missing.fleet(byo).start()
    if os.geteuid() == 0:
        # The worker user is looked up on the node the actor landed on.
        nobody = replace(WORKERS, worker_user="no-such-user-x")
        placed = ray_placement.RayPlacement(
            PLACEMENT, nobody, images, InstanceCatalog(), Listener()
        )
        with pytest.raises(DeploymentError, match=r"on node .*'no-such-user-x' does not exist"):
            await placed.fleet(byo).start()
    assert wait_for_named_actors(NAMESPACE, []) == []


async def test_with_an_s3_endpoint_each_node_fetches_the_artifact_itself(
    cluster: dict[str, Any], artifact: Path, s3_endpoint: str, tmp_path: Path
) -> None:
    boto3 = pytest.importorskip("boto3")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="ray-models")
    body = await asyncio.to_thread(artifact.read_bytes)
    client.put_object(Bucket="ray-models", Key="xgb/model.tar.gz", Body=body)
    # The controller's model store does not hold the object: only the S3 store does.
    store = tmp_path / "models"
    fetching = ray_placement.RayPlacement(
        replace(PLACEMENT, s3_endpoint_url=s3_endpoint),
        WORKERS,
        ImageRegistry(),
        InstanceCatalog(),
        Listener(),
        model_store=store,
    )
    model = store / "ray-models" / "xgb" / "model.tar.gz"
    fleet = fetching.fleet(deployment(model, "fetched", "ml.m5.large", 1))
    try:
        await fleet.start()
        (info,) = fleet.instances()
        assert (await invoke(info)).startswith(b"HTTP/1.1 200")
    finally:
        await fleet.stop()
    missing = fetching.fleet(
        deployment(store / "ray-models" / "gone.tar.gz", "gone", "ml.m5.large", 1)
    )
    with pytest.raises(
        DeploymentError, match=r"s3://ray-models/gone\.tar\.gz could not be fetched"
    ):
        await missing.start()
    assert wait_for_named_actors(NAMESPACE, []) == []


async def test_a_killed_actor_is_replaced_and_scale_down_kills_the_highest(
    cluster: dict[str, Any], artifact: Path
) -> None:
    listener = Listener()
    fleet = placement(listener).fleet(deployment(artifact, "heal", "ml.m5.large", 2))
    try:
        await fleet.start()
        first = fleet.instances()[0]
        ray.kill(ray.get_actor("e1/heal/g1/0", namespace=NAMESPACE))
        await until(lambda: any(info.name == first.name for info in listener.unhealthy))
        await until(lambda: fleet.instances()[0].state == "healthy")
        replaced = fleet.instances()[0]
        assert replaced.restarts == 1
        assert replaced.address != first.address
        assert (await invoke(replaced)).startswith(b"HTTP/1.1 200")
        await fleet.scale(1)
        assert [info.name for info in fleet.instances()] == ["e1/heal/g1/0"]
        assert wait_for_named_actors(NAMESPACE, ["e1/heal/g1/0"]) == ["e1/heal/g1/0"]
    finally:
        await fleet.stop()
    assert wait_for_named_actors(NAMESPACE, []) == []


async def test_a_new_controller_adopts_running_actors_and_stops_what_it_does_not_recover(
    cluster: dict[str, Any], artifact: Path
) -> None:
    old = placement(Listener())
    kept = old.fleet(deployment(artifact, "adopt", "ml.m5.large", 2))
    stale = old.fleet(deployment(artifact, "adopt", "ml.c5.large", 1, generation=2))
    await asyncio.gather(kept.start(), stale.start())
    before = kept.instances()
    await old.close()  # the controller goes away: its actors keep serving
    assert named_actors(NAMESPACE) == ["e1/adopt/g1/0", "e1/adopt/g1/1", "e1/adopt/g2/0"]
    assert (await invoke(before[1])).startswith(b"HTTP/1.1 200")

    listener = Listener()
    new = placement(listener)
    await new.keep_only({"e1": 1})  # generation 2 was an update that had not switched
    assert wait_for_named_actors(NAMESPACE, before_names := [i.name for i in before]) == (
        before_names
    )
    adopted = new.fleet(deployment(artifact, "adopt", "ml.m5.large", 1))
    try:
        await adopted.start()
        assert [info.address for info in adopted.instances()] == [before[0].address]
        assert adopted.instances()[0].restarts == 0
        assert listener.healthy[0].address == before[0].address
        # Instance 1 is beyond the recovered count (a scale-in the old controller left).
        assert wait_for_named_actors(NAMESPACE, ["e1/adopt/g1/0"]) == ["e1/adopt/g1/0"]
    finally:
        await adopted.stop()
    assert wait_for_named_actors(NAMESPACE, []) == []


async def test_a_lost_node_has_its_instances_replaced_on_another(
    cluster: dict[str, Any], artifact: Path
) -> None:
    # ml.t2.* asks for `spare` here: only the `spare` node has it, until a second one joins.
    settings = PlacementSettings(
        backend="ray",
        ray_namespace=NAMESPACE,
        type_resources=(("ml.t2.*", "spare"),),
        reserve_memory=False,
        placement_timeout_seconds=60.0,
        actor_call_timeout_seconds=20.0,
    )
    listener = Listener()
    fleet = placement(listener, settings).fleet(deployment(artifact, "lost", "ml.t2.medium", 1))
    try:
        await fleet.start()
        before = fleet.instances()[0]
        assert node_of(cluster, before) == "spare"
        running = cluster["cluster"]
        replacement_node = running.add_node(num_cpus=2, resources={"spare": 1})
        running.remove_node(cluster["spare"])
        await until(lambda: bool(listener.unhealthy))
        await until(lambda: fleet.instances()[0].state == "healthy")
        after = fleet.instances()[0]
        assert after.node_id == replacement_node.node_id != before.node_id
        assert (await invoke(after)).startswith(b"HTTP/1.1 200")
    finally:
        await fleet.stop()
    assert wait_for_named_actors(NAMESPACE, []) == []
