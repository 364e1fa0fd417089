"""Arbitrary input into every CloudWatch operation, through each protocol's decoder and the
service: only CloudWatch's client errors come out (never an InternalServiceError or a crash)."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import cbor2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from splitserve.cloudwatch import routes as cloudwatch_routes
from splitserve.cloudwatch.protocols import SERVICE_PATH_PREFIX, WireProtocol, decode
from splitserve.cloudwatch.shapes import OPERATIONS
from splitserve.errors import SplitserveError, wire_error
from tests.cloudwatch.conftest import StoredWorld, open_stored_world
from tests.support.clock import NOON
from tests.support.fuzz import json_slots

_DIMENSIONS = [{"Name": "EndpointName", "Value": "ep"}, {"Name": "VariantName", "Value": "A"}]
_METRIC = {"Namespace": "AWS/SageMaker", "MetricName": "Invocations", "Dimensions": _DIMENSIONS}
_VALID: dict[str, dict[str, Any]] = {
    "GetMetricStatistics": {
        **_METRIC, "StartTime": NOON - 600, "EndTime": NOON, "Period": 60,
        "Statistics": ["Sum"], "ExtendedStatistics": ["p99"],
    },
    "GetMetricData": {
        "MetricDataQueries": [
            {"Id": "q", "MetricStat": {"Metric": _METRIC, "Period": 60, "Stat": "p50"}}
        ],
        "StartTime": NOON - 600, "EndTime": NOON, "MaxDatapoints": 3,
    },
    "ListMetrics": {"Namespace": "AWS/SageMaker", "Dimensions": [{"Name": "VariantName"}]},
    "PutMetricAlarm": {
        **_METRIC, "AlarmName": "fuzz", "Statistic": "Sum", "Period": 60, "EvaluationPeriods": 2,
        "DatapointsToAlarm": 1, "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "breaching",
    },
    "DescribeAlarms": {"AlarmNamePrefix": "f", "StateValue": "OK", "MaxRecords": 2},
    "DescribeAlarmsForMetric": {**_METRIC, "Period": 60},
    "DeleteAlarms": {"AlarmNames": ["fuzz"]},
    "SetAlarmState": {"AlarmName": "fuzz", "StateValue": "ALARM", "StateReason": "x"},
    "DescribeAlarmHistory": {"AlarmName": "fuzz", "StartDate": 0, "EndDate": NOON},
}  # fmt: skip
_PLAUSIBLE = st.sampled_from(
    ["", "fuzz", "Sum", "p99", "p100", "AWS/SageMaker", "EndpointName", "OK", 0, 1, -1, 60,
     1e308, 10**12, True, [], {}, NOON]
)  # fmt: skip
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
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def _bodies(draw: st.DrawFn, operation: str) -> dict[str, Any]:
    if draw(st.integers(0, 4)) == 0:
        members = sorted(OPERATIONS[operation].members)
        return draw(
            st.dictionaries(st.sampled_from(members) | st.text(max_size=8), _VALUES, max_size=5)
        )
    body = copy.deepcopy(_VALID[operation])
    for _ in range(draw(st.integers(0, 3))):
        slots = list(json_slots(body))
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        if isinstance(container, dict) and draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(_VALUES)
    return body


@pytest.fixture
async def fuzzed(tmp_path: Path) -> AsyncIterator[StoredWorld]:
    """A stored world with an alarm and some traffic."""
    world = open_stored_world(tmp_path / "state.sqlite3")
    ring = world.minutes.variant("ep", "A")
    for _ in range(3):
        ring.count_invocation()
        ring.observe_latency(0.01)
    await world.gateway.service.dispatch("PutMetricAlarm", _VALID["PutMetricAlarm"])
    try:
        yield world
    finally:
        await world.gateway.close()


@hypothesis_settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_only_client_errors_escape(fuzzed: StoredWorld, data: st.DataObject) -> None:
    operation = data.draw(st.sampled_from(sorted(OPERATIONS)))
    body = data.draw(_bodies(operation))
    protocol = data.draw(st.sampled_from(list(WireProtocol)))
    if protocol is WireProtocol.CBOR:
        raw = cbor2.dumps(body)
        path, headers = SERVICE_PATH_PREFIX + operation, {}
    elif protocol is WireProtocol.JSON:
        # NaN and Infinity included, as a hostile client may send them.
        raw = json.dumps(body).encode()
        path, headers = "/", {"X-Amz-Target": f"GraniteServiceVersion20100801.{operation}"}
    else:
        flat = {"Action": operation, "Version": "2010-08-01"}
        flat.update({key: str(value) for key, value in body.items()})
        raw = urlencode(flat).encode()
        path, headers = "/", {}
    refused: SplitserveError | None = None
    try:
        decoded = decode(protocol, path, headers, raw)
        await fuzzed.gateway.service.dispatch(decoded.operation, decoded.params)
    except SplitserveError as error:
        refused = error
    if refused is not None:
        assert refused.message
        assert wire_error(refused).status < 500, refused
    await fuzzed.gateway.alarms.evaluate()


@hypothesis_settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_undecodable_bodies_are_client_errors(raw: bytes) -> None:
    for protocol, path in (
        (WireProtocol.CBOR, SERVICE_PATH_PREFIX + "GetMetricData"),
        (WireProtocol.JSON, "/"),
        (WireProtocol.QUERY, "/"),
    ):
        headers = {"X-Amz-Target": "GraniteServiceVersion20100801.ListMetrics"}
        refused: SplitserveError | None = None
        try:
            decode(protocol, path, headers, raw)
        except SplitserveError as error:
            refused = error
        assert refused is None or wire_error(refused).status < 500


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}
_TARGET = {"X-Amz-Target": "GraniteServiceVersion20100801.ListMetrics"}
_QUERY = b"Version=2010-08-01&Action="


@pytest.mark.parametrize(
    ("path", "headers", "body", "code"),
    [
        (SERVICE_PATH_PREFIX + "GetMetricData", {}, b"\xff\x00", "SerializationException"),
        (SERVICE_PATH_PREFIX + "PutMetricData", {}, b"", "UnknownOperationException"),
        (SERVICE_PATH_PREFIX + "ListMetrics", {}, cbor2.dumps([1]), "SerializationException"),
        (SERVICE_PATH_PREFIX + "ListMetrics", {}, b"\x9f" * 100_000, "SerializationException"),
        ("/", _TARGET, b"[", "SerializationException"),
        ("/", _FORM, b"Version=2010-08-01", "MissingParameter"),
        ("/", _FORM, b"Action=ListMetrics&Version=1", "InvalidParameterValue"),
        ("/", _FORM, _QUERY + b"Nope", "InvalidAction"),
        ("/", _FORM, _QUERY + b"DeleteAlarms&AlarmNames.member.2=x", "InvalidParameterValue"),
        ("/", _FORM, _QUERY + b"DeleteAlarms&AlarmNames.member.x=y", "InvalidParameterValue"),
        (
            "/",
            _FORM,
            _QUERY + b"SetAlarmState&AlarmName=%01&StateValue=OK&StateReason=",
            "ResourceNotFound",
        ),
    ],
)
async def test_hostile_requests_get_cloudwatch_errors(
    fuzzed: StoredWorld, path: str, headers: dict[str, str], body: bytes, code: str
) -> None:
    app = web.Application()
    app.router.add_routes(cloudwatch_routes.routes(fuzzed.gateway.service, None, 1024 * 1024))
    app.router.add_post("/", cloudwatch_routes.handler(fuzzed.gateway.service, None, 1024 * 1024))
    async with TestClient(TestServer(app)) as client:
        response = await client.post(path, data=body, headers=headers)
        answer = await response.read()
    assert 400 <= response.status < 500
    if path == "/" and "X-Amz-Target" not in headers:
        assert f"<Code>{code}</Code>".encode() in answer
        assert b"\x01" not in answer  # the XML stays parseable
    else:
        assert response.headers["x-amzn-query-error"].startswith(f"{code};Sender")
