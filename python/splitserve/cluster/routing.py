"""Routing documents: what the controller publishes of each endpoint for every replica to route by.

One document per endpoint, replaced whole: whether it is routable (live), being deployed
(pending) or failed; and when live, its generation, failover flag, data-capture configuration and,
per variant, the weight, the instance-choice strategy and each instance's name, address and health
as the controller's health checks see it; the shadow variants the same way, apart (a document
written before shadows existed has none). A replica builds its `LiveEndpoint`s from these
(`wiring.replicas`). Addresses are text here (`unix:/path` or `host:port`, as
`contract.upstream.UpstreamAddress` prints them): this part imports nothing but common.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar, cast

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
    pipeline_depth: int = 1


@dataclass(frozen=True)
class RoutedVariant:
    """One production variant of the live generation.

    `name` is its name in the router; `public_name`, when set, is the variant's own name: a
    stepped UpdateEndpoint routes the new fleet's variant beside the old fleet's variant of
    the same name under a name of its own (`runtime.registry.LiveEndpoint.variant_names`).
    """

    name: str
    weight: float
    strategy: str
    instances: tuple[RoutedInstance, ...]
    public_name: str | None = None


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
        shadows: the live generation's shadow variants, in the configuration's order: never
            routed to, each copied its share of requests (its weight relative to the
            production variants', `runtime.shadow.shadow_fraction`).
    """

    endpoint: str
    state: State
    failure_reason: str | None = None
    generation: int = 0
    failover: bool = False
    variants: tuple[RoutedVariant, ...] = ()
    capture: Mapping[str, object] | None = None
    shadows: tuple[RoutedVariant, ...] = ()

    def same_table(self, other: RoutingDocument) -> bool:
        """True when `other` routes over the same generation, variants, strategies and
        instances (so a router can be kept and given only new weights, health and failover)."""
        return (
            self.generation == other.generation
            and self.capture == other.capture
            and _tables(self.variants) == _tables(other.variants)
            and _tables(self.shadows) == _tables(other.shadows)
        )


def _tables(
    variants: tuple[RoutedVariant, ...],
) -> list[tuple[str, str | None, str, list[tuple[str, str, int]]]]:
    return [
        (
            v.name,
            v.public_name,
            v.strategy,
            [(i.name, i.address, i.pipeline_depth) for i in v.instances],
        )
        for v in variants
    ]


def _encode_variant(variant: RoutedVariant) -> dict[str, object]:
    return {
        "name": variant.name,
        "weight": variant.weight,
        "strategy": variant.strategy,
        "instances": [_encode_instance(i) for i in variant.instances],
        # Only during a stepped update: other documents read the same to an older replica.
        **({} if variant.public_name is None else {"public_name": variant.public_name}),
    }


def _encode_instance(instance: RoutedInstance) -> dict[str, object]:
    encoded: dict[str, object] = {
        "name": instance.name,
        "address": instance.address,
        "healthy": instance.healthy,
    }
    if instance.pipeline_depth != 1:  # only then: a document without it reads the same anywhere
        encoded["pipeline_depth"] = instance.pipeline_depth
    return encoded


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
            "variants": [_encode_variant(variant) for variant in document.variants],
            # Left out without shadows: such a document reads the same to an older replica.
            **(
                {"shadows": [_encode_variant(variant) for variant in document.shadows]}
                if document.shadows
                else {}
            ),
        },
        separators=(",", ":"),
    )


def decode(text: str) -> RoutingDocument:
    """The document stored as `text`.

    Every field is checked for its type, not converted: a damaged `"healthy": "no"` must not
    read as a healthy instance.

    Raises:
        RoutingDocumentError: `text` is not a routing document (the message says what is wrong).
    """
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise RoutingDocumentError(f"not a routing document: not JSON ({error})") from None
    document = _object(raw, "the document")
    state = _field(document, "state", str, "the document")
    if state not in _STATES:
        raise RoutingDocumentError(f"not a routing document: unknown state {state!r}")
    capture = _field(document, "capture", dict, "the document", default=None, nullable=True)
    return RoutingDocument(
        endpoint=_field(document, "endpoint", str, "the document"),
        state=cast(State, state),
        failure_reason=_field(
            document, "failure_reason", str, "the document", default=None, nullable=True
        ),
        generation=_field(document, "generation", int, "the document", default=0),
        failover=_field(document, "failover", bool, "the document", default=False),
        capture=capture,
        variants=tuple(
            _variant(_object(variant, f"variant {index}"), f"variant {index}")
            for index, variant in enumerate(
                _field(document, "variants", list, "the document", default=[])
            )
        ),
        shadows=tuple(
            _variant(_object(variant, f"shadow {index}"), f"shadow {index}")
            for index, variant in enumerate(
                _field(document, "shadows", list, "the document", default=[])
            )
        ),
    )


def _variant(variant: dict[str, object], where: str) -> RoutedVariant:
    return RoutedVariant(
        name=_field(variant, "name", str, where),
        weight=float(_field(variant, "weight", float, where)),
        strategy=_field(variant, "strategy", str, where),
        instances=tuple(
            _instance(_object(item, f"{where} instance {index}"), f"{where} instance {index}")
            for index, item in enumerate(_field(variant, "instances", list, where))
        ),
        public_name=_field(variant, "public_name", str, where, default=None, nullable=True),
    )


def _instance(instance: dict[str, object], where: str) -> RoutedInstance:
    return RoutedInstance(
        name=_field(instance, "name", str, where),
        address=_field(instance, "address", str, where),
        healthy=_field(instance, "healthy", bool, where),
        pipeline_depth=_field(instance, "pipeline_depth", int, where, default=1),
    )


_MISSING = object()
_T = TypeVar("_T")
_TYPE_NAMES: dict[type, str] = {
    str: "text",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    dict: "a JSON object",
    list: "a JSON array",
}


def _object(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise RoutingDocumentError(
            f"not a routing document: {where} is {_kind(value)}, not a JSON object"
        )
    return value


def _field(
    mapping: dict[str, object],
    key: str,
    kind: type[_T],
    where: str,
    *,
    default: object = _MISSING,
    nullable: bool = False,
) -> _T:
    """`mapping[key]` when it is a `kind` (JSON's numbers: an int is a float, a bool is
    neither), `default` when the key is missing."""
    if key not in mapping:
        if default is _MISSING:
            raise RoutingDocumentError(f"not a routing document: {where} has no {key!r}")
        return default  # type: ignore[return-value]
    value = mapping[key]
    if value is None and nullable:
        return value  # type: ignore[return-value]
    accepted: tuple[type, ...] = (int, float) if kind is float else (kind,)
    if isinstance(value, accepted) and (kind is bool or not isinstance(value, bool)):
        return value  # type: ignore[return-value]
    raise RoutingDocumentError(
        f"not a routing document: {where}'s {key!r} is {_kind(value)}, not {_TYPE_NAMES[kind]}"
    )


def _kind(value: object) -> str:
    """What JSON calls `value`'s kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a JSON array" if isinstance(value, list) else "a JSON object"
