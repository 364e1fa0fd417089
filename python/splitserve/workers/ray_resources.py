"""What a Ray-placed instance asks of the cluster, and how its actor is named: pure functions,
without Ray, so they are tested (and read) on their own (docs/architecture.md, "Placement")."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

from splitserve.config import PlacementSettings
from splitserve.workers.catalog import GIB, InstanceType


def instance_resources(
    settings: PlacementSettings, instance_type: InstanceType
) -> dict[str, float]:
    """What one actor of `instance_type` reserves: CPU, memory, and its custom resource."""
    resources: dict[str, float] = {"CPU": float(instance_type.vcpus)}
    if settings.reserve_memory:
        resources["memory"] = float(instance_type.memory_bytes)
    custom = custom_resource(settings, instance_type.name)
    if custom is not None:
        resources[custom] = settings.custom_resource_amount
    return resources


def custom_resource(settings: PlacementSettings, type_name: str) -> str | None:
    """The custom resource of `type_name`'s first matching pattern, or None."""
    for pattern, resource in settings.type_resources:
        if fnmatch.fnmatchcase(type_name, pattern):
            return resource
    return None


def unplaceable_reason(
    type_name: str, wanted: Mapping[str, float], nodes: Sequence[Mapping[str, float]]
) -> str | None:
    """Why no node of `nodes` (each node's total resources) could ever hold an actor asking
    for `wanted`; None when one could."""
    for node in nodes:
        if all(node.get(name, 0.0) >= amount for name, amount in wanted.items()):
            return None
    asked = [f"{wanted['CPU']:g} CPUs"]
    if "memory" in wanted:
        asked.append(f"{wanted['memory'] / GIB:g} GiB of memory")
    asked += [f"the custom resource {name!r}" for name in wanted if name not in ("CPU", "memory")]
    largest = (
        "the cluster has no live node"
        if not nodes
        else "its largest node has "
        + f"{max(node.get('CPU', 0.0) for node in nodes):g} CPUs and "
        + f"{max(node.get('memory', 0.0) for node in nodes) / GIB:.1f} GiB"
    )
    return (
        f"No node of the Ray cluster can hold an instance of {type_name}, which asks for "
        f"{', '.join(asked)}: {largest}. Add a node that large, or choose a smaller instance type."
    )


def parse_instance_name(name: str) -> tuple[str, str, int, int] | None:
    """(endpoint, variant, generation, index) of an actor name, or None if it is not one."""
    parts = name.split("/")
    if len(parts) != 4 or not parts[2].startswith("g"):
        return None
    try:
        return parts[0], parts[1], int(parts[2][1:]), int(parts[3])
    except ValueError:
        return None


def describe_resources(resources: Mapping[str, float]) -> str:
    """What `resources` asks for, as people read it: `2 CPUs, 8 GiB, compute`."""
    parts = [f"{resources['CPU']:g} CPUs"]
    if "memory" in resources:
        parts.append(f"{resources['memory'] / GIB:g} GiB")
    parts += [name for name in resources if name not in ("CPU", "memory")]
    return ", ".join(parts)
