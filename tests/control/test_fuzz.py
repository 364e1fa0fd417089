"""Arbitrary JSON into every operation: only client errors come out, and failures change nothing."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from splitserve.config import Settings
from splitserve.control.service import ControlService
from splitserve.control.shapes import INPUT_SHAPES
from splitserve.errors import SplitserveError
from tests.control.conftest import (
    RecordingDeployer,
    dump_state,
    model_body,
    open_service,
    two_variant_endpoint,
    variant,
)
from tests.support.fuzz import json_slots

#: Strings that pass some checks, so mutated requests get deep into the service.
_PLAUSIBLE_TEXT = [
    "ab",
    "ab-cfg",
    "m1",
    "A",
    "B",
    "InService",
    "Name",
    "ml.m5.large",
    "s3://bucket/model.tar.gz",
    "s3://bucket/../x",
    "file:///tmp/x",
    "ALL_AT_ONCE",
    "DesiredWeight",
    "arn:aws:sagemaker:us-east-1:123456789012:endpoint/ab",
    "arn:aws:sagemaker:us-east-1:123456789012:model/m1",
    "splitserve:failover",
    "true",
    "aws:x",
    "",
]
_PLAUSIBLE = st.sampled_from(
    [
        *_PLAUSIBLE_TEXT,
        0,
        1,
        2,
        -1,
        0.5,
        1e308,
        10**12,
        True,
        [],
        {},
    ]
)
_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | _PLAUSIBLE
)
_VALUES = st.recursive(
    _LEAVES,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.text(max_size=8) | st.sampled_from(_PLAUSIBLE_TEXT),
            children,
            max_size=3,
        )
    ),
    max_leaves=8,
)

_VALID: dict[str, dict[str, object]] = {
    "CreateModel": model_body("fuzz-model"),
    "DescribeModel": {"ModelName": "m1"},
    "DeleteModel": {"ModelName": "m2"},
    "ListModels": {
        "SortBy": "Name",
        "SortOrder": "Ascending",
        "MaxResults": 1,
        "NameContains": "m",
    },
    "CreateEndpointConfig": {
        "EndpointConfigName": "fuzz-cfg",
        "ProductionVariants": [variant("A", "m1"), variant("B", "m2", weight=0)],
        "DataCaptureConfig": {
            "InitialSamplingPercentage": 10,
            "DestinationS3Uri": "s3://capture/fuzz",
            "CaptureOptions": [{"CaptureMode": "Input"}],
        },
    },
    "DescribeEndpointConfig": {"EndpointConfigName": "ab-cfg"},
    "DeleteEndpointConfig": {"EndpointConfigName": "ab-cfg"},
    "ListEndpointConfigs": {"CreationTimeAfter": 0, "MaxResults": 5},
    "CreateEndpoint": {"EndpointName": "fuzz-ep", "EndpointConfigName": "ab-cfg"},
    "DescribeEndpoint": {"EndpointName": "ab"},
    "ListEndpoints": {
        "StatusEquals": "InService",
        "SortBy": "Status",
        "LastModifiedTimeBefore": 1e10,
    },
    "UpdateEndpoint": {
        "EndpointName": "ab",
        "EndpointConfigName": "ab-cfg",
        "RetainAllVariantProperties": True,
        "ExcludeRetainedVariantProperties": [{"VariantPropertyType": "DesiredWeight"}],
        "DeploymentConfig": {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}
            }
        },
    },
    "UpdateEndpointWeightsAndCapacities": {
        "EndpointName": "ab",
        "DesiredWeightsAndCapacities": [
            {"VariantName": "A", "DesiredWeight": 2, "DesiredInstanceCount": 2}
        ],
    },
    "DeleteEndpoint": {"EndpointName": "ab"},
    "AddTags": {
        "ResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/ab",
        "Tags": [{"Key": "splitserve:failover", "Value": "true"}, {"Key": "team", "Value": "ml"}],
    },
    "ListTags": {
        "ResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/ab-cfg",
        "MaxResults": 50,
    },
    "DeleteTags": {
        "ResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:model/m1",
        "TagKeys": ["team", "splitserve:failover"],
    },
}


@st.composite
def _bodies(draw: st.DrawFn, operation: str) -> dict[str, object]:
    if operation not in _VALID or draw(st.integers(0, 4)) == 0:
        members = sorted(INPUT_SHAPES.get(operation, INPUT_SHAPES["ListModels"]).members)
        keys = st.sampled_from(members) | st.text(max_size=8)
        return draw(st.dictionaries(keys, _VALUES, max_size=5))
    body = copy.deepcopy(_VALID[operation])
    for _ in range(draw(st.integers(0, 3))):
        slots = list(json_slots(body))
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        if isinstance(container, dict):
            assert isinstance(key, str)
            if draw(st.booleans()):
                del container[key]
            else:
                container[key] = draw(_VALUES)
        else:
            assert isinstance(key, int)
            container[key] = draw(_VALUES)
    if draw(st.booleans()):
        body[draw(st.text(max_size=8))] = draw(_VALUES)
    return body


@pytest.fixture
async def prepared(settings: Settings) -> AsyncIterator[ControlService]:
    """A service with models m1 and m2 and endpoint ab (variants A and B) InService."""
    service = await open_service(settings, RecordingDeployer())
    try:
        await two_variant_endpoint(service, settings)
        yield service
    finally:
        await service.close()


@hypothesis_settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_only_client_errors_escape_and_failures_change_nothing(
    prepared: ControlService, settings: Settings, data: st.DataObject
) -> None:
    operation = data.draw(st.sampled_from([*sorted(INPUT_SHAPES), "CreateNotebookInstance"]))
    body = data.draw(_bodies(operation))
    before = dump_state(settings)
    try:
        await prepared.dispatch(operation, body)
    except SplitserveError as error:
        refused: SplitserveError | None = error
    else:
        refused = None
    if refused is not None:
        assert refused.message
        assert dump_state(settings) == before
    await prepared.settle()
