"""Routing documents: what `encode` writes `decode` reads back, damaged text is refused with a
message, and `same_table` tells a weight or health change from a new table."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from splitserve.cluster.routing import (
    RoutedInstance,
    RoutedVariant,
    RoutingDocument,
    RoutingDocumentError,
    decode,
    encode,
)

LIVE = RoutingDocument(
    endpoint="ab",
    state="live",
    generation=3,
    failover=True,
    capture={"enable_capture": True, "sampling_percentage": 50, "destination": "/tmp/capture"},
    variants=(
        RoutedVariant(
            name="A",
            weight=0.25,
            strategy="RANDOM",
            instances=(
                RoutedInstance("ab-A-0", "127.0.0.1:9001", healthy=True),
                RoutedInstance("ab-A-1", "unix:/run/ab-A-1.sock", healthy=False, pipeline_depth=8),
            ),
        ),
        RoutedVariant(
            name="B",
            weight=0.75,
            strategy="LEAST_OUTSTANDING_REQUESTS",
            instances=(RoutedInstance("ab-B-0", "127.0.0.1:9002", healthy=True),),
        ),
    ),
)


def raw(document: RoutingDocument = LIVE) -> dict[str, Any]:
    """`document` as the JSON object the store keeps, to damage."""
    value: dict[str, Any] = json.loads(encode(document))
    return value


@pytest.mark.parametrize(
    "document",
    [
        LIVE,
        RoutingDocument(endpoint="ab", state="pending"),
        RoutingDocument(endpoint="ab", state="failed", failure_reason="no CPUs left"),
        dataclasses.replace(LIVE, capture=None, failover=False, generation=1),
    ],
    ids=["live", "pending", "failed", "live-without-capture"],
)
def test_decode_reads_back_what_encode_wrote(document: RoutingDocument) -> None:
    assert decode(encode(document)) == document


def test_decode_takes_the_defaults_of_the_optional_keys() -> None:
    assert decode('{"endpoint": "ab", "state": "pending"}') == RoutingDocument(
        endpoint="ab", state="pending"
    )


def _damaged(change: Any) -> str:
    document = raw()
    change(document)
    return json.dumps(document)


def _set(path: tuple[str | int, ...], value: object) -> Any:
    def change(document: Any) -> None:
        for key in path[:-1]:
            document = document[key]
        document[path[-1]] = value

    return change


def _delete(path: tuple[str | int, ...]) -> Any:
    def change(document: Any) -> None:
        for key in path[:-1]:
            document = document[key]
        del document[path[-1]]

    return change


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "not a routing document"),
        ("{not json", "not a routing document"),
        ("[1, 2]", "not a routing document"),
        ("null", "not a routing document"),
        ('"live"', "not a routing document"),
        ("[" * 100_000, "not a routing document"),
        (_damaged(_set(("state",), "retired")), "unknown state 'retired'"),
        (_damaged(_set(("state",), ["live"])), "'state' is a JSON array, not text"),
        (_damaged(_delete(("state",))), "'state'"),
        (_damaged(_delete(("endpoint",))), "'endpoint'"),
        (_damaged(_set(("endpoint",), 7)), "'endpoint' is a number, not text"),
        (_damaged(_set(("generation",), "three")), "generation"),
        (_damaged(_set(("generation",), 1.5)), "generation"),
        (_damaged(_set(("generation",), True)), "generation"),
        (_damaged(_set(("failover",), "false")), "failover"),
        (_damaged(_set(("failure_reason",), 5)), "failure_reason"),
        (_damaged(_set(("capture",), "all")), "capture"),
        (_damaged(_set(("variants",), {"A": 1})), "variants"),
        (_damaged(_set(("variants",), "AB")), "variants"),
        (_damaged(_set(("variants", 0), None)), "not a routing document"),
        (_damaged(_delete(("variants", 0, "weight"))), "'weight'"),
        (_damaged(_set(("variants", 0, "weight"), "0.25")), "weight"),
        (_damaged(_set(("variants", 0, "weight"), None)), "weight"),
        (
            _damaged(_set(("variants", 0, "strategy"), None)),
            "variant 0's 'strategy' is null, not text",
        ),
        (_damaged(_delete(("variants", 0, "instances"))), "'instances'"),
        (_damaged(_set(("variants", 0, "instances"), 2)), "instances"),
        (_damaged(_delete(("variants", 0, "instances", 0, "address"))), "'address'"),
        (
            _damaged(_set(("variants", 0, "instances", 0, "name"), 1)),
            "variant 0 instance 0's 'name' is a number",
        ),
        (_damaged(_set(("variants", 0, "instances", 0, "healthy"), "no")), "healthy"),
        (_damaged(_set(("variants", 0, "instances", 0, "healthy"), 1)), "healthy"),
        (
            _damaged(_set(("variants", 0, "instances", 1, "pipeline_depth"), "8")),
            "variant 0 instance 1's 'pipeline_depth' is text",
        ),
    ],
)
def test_decode_refuses_damaged_text_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(RoutingDocumentError, match=r"^not a routing document: ") as err:
        decode(text)
    assert problem in str(err.value)


def test_same_table_ignores_weights_health_and_failover() -> None:
    variants = tuple(
        dataclasses.replace(
            variant,
            weight=1.0 - variant.weight,
            instances=tuple(
                dataclasses.replace(i, healthy=not i.healthy) for i in variant.instances
            ),
        )
        for variant in LIVE.variants
    )
    changed = dataclasses.replace(LIVE, variants=variants, failover=not LIVE.failover)
    assert LIVE.same_table(changed)
    assert changed.same_table(LIVE)


def _first_variant(document: RoutingDocument, **changes: Any) -> RoutingDocument:
    first = dataclasses.replace(document.variants[0], **changes)
    return dataclasses.replace(document, variants=(first, *document.variants[1:]))


def _first_instance(document: RoutingDocument, **changes: Any) -> RoutingDocument:
    variant = document.variants[0]
    first = dataclasses.replace(variant.instances[0], **changes)
    return _first_variant(document, instances=(first, *variant.instances[1:]))


@pytest.mark.parametrize(
    "other",
    [
        dataclasses.replace(LIVE, generation=4),
        dataclasses.replace(LIVE, capture=None),
        dataclasses.replace(LIVE, capture={**(LIVE.capture or {}), "sampling_percentage": 10}),
        dataclasses.replace(LIVE, variants=LIVE.variants[:1]),
        dataclasses.replace(LIVE, variants=LIVE.variants[::-1]),
        _first_variant(LIVE, name="C"),
        _first_variant(LIVE, strategy="LEAST_OUTSTANDING_REQUESTS"),
        _first_variant(LIVE, instances=LIVE.variants[0].instances[:1]),
        _first_instance(LIVE, name="ab-A-9"),
        _first_instance(LIVE, address="127.0.0.1:9009"),
        _first_instance(LIVE, pipeline_depth=4),
    ],
    ids=[
        "generation",
        "capture-removed",
        "capture-changed",
        "variant-removed",
        "variants-reordered",
        "variant-renamed",
        "strategy",
        "instance-removed",
        "instance-renamed",
        "instance-moved",
        "instance-pipelining",
    ],
)
def test_same_table_is_false_for_a_new_table(other: RoutingDocument) -> None:
    assert not LIVE.same_table(other)
    assert not other.same_table(LIVE)


SHADOWED = dataclasses.replace(
    LIVE,
    shadows=(
        RoutedVariant(
            name="S",
            weight=0.5,
            strategy="RANDOM",
            instances=(RoutedInstance("ab-S-0", "127.0.0.1:9003", healthy=True),),
        ),
    ),
)


def test_shadows_round_trip_and_a_document_without_them_reads_as_before() -> None:
    assert decode(encode(SHADOWED)) == SHADOWED
    # Without shadows nothing is written for them: an older replica reads the same document.
    assert "shadows" not in raw(LIVE)
    assert decode(encode(LIVE)).shadows == ()


def test_a_damaged_shadow_is_refused_naming_it() -> None:
    damaged = raw(SHADOWED)
    damaged["shadows"][0]["instances"][0]["healthy"] = "yes"
    with pytest.raises(RoutingDocumentError) as refused:
        decode(json.dumps(damaged))
    assert "shadow 0 instance 0's 'healthy' is text, not true or false" in str(refused.value)
    damaged = raw(SHADOWED)
    damaged["shadows"] = {"S": 1}
    with pytest.raises(RoutingDocumentError, match="'shadows' is a JSON object, not a JSON array"):
        decode(json.dumps(damaged))


def test_same_table_sees_a_shadows_instances_but_not_its_weight() -> None:
    reweighted = dataclasses.replace(
        SHADOWED, shadows=(dataclasses.replace(SHADOWED.shadows[0], weight=1.0),)
    )
    assert SHADOWED.same_table(reweighted)
    moved = dataclasses.replace(
        SHADOWED,
        shadows=(
            dataclasses.replace(
                SHADOWED.shadows[0],
                instances=(RoutedInstance("ab-S-0", "127.0.0.1:9004", healthy=True),),
            ),
        ),
    )
    assert not SHADOWED.same_table(moved)
    assert not SHADOWED.same_table(LIVE)
