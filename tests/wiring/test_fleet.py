"""The fleet deployer's own parts that need no workers: what it tells the data plane's registry,
and how it reports a routing table the router refuses."""

from __future__ import annotations

import logging

import pytest

from splitserve._router import Router, VariantSpec
from splitserve.config import Settings
from splitserve.errors import DeploymentError
from splitserve.runtime.registry import EndpointRegistry, Unroutable
from splitserve.wiring.fleet import FleetDeployer
from splitserve.wiring.generations import router_errors


def test_pending_and_failed_endpoints_reach_the_registry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = EndpointRegistry()
    deployer = FleetDeployer(Settings(), registry)
    deployer.pending("e")
    assert registry.unroutable("e") == Unroutable(failure_reason=None)
    with caplog.at_level(logging.WARNING, "splitserve.wiring.fleet"):
        deployer.failed("e", "no CPUs left")
    # The reason reaches the log, not only FailureReason.
    assert [record.getMessage() for record in caplog.records] == [
        "endpoint e is Failed: no CPUs left"
    ]
    assert registry.unroutable("e") == Unroutable(failure_reason="no CPUs left")
    assert registry.get("e") is None
    registry.withdraw("e")  # DeleteEndpoint forgets it
    assert registry.unroutable("e") is None


def test_a_refused_routing_table_is_a_deployment_error_naming_the_problem() -> None:
    with (
        pytest.raises(DeploymentError, match="production variant 'A' has weight -1") as raised,
        router_errors(),
    ):
        Router([VariantSpec("A", -1.0, ["a-0"], "RANDOM")], salt="e", seed=1, failover=False)
    assert raised.value.message.startswith("The routing table was refused: ")
