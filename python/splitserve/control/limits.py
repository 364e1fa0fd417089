"""How many instances, and how many vCPUs, one endpoint may ask of this host.

SageMaker answers ResourceLimitExceeded when a request would go over an account quota, and checks
its quotas when instances are asked for (CreateEndpoint, UpdateEndpoint,
UpdateEndpointWeightsAndCapacities), not when a configuration is stored: so does splitserve, with
two limits of its own (config.ControlSettings, README "Limits").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from splitserve.errors import ResourceLimitExceeded


@dataclass(frozen=True)
class InstanceLimits:
    """The per-variant instance cap and the per-endpoint vCPU budget.

    Attributes:
        instance_vcpus: the vCPUs of every instance type the catalog runs.
        host_cpus: how many CPUs instances may use on this host.
        max_instances_per_variant: the most instances one variant may run.
        max_vcpu_overcommit: the endpoint's vCPUs may be at most this many times `host_cpus`;
            None checks no vCPU budget (instances placed on a Ray cluster, whose capacity the
            placement checks when it deploys: docs/architecture.md, "Placement").
    """

    instance_vcpus: Mapping[str, int]
    host_cpus: int
    max_instances_per_variant: int
    max_vcpu_overcommit: float | None

    def vcpus_of(self, instance_type: str) -> int:
        """What one instance of `instance_type` counts: its vCPUs, at most the host's CPUs (an
        instance is pinned to no more CPUs than the host has). A type the catalog does not know
        (any more) counts as the whole host."""
        return min(self.instance_vcpus.get(instance_type, self.host_cpus), self.host_cpus)

    def check(self, variants: Sequence[tuple[str, str, int]], *, endpoint_name: str) -> None:
        """Refuse an endpoint whose variants ask for too much.

        Args:
            variants: (variant name, instance type, instance count) of every variant it would run.
            endpoint_name: for the message.

        Raises:
            ResourceLimitExceeded: a variant over `max_instances_per_variant`, or the endpoint
                over `max_vcpu_overcommit` times the host's CPUs.
        """
        cap = self.max_instances_per_variant
        for variant_name, _, count in variants:
            if count > cap:
                raise ResourceLimitExceeded(
                    f'The instance count {count} requested for variant "{variant_name}" is over '
                    f"this gateway's limit of {cap} instances per variant "
                    "(splitserve serve --max-instances-per-variant)."
                )
        if self.max_vcpu_overcommit is None:
            return
        total = sum(self.vcpus_of(instance_type) * count for _, instance_type, count in variants)
        budget = int(self.max_vcpu_overcommit * self.host_cpus)
        if total > budget:
            parts = ", ".join(
                f'"{name}" {count} x {instance_type} ({self.vcpus_of(instance_type)} vCPUs each)'
                for name, instance_type, count in variants
            )
            raise ResourceLimitExceeded(
                f'Endpoint "{endpoint_name}" asks for {total} vCPUs ({parts}), over this '
                f"gateway's limit of {budget}: {self.max_vcpu_overcommit:g} times the host's "
                f"{self.host_cpus} CPUs (splitserve serve --max-vcpu-overcommit). An instance "
                "counts at most the host's CPUs."
            )
