"""Check control-plane responses against botocore's SageMaker service model.

`check_output(operation, response)` serializes the response as the JSON 1.1 body the gateway would
send, parses it with botocore's own parser against the operation's output shape (what boto3 does),
and walks the response against the shape: every required member present, no member the shape does
not know (except named splitserve extensions), enums and patterns and lengths respected.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from typing import Any

import botocore.session
from botocore import parsers
from botocore.model import ListShape, MapShape, ServiceModel, Shape, StructureShape

#: Members splitserve adds to responses (botocore ignores members it does not know).
EXTENSIONS = frozenset({"DescribeEndpointOutput.ProductionVariants[].Instances"})

#: Required members splitserve leaves out where AWS does too.
OMITTED = frozenset(
    {
        # AWS omits KmsKeyId when the configuration has none (the model marks it required).
        "DescribeEndpointOutput.DataCaptureConfig.KmsKeyId",
    }
)


@functools.cache
def sagemaker_model() -> ServiceModel:
    """botocore's SageMaker service model."""
    return botocore.session.get_session().get_service_model("sagemaker")


def check_output(operation: str, response: dict[str, object]) -> dict[str, Any]:
    """Assert `response` is a valid output of `operation`; return what boto3 would parse from it."""
    output = sagemaker_model().operation_model(operation).output_shape
    if output is None:
        assert response == {}
        return {}
    problems = list(_problems(output, response, output.name))
    assert problems == [], problems
    parser = parsers.create_parser("json")
    body = json.dumps(response).encode()
    parsed: dict[str, Any] = parser.parse({"status_code": 200, "headers": {}, "body": body}, output)
    parsed.pop("ResponseMetadata", None)
    for member in response:
        if f"{output.name}.{member}" not in EXTENSIONS:
            assert member in parsed, member
    return parsed


def _problems(shape: Shape, value: object, path: str) -> Iterator[str]:
    if isinstance(shape, StructureShape):
        if not isinstance(value, dict):
            yield f"{path}: not an object"
            return
        for required in shape.required_members:
            if required not in value and f"{path}.{required}" not in OMITTED:
                yield f"{path}.{required}: missing"
        for member, item in value.items():
            if member not in shape.members:
                if f"{path}.{member}" not in EXTENSIONS:
                    yield f"{path}.{member}: not in the model"
                continue
            yield from _problems(shape.members[member], item, f"{path}.{member}")
    elif isinstance(shape, ListShape):
        if not isinstance(value, list):
            yield f"{path}: not a list"
            return
        yield from _bounds(shape, len(value), path)
        for item in value:
            yield from _problems(shape.member, item, f"{path}[]")
    elif isinstance(shape, MapShape):
        if not isinstance(value, dict):
            yield f"{path}: not a map"
            return
        for item in value.values():
            yield from _problems(shape.value, item, f"{path}{{}}")
    else:
        yield from _scalar_problems(shape, value, path)


def _scalar_problems(shape: Shape, value: object, path: str) -> Iterator[str]:
    kind = shape.type_name
    if kind == "string":
        if not isinstance(value, str):
            yield f"{path}: not a string: {value!r}"
            return
        if shape.enum and value not in shape.enum:
            yield f"{path}: {value!r} not in {shape.enum}"
        pattern = shape.metadata.get("pattern")
        if pattern and "\\p" not in pattern and not re.fullmatch(pattern, value):
            yield f"{path}: {value!r} does not match {pattern}"
        yield from _bounds(shape, len(value), path)
    elif kind == "timestamp":
        if isinstance(value, bool) or not isinstance(value, int | float):
            yield f"{path}: not epoch seconds: {value!r}"
    elif kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            yield f"{path}: not an integer: {value!r}"
            return
        yield from _bounds(shape, value, path)
    elif kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, float):
            yield f"{path}: not a float: {value!r}"
            return
        yield from _bounds(shape, value, path)
    elif kind == "boolean" and not isinstance(value, bool):
        yield f"{path}: not a boolean: {value!r}"


def _bounds(shape: Shape, size: float, path: str) -> Iterator[str]:
    minimum = shape.metadata.get("min")
    maximum = shape.metadata.get("max")
    if minimum is not None and size < minimum:
        yield f"{path}: {size} is under the minimum {minimum}"
    if maximum is not None and size > maximum:
        yield f"{path}: {size} is over the maximum {maximum}"
