"""The control store's rows and records: how a stored row becomes a record (`named_record`,
`deployed_variant`, `weight_change`) and how documents, tags and numbers are written and read
back. A value that is not as it was written raises `StateFileError`, naming what it was, so a
damaged row stops start-up (`store.Store` reads every row when it opens) rather than a request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from splitserve.control.models import (
    DeployedVariant,
    EndpointConfigRecord,
    ModelRecord,
    Tags,
    VariantStatusEntry,
)
from splitserve.control.statefile import StateFileError

__all__ = [
    "WeightChange",
    "decode",
    "decode_tags",
    "deployed_variant",
    "encode",
    "encode_optional",
    "encode_tags",
    "named_record",
    "optional_mapping",
    "stored_float",
    "stored_int",
    "weight_change",
]

_Named = TypeVar("_Named", ModelRecord, EndpointConfigRecord)


@dataclass(frozen=True)
class WeightChange:
    """The weights an endpoint's router was given, when and why.

    Attributes:
        time: when the router had them (seconds since the epoch); they held until the next change.
        cause: what gave them: "CreateEndpoint", "UpdateEndpoint",
            "UpdateEndpointWeightsAndCapacities", "RollBack" (a failed scaling restored the
            previous weights) or "GatewayRestart" (a restart brought the endpoint back).
        weights: each live variant's weight, in the endpoint's variant order.
    """

    time: float
    cause: str
    weights: tuple[tuple[str, float], ...]


def named_record(
    record: Callable[[str, float, dict[str, object], Tags], _Named],
    kind: str,
    row: tuple[object, ...],
) -> _Named:
    """A model or endpoint configuration row as its record; StateFileError names a bad one."""
    try:
        return record(str(row[0]), stored_float(row[1]), decode(row[2]), decode_tags(row[3]))
    except StateFileError as error:
        raise StateFileError(f"{kind} {row[0]!r}: {error.message}") from error


def weight_change(name: str, row: tuple[object, ...]) -> WeightChange:
    """A weight-history row as its record; StateFileError names the endpoint of a bad one."""
    try:
        weights = decode(row[2])
        return WeightChange(
            time=stored_float(row[0]),
            cause=str(row[1]),
            weights=tuple(
                (str(variant), stored_float(weight)) for variant, weight in weights.items()
            ),
        )
    except StateFileError as error:
        raise StateFileError(f"weight history of endpoint {name!r}: {error.message}") from error


def deployed_variant(row: tuple[object, ...]) -> DeployedVariant:
    """An endpoint variant row as its record; StateFileError when a value is not as stored."""
    (variant_name, current_weight, desired_weight, current_count, desired_count) = row[:5]
    deployed_time, status, status_message, status_start_time, spec_text = row[5:]
    spec = decode(str(spec_text))
    environment = spec.get("Environment")
    model_data_url = spec.get("ModelDataUrl")
    routing = spec.get("RoutingStrategy")
    timeout = spec.get("ContainerStartupHealthCheckTimeoutInSeconds")
    return DeployedVariant(
        variant_name=str(variant_name),
        model_name=str(spec["ModelName"]),
        image=str(spec["Image"]),
        model_data_url=model_data_url if isinstance(model_data_url, str) else None,
        environment=(
            {str(k): str(v) for k, v in environment.items()}
            if isinstance(environment, dict)
            else {}
        ),
        instance_type=str(spec["InstanceType"]),
        routing_strategy=routing if isinstance(routing, str) else None,
        container_startup_timeout_seconds=timeout if isinstance(timeout, int) else None,
        current_weight=stored_float(current_weight),
        desired_weight=stored_float(desired_weight),
        current_instance_count=stored_int(current_count),
        desired_instance_count=stored_int(desired_count),
        deployed_time=None if deployed_time is None else stored_float(deployed_time),
        status=(
            None
            if status is None
            else VariantStatusEntry(
                str(status), str(status_message), stored_float(status_start_time)
            )
        ),
        shadow=spec.get("Shadow") is True,
    )


def encode(document: Mapping[str, object]) -> str:
    """A document as stored: compact JSON, no NaN."""
    return json.dumps(document, allow_nan=False, separators=(",", ":"))


def encode_optional(document: Mapping[str, object] | None) -> str | None:
    """`encode`, or NULL for no document."""
    return None if document is None else encode(document)


def decode(text: object) -> dict[str, object]:
    """A stored document; StateFileError when it is not a JSON object."""
    try:
        document = json.loads(str(text))
    except ValueError as error:
        raise StateFileError(f"a stored document is not JSON: {error}") from error
    if not isinstance(document, dict):
        raise StateFileError("a stored document is not a JSON object")
    return document


def encode_tags(tags: Tags) -> str | None:
    """Tags as stored: JSON [[key, value], ...]; NULL for none."""
    return json.dumps([list(tag) for tag in tags]) if tags else None


def decode_tags(text: object) -> Tags:
    """Stored tags (`encode_tags`); StateFileError when they are not [key, value] pairs."""
    if text is None:
        return ()
    try:
        pairs = json.loads(str(text))
    except ValueError as error:
        raise StateFileError(f"stored tags are not JSON: {error}") from error
    if not isinstance(pairs, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
        for pair in pairs
    ):
        raise StateFileError("stored tags are not a list of [key, value] pairs")
    return tuple((key, value) for key, value in pairs)


def optional_mapping(value: object) -> Mapping[str, object] | None:
    """`value` when it is a JSON object, else None."""
    return value if isinstance(value, dict) else None


def stored_float(value: object) -> float:
    """A stored number; StateFileError when it is not one."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise StateFileError(f"a stored number is not a number: {value!r}")


def stored_int(value: object) -> int:
    """A stored integer; StateFileError when it is not one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise StateFileError(f"a stored integer is not an integer: {value!r}")
