"""What is said of a generation's instances: DescribeEndpoint's per-instance listing (CPUs,
state, the node of a placed one) and the warning when instances share CPUs because the host has
fewer than they ask for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from splitserve.wiring.generations import Generation
from splitserve.workers.instance import InstanceInfo


def instance_listing(
    generation: Generation, usage: Mapping[int, int]
) -> dict[str, list[dict[str, object]]]:
    """Per variant of `generation`: each instance's name, CPUs and state; `usage`: how many
    running instances each host CPU is given to (`Placement.cpu_usage`)."""
    details: dict[str, list[dict[str, object]]] = {}
    for variant, fleet in generation.fleets.items():
        listed = details[variant] = []
        for info in fleet.instances():
            shared = [cpu for cpu in info.cpus if usage.get(cpu, 0) > 1]
            entry: dict[str, object] = {
                "InstanceName": info.name,
                "Cpus": list(info.cpus),
                "SharedCpus": shared,
                "State": info.state,
            }
            if shared:
                entry["Message"] = _shared_cpus_message(shared)
            if info.node is not None:
                # Placed on a cluster: where it runs and what it reserves there.
                entry["Node"] = info.node
                entry["NodeId"] = info.node_id
                entry["VCpus"] = info.vcpus
                entry["Address"] = str(info.address)
            listed.append(entry)
    return details


def shared_cpus_warning(
    endpoint_name: str, started: Sequence[InstanceInfo], usage: Mapping[int, int]
) -> str | None:
    """The warning for a deployment or scale-out whose `started` instances share CPUs with
    other instances (None when none does): the host has fewer CPUs than the instances ask for
    (DescribeEndpoint's instance listing says so too, per instance)."""
    sharing = [info for info in started if any(usage.get(cpu, 0) > 1 for cpu in info.cpus)]
    if not sharing:
        return None
    overlaps = ", ".join(f"{info.name} on {_cpu_list(info.cpus)}" for info in sharing)
    return (
        f"endpoint {endpoint_name}: {len(sharing)} of the {len(started)} instances just started "
        f"share CPUs with other instances (their CPU sets overlap: {overlaps}); the host has "
        f"{len(usage)} CPUs for instances and they ask for more, so they compete for them"
    )


def _cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(str(cpu) for cpu in cpus)


def _shared_cpus_message(shared: Sequence[int]) -> str:
    """What DescribeEndpoint's instance listing says of an instance whose CPUs overlap."""
    return (
        f"CPUs {_cpu_list(shared)} are shared with other instances: the host has fewer CPUs than "
        "the instances ask for, so their CPU sets overlap and they compete for them."
    )
