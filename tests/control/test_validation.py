"""The input shapes in shapes.py agree with botocore's service model; the walker's messages."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
from botocore.model import ListShape as BotoList
from botocore.model import MapShape as BotoMap
from botocore.model import Shape as BotoShape
from botocore.model import StructureShape as BotoStructure

from splitserve.control import validation
from splitserve.control.schema import (
    BooleanShape,
    FloatShape,
    IntegerShape,
    ListShape,
    MapShape,
    Shape,
    StringShape,
    StructureShape,
    TimestampShape,
)
from splitserve.control.shapes import INPUT_SHAPES
from splitserve.control.validation import (
    describe_value,
    validate_request,
)
from splitserve.errors import ValidationException
from tests.control.shapes import sagemaker_model

_TYPES: dict[type[object], str] = {
    StringShape: "string",
    IntegerShape: "integer",
    FloatShape: "float",
    BooleanShape: "boolean",
    TimestampShape: "timestamp",
    ListShape: "list",
    MapShape: "map",
    StructureShape: "structure",
}


def _differences(ours: Shape, theirs: BotoShape, path: str) -> Iterator[str]:
    """Where our copy of a shape differs from botocore's (beyond what `relaxed` declares)."""
    if ours.name != theirs.name:
        yield f"{path}: named {ours.name}, the model says {theirs.name}"
    if _TYPES[type(ours)] != theirs.type_name:
        yield f"{path}: {_TYPES[type(ours)]} here, {theirs.type_name} in the model"
        return
    metadata = theirs.metadata
    relaxed: frozenset[str] = getattr(ours, "relaxed", frozenset())
    if isinstance(ours, StringShape):
        expected = {
            "min_length": metadata.get("min", 0),
            "max_length": metadata.get("max"),
            "pattern": metadata.get("pattern"),
            "enum": tuple(theirs.enum) if theirs.enum else None,
        }
        actual = {
            "min_length": ours.min_length,
            "max_length": ours.max_length,
            "pattern": ours.pattern,
            "enum": ours.enum,
        }
        for key, value in expected.items():
            if actual[key] != value and key.split("_")[0] not in relaxed and key not in relaxed:
                yield f"{path}: {key} {actual[key]!r}, the model says {value!r}"
    elif isinstance(ours, IntegerShape):
        if ours.minimum != metadata.get("min") and "minimum" not in relaxed:
            yield f"{path}: minimum {ours.minimum}, the model says {metadata.get('min')}"
        if ours.maximum != metadata.get("max"):
            yield f"{path}: maximum {ours.maximum}, the model says {metadata.get('max')}"
    elif isinstance(ours, FloatShape):
        if ours.minimum != metadata.get("min"):
            yield f"{path}: minimum {ours.minimum}, the model says {metadata.get('min')}"
    elif isinstance(ours, ListShape):
        assert isinstance(theirs, BotoList)
        if ours.min_length != metadata.get("min", 0) or ours.max_length != metadata.get("max"):
            yield f"{path}: length {ours.min_length}..{ours.max_length}, the model says {metadata}"
        yield from _differences(ours.member, theirs.member, f"{path}[]")
    elif isinstance(ours, MapShape):
        assert isinstance(theirs, BotoMap)
        if ours.max_length != metadata.get("max"):
            yield f"{path}: max {ours.max_length}, the model says {metadata.get('max')}"
        yield from _differences(ours.key, theirs.key, f"{path}{{key}}")
        yield from _differences(ours.value, theirs.value, f"{path}{{value}}")
    elif isinstance(ours, StructureShape):
        assert isinstance(theirs, BotoStructure)
        known = set(ours.members) | set(ours.unsupported)
        if known != set(theirs.members):
            yield f"{path}: members {sorted(known ^ set(theirs.members))} differ from the model"
        if set(ours.required) != set(theirs.required_members):
            yield f"{path}: required {sorted(ours.required)} != {theirs.required_members}"
        for member, shape in ours.members.items():
            if member in theirs.members:
                yield from _differences(shape, theirs.members[member], f"{path}.{member}")


@pytest.mark.parametrize("operation", sorted(INPUT_SHAPES))
def test_input_shapes_match_the_service_model(operation: str) -> None:
    theirs = sagemaker_model().operation_model(operation).input_shape
    assert list(_differences(INPUT_SHAPES[operation], theirs, operation)) == []


def test_the_instance_catalog_replaces_a_real_enum() -> None:
    enum = sagemaker_model().shape_for("ProductionVariantInstanceType").enum
    assert "ml.m5.large" in enum
    assert "ml.t3.medium" not in enum  # the reference's warning: no t3 in the hosting enum


def test_messages_join_every_violation() -> None:
    with pytest.raises(ValidationException) as refused:
        validate_request(
            "ListEndpoints", {"MaxResults": 0, "SortOrder": "Sideways", "NameContains": "a b"}
        )
    assert refused.value.message == (
        "3 validation errors detected: "
        "Value 'Sideways' at 'sortOrder' failed to satisfy constraint: Member must satisfy enum "
        "value set: [Ascending, Descending]; "
        "Value '0' at 'maxResults' failed to satisfy constraint: Member must have value greater "
        "than or equal to 1; "
        "Value 'a b' at 'nameContains' failed to satisfy constraint: Member must satisfy regular "
        "expression pattern: [a-zA-Z0-9-]+"
    )


@pytest.mark.parametrize(
    ("value", "constraint"),
    [
        (5, "Member must be of type string"),
        (True, "Member must be of type string"),
        ({"a": 1}, "Member must be of type string"),
        ("\ud800", "Member must be a valid Unicode string"),
    ],
)
def test_wrong_types_name_the_member(value: object, constraint: str) -> None:
    with pytest.raises(ValidationException) as refused:
        validate_request("DescribeEndpoint", {"EndpointName": value})
    assert f"at 'endpointName' failed to satisfy constraint: {constraint}" in refused.value.message


def test_numbers() -> None:
    body = {
        "EndpointName": "e",
        "DesiredWeightsAndCapacities": [
            {"VariantName": "A", "DesiredWeight": 10**400},
            {"VariantName": "B", "DesiredWeight": True},
            {"VariantName": "C", "DesiredInstanceCount": 2**31},
            {"VariantName": "D", "DesiredInstanceCount": 1.0},
            {"VariantName": "E", "DesiredWeight": math.inf},
        ],
    }
    with pytest.raises(ValidationException) as refused:
        validate_request("UpdateEndpointWeightsAndCapacities", body)
    message = refused.value.message
    assert message.startswith("5 validation errors detected: ")
    assert (
        "Value '1e30+' at 'desiredWeightsAndCapacities.1.member.desiredWeight' failed to "
        in message
    )
    assert (
        "'desiredWeightsAndCapacities.2.member.desiredWeight' failed to satisfy constraint: "
        "Member must be of type number" in message
    )
    assert "Member must have value less than or equal to 2147483647" in message
    assert (
        "'desiredWeightsAndCapacities.4.member.desiredInstanceCount' failed to satisfy "
        "constraint: Member must be of type integer" in message
    )
    assert "Value 'inf' at 'desiredWeightsAndCapacities.5.member.desiredWeight'" in message


def test_normalizes_what_it_keeps() -> None:
    request = validate_request(
        "UpdateEndpointWeightsAndCapacities",
        {
            "EndpointName": "e",
            "DesiredWeightsAndCapacities": [{"VariantName": "A", "DesiredWeight": 2, "Extra": 1}],
            "Unknown": None,
        },
    )
    assert request == {
        "EndpointName": "e",
        "DesiredWeightsAndCapacities": [{"VariantName": "A", "DesiredWeight": 2.0}],
    }
    assert isinstance(request["DesiredWeightsAndCapacities"][0]["DesiredWeight"], float)  # type: ignore[index]
    listed = validate_request("ListModels", {"CreationTimeAfter": "2024-01-02T03:04:05Z"})
    assert listed["CreationTimeAfter"] == 1704164645.0


def test_unicode_tags_match_the_java_pattern() -> None:
    tags = [{"Key": "équipe", "Value": "données 1+1=2"}]
    validate_request(
        "CreateEndpoint", {"EndpointName": "e", "EndpointConfigName": "c", "Tags": tags}
    )
    with pytest.raises(ValidationException, match=r"at 'tags\.1\.member\.value'"):
        validate_request(
            "CreateEndpoint",
            {
                "EndpointName": "e",
                "EndpointConfigName": "c",
                "Tags": [{"Key": "k", "Value": "a;b"}],
            },
        )


def test_describe_value_stays_short_and_safe() -> None:
    nested: object = []
    for _ in range(10_000):
        nested = [nested]
    assert describe_value(nested) == "'[[[...]]]'"
    assert len(describe_value("x" * 10_000)) == validation._MAX_VALUE_CHARS + 2
    assert describe_value(None) == "null"
    assert describe_value(False) == "'false'"
    assert describe_value({"k": [1, 2.5, None]}) == "'{k=[1, 2.5, null]}'"
    json.dumps(describe_value({"k": [1, 2.5, None]}))  # a plain str: it goes into JSON as is
