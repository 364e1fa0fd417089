"""The live endpoints the data plane reads: replaced whole, never edited in place.

The control plane (through the deployer) builds a new `LiveEndpoint` for every generation of an
endpoint and swaps it into the registry in one assignment. A request takes the `LiveEndpoint` it
found at its start and uses that object's router and connection pools to the end, so a blue/green
switch never strands a request between two fleets.

The registry also knows the endpoints that exist but have no live generation: pending ones (being
created, or redeployed after a restart), which the runtime answers with a retryable 503, and failed
ones, which it answers with a 400 giving the endpoint's FailureReason. Only a request for a name
with no live generation looks at them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from splitserve._router import Router
from splitserve.capture.writer import CaptureSink
from splitserve.contract.upstream import UpstreamResponse
from splitserve.metrics.recorder import VariantRecorder


class InstanceClient(Protocol):
    """What the runtime needs of one instance's connection: one request, one whole answer (the
    container contract's client, `contract.upstream.UpstreamPool`, in the gateway)."""

    async def request(
        self,
        method: bytes,
        path: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        timeout: float,  # noqa: ASYNC109 (the client's own deadline, cheaper than a scope)
    ) -> UpstreamResponse:
        """Send one request and return the whole answer, whatever its status.

        Raises:
            UpstreamConnectError: no connection could be made (the request reached no worker).
            UpstreamTimeout: the answer was not complete within `timeout` seconds.
            UpstreamError: any other failure after the request may have been sent.
        """
        ...


class ShadowCopies(Protocol):
    """Where a live endpoint with shadow variants hands each answered request
    (`runtime.shadow.ShadowCopier`): it copies the request to the shadows off the request path
    and, in their place, offers production's answer to data capture."""

    def copy(
        self,
        variant: str,
        body: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        content_type: str | None,
        inference_id: str | None,
        targeted: bool,
        response: UpstreamResponse,
        response_content_type: bytes | None,
        model_seconds: float,
        event_id: str | None = None,
    ) -> None:
        """Queue copies of one request production answered; never blocks, never raises."""
        ...


@dataclass(frozen=True)
class LiveEndpoint:
    """One routable generation of an endpoint.

    Attributes:
        name: the endpoint's name.
        generation: which fleet of the endpoint this is (it grows with every UpdateEndpoint).
        router: the Rust router that picks a variant and an instance per request (and fails
            over while the endpoint's `splitserve:failover` tag is `true`: AddTags and DeleteTags
            flip that flag in this very router, so a tag change needs no new LiveEndpoint).
        pools: a client (a keep-alive connection pool) per instance name the router can return.
        recorders: each variant's recorder (metrics and minutes), by variant name.
        log_stream_arn: what ModelError responses name as the log stream.
        capture: where this generation's successful invocations are sampled for data capture;
            None when its configuration captures nothing.
        shadows: the copier of a generation with shadow variants (which then also offers
            production's answers to `capture`); None without shadows.
        unreachable: told the name of an instance a forward could not connect to (a replica
            that does not run the health checks stops routing to it for a while); None on the
            controller, whose health checks decide.
        variant_names: the router's variant name -> the variant's name, while a stepped
            UpdateEndpoint routes both fleets in one router (the new fleet's variants that share
            a name with the old fleet's are in it under a name no caller can target); None
            otherwise, when the router's names are the variants' names.
    """

    name: str
    generation: int
    router: Router
    pools: Mapping[str, InstanceClient]
    recorders: Mapping[str, VariantRecorder]
    log_stream_arn: str
    capture: CaptureSink | None = None
    shadows: ShadowCopies | None = None
    unreachable: Callable[[str], None] | None = None
    variant_names: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Unroutable:
    """An endpoint that exists but has no live generation.

    Attributes:
        failure_reason: None while it is being deployed (created, or redeployed after a restart);
            its FailureReason once it failed.
    """

    failure_reason: str | None


@dataclass
class EndpointRegistry:
    """Endpoint name -> its live generation. Readers see a mapping that is swapped, not mutated."""

    _endpoints: Mapping[str, LiveEndpoint] = field(default_factory=lambda: MappingProxyType({}))
    _unroutable: dict[str, Unroutable] = field(default_factory=dict)

    def get(self, name: str) -> LiveEndpoint | None:
        """The live generation of endpoint `name`, or None when it is not routable."""
        return self._endpoints.get(name)

    def unroutable(self, name: str) -> Unroutable | None:
        """Why endpoint `name` has no live generation: pending or failed; None when the registry
        knows no such endpoint (or it is live)."""
        return self._unroutable.get(name)

    def publish(self, endpoint: LiveEndpoint) -> None:
        """Make `endpoint` the one requests for its name are routed to, in one step."""
        updated = dict(self._endpoints)
        updated[endpoint.name] = endpoint
        self._endpoints = MappingProxyType(updated)
        self._unroutable.pop(endpoint.name, None)

    def pending(self, name: str) -> None:
        """Endpoint `name` exists and is being deployed: until a generation is published, its
        requests are told to try again."""
        self._unroutable[name] = Unroutable(failure_reason=None)

    def failed(self, name: str, reason: str) -> None:
        """Endpoint `name` failed for `reason` (its FailureReason). Without a live generation its
        requests are refused with that reason; a live generation, if any, keeps serving."""
        self._unroutable[name] = Unroutable(failure_reason=reason)

    def withdraw(self, name: str) -> LiveEndpoint | None:
        """Stop routing to endpoint `name` and forget it (it is being deleted); return the
        generation that was live, if any."""
        updated = dict(self._endpoints)
        removed = updated.pop(name, None)
        self._endpoints = MappingProxyType(updated)
        self._unroutable.pop(name, None)
        return removed

    def names(self) -> list[str]:
        """The names of every routable endpoint."""
        return list(self._endpoints)

    def known(self) -> list[str]:
        """The names of every endpoint the registry knows: routable, pending or failed."""
        return sorted(self._endpoints.keys() | self._unroutable.keys())
