"""A real multi-node Ray cluster on this machine for the Ray placement tests.

`ray.cluster_utils.Cluster` starts a head and worker nodes as separate raylets on free ports,
each node with its own CPUs, memory and custom resources, so actors spread across them as on a
real cluster; `remove_node` kills a node's raylet and everything on it. The cluster is stopped at
the end. Ray start-up is slow on a small machine: share one cluster per test module.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

GIB = 1024**3


@dataclass(frozen=True)
class NodeSpec:
    """One worker node: its CPUs, memory (logical, for Ray's packing) and custom resources."""

    cpus: int
    memory_gib: int
    resources: Mapping[str, float]


@contextlib.contextmanager
def ray_cluster(nodes: list[NodeSpec]) -> Iterator[tuple[Any, list[Any]]]:
    """A head node that runs nothing (0 CPUs) and `nodes`; yields (cluster, node handles)."""
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    try:
        handles = [
            cluster.add_node(
                num_cpus=node.cpus, memory=node.memory_gib * GIB, resources=dict(node.resources)
            )
            for node in nodes
        ]
        cluster.wait_for_nodes()
        yield cluster, handles
    finally:
        with contextlib.suppress(Exception):
            if ray.is_initialized():
                ray.shutdown()
        cluster.shutdown()


def named_actors(namespace: str) -> list[str]:
    """The live named actors of `namespace` (the driver must be connected)."""
    listed = ray.util.list_named_actors(all_namespaces=True)
    return sorted(entry["name"] for entry in listed if entry["namespace"] == namespace)


def wait_for_named_actors(namespace: str, expected: list[str], timeout: float = 30.0) -> list[str]:
    """Poll until `namespace`'s named actors are `expected` (ray.kill is asynchronous); return
    what was last seen."""
    deadline = time.monotonic() + timeout
    seen = named_actors(namespace)
    while seen != sorted(expected) and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = named_actors(namespace)
    return seen
