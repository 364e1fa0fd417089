"""Routing documents: what the controller publishes of each endpoint for every replica to route by.

One document per endpoint, replaced whole: whether it is routable (live), being deployed
(pending) or failed; and when live, its generation, failover flag, data-capture configuration and,
per variant, the weight, the instance-choice strategy and each instance's name, address and health
as the controller's health checks see it. A replica builds its `LiveEndpoint`s from these
(`wiring.replicas`). Addresses are text here (`unix:/path` or `host:port`, as
`contract.upstream.UpstreamAddress` prints them): this part imports nothing but common.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "RoutedInstance",
    "RoutedVariant",
    "RoutingDocument",
    "RoutingDocumentError",
    "decode",
    "encode",
]

State = Literal["live", "pending", "failed"]
_STATES = ("live", "pending", "failed")


class RoutingDocumentError(Exception):
    """A stored routing document that is not one (a damaged row, or a newer writer's format)."""


@dataclass(frozen=True)
class RoutedInstance:
    """One instance a variant routes to."""

    name: str
    address: str
    healthy: bool


@dataclass(frozen=True)
class RoutedVariant:
    """One production variant of the live generation."""

    name: str
    weight: float
    strategy: str
    instances: tuple[RoutedInstance, ...]


@dataclass(frozen=True)
class RoutingDocument:
    """What a replica needs to route one endpoint's requests.

    Attributes:
        endpoint: the endpoint's name.
        state: "live" (routable), "pending" (being deployed: retryable 503) or "failed".
        failure_reason: the FailureReason of a failed endpoint.
        generation: the live generation (0 when not live).
        failover: the endpoint's `splitserve:failover` flag.
        variants: the live generation's variants, in the configuration's order.
        capture: the generation's DataCaptureConfig as the capture writer takes it (a JSON
            object of `capture.spec.DataCapture`'s fields), None when it captures nothing.
    """

    endpoint: str
    state: State
    failure_reason: str | None = None
    generation: int = 0
    failover: bool = False
    variants: tuple[RoutedVariant, ...] = ()
    capture: Mapping[str, object] | None = None

    def same_table(self, other: RoutingDocument) -> bool:
        """True when `other` routes over the same generation, variants, strategies and
        instances (so a router can be kept and given only new weights, health and failover)."""
        return (
            self.generation == other.generation
            and self.capture == other.capture
            and _tables(self) == _tables(other)
        )


def _tables(document: RoutingDocument) -> list[tuple[str, str, list[tuple[str, str]]]]:
    return [
        (v.name, v.strategy, [(i.name, i.address) for i in v.instances]) for v in document.variants
    ]


def encode(document: RoutingDocument) -> str:
    """The document as the JSON text the store keeps."""
    return json.dumps(
        {
            "endpoint": document.endpoint,
            "state": document.state,
            "failure_reason": document.failure_reason,
            "generation": document.generation,
            "failover": document.failover,
            "capture": None if document.capture is None else dict(document.capture),
            "variants": [
                {
                    "name": variant.name,
                    "weight": variant.weight,
                    "strategy": variant.strategy,
                    "instances": [
                        {"name": i.name, "address": i.address, "healthy": i.healthy}
                        for i in variant.instances
                    ],
                }
                for variant in document.variants
            ],
        },
        separators=(",", ":"),
    )


def decode(text: str) -> RoutingDocument:
    """The document stored as `text`.

    Raises:
        RoutingDocumentError: `text` is not a routing document (the message says what is wrong).
    """
    try:
        raw = json.loads(text)
        state = raw["state"]
        if state not in _STATES:
            raise RoutingDocumentError(f"unknown state {state!r}")
        capture = raw.get("capture")
        return RoutingDocument(
            endpoint=_text(raw["endpoint"]),
            state=state,
            failure_reason=raw.get("failure_reason"),
            generation=int(raw.get("generation", 0)),
            failover=bool(raw.get("failover", False)),
            capture=dict(capture) if isinstance(capture, dict) else None,
            variants=tuple(
                RoutedVariant(
                    name=_text(variant["name"]),
                    weight=float(variant["weight"]),
                    strategy=_text(variant["strategy"]),
                    instances=tuple(
                        RoutedInstance(
                            name=_text(instance["name"]),
                            address=_text(instance["address"]),
                            healthy=bool(instance["healthy"]),
                        )
                        for instance in variant["instances"]
                    ),
                )
                for variant in raw.get("variants", ())
            ),
        )
    except RoutingDocumentError:
        raise
    except (ValueError, KeyError, TypeError) as error:
        raise RoutingDocumentError(f"not a routing document: {error!r}") from None


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, found {type(value).__name__}")
    return value
