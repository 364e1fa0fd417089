"""The fleet deployer tells who asked (`when_removed`) of each endpoint it removed: feedback
forgets a deleted endpoint's index and labels there (`wiring.online.forget_feedback`)."""

from __future__ import annotations

from pathlib import Path

from splitserve.config import Settings
from splitserve.metrics.prometheus import remove_variant_series
from splitserve.runtime.registry import EndpointRegistry
from splitserve.wiring.fleet import FleetDeployer
from tests.wiring.test_fleet_failover import _plan, _StandInSupervisor


async def test_remove_tells_the_callback_after_the_endpoint_is_gone(tmp_path: Path) -> None:
    registry = EndpointRegistry()
    fleet = FleetDeployer(Settings(), registry)
    fleet.attach(_StandInSupervisor(tmp_path))  # type: ignore[arg-type]
    told: list[tuple[str, bool]] = []

    async def removed(endpoint: str) -> None:
        told.append((endpoint, registry.get(endpoint) is not None))

    fleet.when_removed(removed)
    plan = _plan(1, failover=False)
    await fleet.deploy(plan)
    await fleet.activate(plan)
    assert told == []
    await fleet.remove("fo")
    assert told == [("fo", False)]
    await fleet.close()
    remove_variant_series("fo", "A")
