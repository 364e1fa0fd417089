"""What a Ray-placed instance asks of the cluster, and its actor names (no cluster needed)."""

from __future__ import annotations

from splitserve.config import PlacementSettings
from splitserve.workers import ray_resources
from splitserve.workers.catalog import InstanceCatalog

PLACEMENT = PlacementSettings(
    backend="ray", type_resources=(("ml.c5.*", "compute"), ("ml.m5.*", "general"))
)


def test_an_instance_reserves_its_types_cpus_memory_and_custom_resource() -> None:
    catalog = InstanceCatalog()
    c5 = ray_resources.instance_resources(PLACEMENT, catalog.get("ml.c5.xlarge"))
    assert c5 == {"CPU": 4.0, "memory": float(8 * 1024**3), "compute": 0.001}
    t2 = ray_resources.instance_resources(PLACEMENT, catalog.get("ml.t2.medium"))
    assert "compute" not in t2
    assert "general" not in t2


def test_a_type_no_node_can_hold_is_named_with_what_it_asks_for() -> None:
    nodes = [{"CPU": 2.0, "memory": 16.0 * 1024**3}, {"CPU": 4.0, "memory": 32.0 * 1024**3}]
    reason = ray_resources.unplaceable_reason(
        "ml.m5.4xlarge", {"CPU": 16.0, "memory": 64.0 * 1024**3}, nodes
    )
    assert reason is not None
    for named in ("ml.m5.4xlarge", "16 CPUs", "64 GiB"):
        assert named in reason
    assert "largest node has 4 CPUs" in reason
    assert ray_resources.unplaceable_reason("ml.m5.large", {"CPU": 2.0}, nodes) is None
    missing = ray_resources.unplaceable_reason("ml.c5.large", {"CPU": 1.0, "gpu-pool": 0.1}, nodes)
    assert missing is not None
    assert "'gpu-pool'" in missing
    assert "no live node" in (ray_resources.unplaceable_reason("x", {"CPU": 1.0}, []) or "")


def test_actor_names_parse_back_and_others_are_ignored() -> None:
    assert ray_resources.parse_instance_name("e1/AllTraffic/g3/1") == ("e1", "AllTraffic", 3, 1)
    for other in ("e1/AllTraffic/3/1", "e1/v/gx/1", "something-else", "a/b/g1/x"):
        assert ray_resources.parse_instance_name(other) is None


def test_resources_read_as_people_say_them() -> None:
    asked = {"CPU": 2.0, "memory": 4.0 * 1024**3, "compute": 0.001}
    assert ray_resources.describe_resources(asked) == "2 CPUs, 4 GiB, compute"
