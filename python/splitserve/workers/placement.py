"""Where instances run: the small protocol the fleet deployer drives (docs/architecture.md,
"Placement").

Two implementations sit side by side: `supervisor.Supervisor` (local child processes, the
default) and `ray_placement.RayPlacement` (detached actors on a Ray cluster, imported only when
`--placement ray` asks for it). The deployer does not know which one it drives: it makes one
fleet per variant generation, starts, scales and stops it, and reads its `InstanceInfo`s; both
report health through the same `InstanceListener`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from splitserve.workers.fleet import VariantDeployment
from splitserve.workers.instance import InstanceInfo


class PlacedFleet(Protocol):
    """The instances of one variant generation, wherever they run."""

    def instances(self) -> list[InstanceInfo]:
        """A snapshot of every instance, by index."""
        ...

    async def start(self) -> None:
        """Bring up the deployment's instances (or adopt running ones); return once each
        answered its first /ping. Raises DeploymentError, having stopped what it started."""
        ...

    async def scale(self, count: int) -> None:
        """Grow or shrink to `count` instances (shrinking drains the highest indices)."""
        ...

    async def stop(self) -> None:
        """Drain and stop every instance (idempotent)."""
        ...

    async def detach(self) -> None:
        """Stop watching the instances without stopping them (a controller going away whose
        instances outlive it); for local processes, which die with it, the same as `stop`."""
        ...


class Placement(Protocol):
    """Makes fleets and holds what they share."""

    #: True when instances outlive the controller (Ray): a recovery adopts them.
    outlives_controller: bool

    def fleet(self, deployment: VariantDeployment) -> PlacedFleet:
        """A new, not yet started fleet for `deployment`; DeploymentError if it cannot run."""
        ...

    def cpu_usage(self) -> dict[int, int]:
        """How many running instances each of this host's CPUs is given to ({} when the
        instances run elsewhere)."""
        ...

    async def keep_only(self, generations: Mapping[str, int]) -> None:
        """A new controller recovers each endpoint of `generations` under that generation:
        stop any instance a previous controller left running that is of another generation or
        endpoint (nothing to do when instances die with their controller)."""
        ...

    async def close(self) -> None:
        """Stop (local) or let go of (Ray) every fleet; no fleet can be made afterwards."""
        ...
