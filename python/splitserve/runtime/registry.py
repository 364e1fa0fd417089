"""The live endpoints the data plane reads: replaced whole, never edited in place.

The control plane (through the deployer) builds a new `LiveEndpoint` for every generation of an
endpoint and swaps it into the registry in one assignment. A request takes the `LiveEndpoint` it
found at its start and uses that object's router and connection pools to the end, so a blue/green
switch never strands a request between two fleets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from splitserve._router import Router
from splitserve.capture.writer import CaptureSink
from splitserve.metrics.prometheus import VariantMetrics
from splitserve.contract.upstream import UpstreamPool


@dataclass(frozen=True)
class LiveEndpoint:
    """One routable generation of an endpoint.

    Attributes:
        name: the endpoint's name.
        generation: which fleet of the endpoint this is (it grows with every UpdateEndpoint).
        router: the Rust router that picks a variant and an instance per request.
        pools: a keep-alive connection pool per instance name the router can return.
        metrics: pre-resolved metric children per variant name.
        log_stream_arn: what ModelError responses name as the log stream.
        capture: where this generation's successful invocations are sampled for data capture;
            None when its configuration captures nothing.
        failover: an untargeted request whose variant has no healthy instance goes to another
            variant instead of failing (the endpoint's `splitserve:failover` tag).
    """

    name: str
    generation: int
    router: Router
    pools: Mapping[str, UpstreamPool]
    metrics: Mapping[str, VariantMetrics]
    log_stream_arn: str
    capture: CaptureSink | None = None
    failover: bool = False


@dataclass
class EndpointRegistry:
    """Endpoint name -> its live generation. Readers see a mapping that is swapped, not mutated."""

    _endpoints: Mapping[str, LiveEndpoint] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, name: str) -> LiveEndpoint | None:
        """The live generation of endpoint `name`, or None when it is not routable."""
        return self._endpoints.get(name)

    def publish(self, endpoint: LiveEndpoint) -> None:
        """Make `endpoint` the one requests for its name are routed to, in one step."""
        updated = dict(self._endpoints)
        updated[endpoint.name] = endpoint
        self._endpoints = MappingProxyType(updated)

    def withdraw(self, name: str) -> LiveEndpoint | None:
        """Stop routing to endpoint `name`; return the generation that was live, if any."""
        updated = dict(self._endpoints)
        removed = updated.pop(name, None)
        self._endpoints = MappingProxyType(updated)
        return removed

    def names(self) -> list[str]:
        """The names of every routable endpoint."""
        return list(self._endpoints)
