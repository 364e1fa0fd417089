"""Hostile requests to the control plane over HTTP: always a 4xx that botocore parses, never a 500.

The service-level fuzz (tests/control/test_fuzz.py) calls `ControlService.dispatch` with decoded
JSON. This one goes through the whole HTTP stack of `create_app`: raw bodies that are not JSON,
JSON that Python decodes into NaN, lone surrogates or integers of thousands of digits, nesting deep
enough to break a recursive decoder, megabyte strings, and X-Amz-Target values that name nothing.
Every answer must be a client error whose body botocore's JSON 1.1 parser turns into a code and a
message, and a refused request must leave the List* results as they were.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import botocore.session
import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from botocore.awsrequest import HeadersDict
from botocore.model import ServiceModel
from botocore.parsers import create_parser
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from splitserve.app import create_app
from splitserve.config import Settings
from splitserve.control.shapes import INPUT_SHAPES
from splitserve.wiring import keys
from tests.support.models import XGBOOST_IMAGE

_T = TypeVar("_T")

_OPERATIONS = sorted(INPUT_SHAPES)
_CONTENT_TYPE = "application/x-amz-json-1.1"
_ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"

#: Raw bodies that are not a JSON object, or that Python's json module decodes into values no
#: JSON producer would send (NaN, Infinity, lone surrogates, integers past the digit limit).
_RAW_BODIES = [
    b"{",
    b"}",
    b'{"ModelName": ',
    b'{"ModelName": "m1"',
    b"null",
    b"[]",
    b"[{}]",
    b'"CreateModel"',
    b"0",
    b"1e999",
    b"NaN",
    b"\xff\xfe{}",
    b"\xef\xbb\xbf{}",
    b'{"ModelName": "\xff"}',
    b'{"ModelName": "\\ud800"}',
    b'{"ModelName": "m\\u0000"}',
    b'{"EndpointName": "ep", "DesiredWeightsAndCapacities": '
    b'[{"VariantName": "A", "DesiredWeight": NaN}]}',
    b'{"EndpointName": "ep", "DesiredWeightsAndCapacities": '
    b'[{"VariantName": "A", "DesiredWeight": Infinity}]}',
    b'{"MaxResults": ' + b"9" * 5000 + b"}",
    b'{"MaxResults": -0}',
    b'{"MaxResults": 1e308}',
    b'{"ModelName": "m1", "ModelName": "m2"}',
    b'{"Tags": [{"Key": "splitserve:failover", "Value": "\\ud83d"}]}',
    b"\x00" * 64,
    b" " * 1000,
]

#: Values that reach deep into a validator: wrong types, huge and unusual strings, big numbers.
_HOSTILE_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(
        [
            "",
            "m1",
            "cfg",
            "ep",
            "A",
            "ml.t2.medium",
            "s3://models/../../etc/passwd",
            "s3://models//etc/passwd",
            "\u202egnp.exe",
            "\U0001f4a5" * 70,
            "a" * 64,
            "a" * 5000,
        ]
    )
)
_HOSTILE_VALUES = st.recursive(
    _HOSTILE_LEAVES,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children)
    ),
    max_leaves=6,
)


def _nested(depth: int, *, as_object: bool) -> bytes:
    """JSON nested `depth` deep: lists, or objects keyed "a"."""
    if as_object:
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"[" * depth + b"]" * depth


class ControlPlane:
    """`create_app` on aiohttp's test server, on an event loop of its own, driven from plain code.

    Hypothesis cannot drive an async test, so the loop is run one call at a time with
    `run_until_complete`; state carries over from one example to the next.
    """

    def __init__(self, settings: Settings) -> None:
        self._loop = uvloop.new_event_loop()
        self._app = create_app(settings)
        self._client = self.run(self._start())

    async def _start(self) -> TestClient[web.Request, web.Application]:
        client = TestClient(TestServer(self._app))  # needs the running loop
        await client.start_server()
        return client

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run `coroutine` on the server's loop to its end."""
        return self._loop.run_until_complete(coroutine)

    def post(self, body: bytes, target: str | None) -> tuple[int, dict[str, str], bytes]:
        """POST / with `body` and X-Amz-Target `target` (absent when None)."""
        headers = {"Content-Type": _CONTENT_TYPE}
        if target is not None:
            headers["X-Amz-Target"] = target

        async def send() -> tuple[int, dict[str, str], bytes]:
            data = io.BytesIO(body)  # aiohttp warns about large bytes bodies
            async with self._client.post("/", data=data, headers=headers) as response:
                return response.status, dict(response.headers), await response.read()

        return self.run(send())

    def call(self, operation: str, body: dict[str, object]) -> dict[str, Any]:
        """One operation that must succeed; its output."""
        status, _, answer = self.post(json.dumps(body).encode(), f"SageMaker.{operation}")
        assert status == 200, answer
        result: dict[str, Any] = json.loads(answer)
        return result

    def settle(self) -> None:
        """Wait for the control plane's background work (deployments) to end."""
        self.run(self._app[keys.CONTROLLER].started().settle())

    def state(self) -> dict[str, object]:
        """What the List operations show."""
        return {
            key: self.call(operation, {"MaxResults": 100})[key]
            for operation, key in (
                ("ListModels", "Models"),
                ("ListEndpointConfigs", "EndpointConfigs"),
                ("ListEndpoints", "Endpoints"),
            )
        }

    def close(self) -> None:
        """Stop the server (the app's cleanup contexts run) and close the loop."""
        self.run(self._client.close())
        self._loop.close()


@functools.cache
def _sagemaker_model() -> ServiceModel:
    return botocore.session.get_session().get_service_model("sagemaker")


def assert_client_error(status: int, headers: dict[str, str], body: bytes, operation: str) -> None:
    """A 4xx whose body botocore's JSON 1.1 parser reads as an error code and a message."""
    assert 400 <= status < 500, (status, body[:300])
    model = _sagemaker_model()
    shape_of = operation if operation in _OPERATIONS else "DescribeModel"
    parsed = create_parser("json").parse(
        {"status_code": status, "headers": HeadersDict(headers), "body": body},
        model.operation_model(shape_of).output_shape,
    )
    error = parsed["Error"]
    # Without a __type botocore falls back to the HTTP status as the code.
    assert error["Code"], body[:300]
    assert not error["Code"].isdigit(), body[:300]
    assert error["Message"], body[:300]


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A gateway with model m1, config cfg and endpoint ep (Failed: m1's artifact is absent, so
    no worker ever starts)."""
    root = tmp_path_factory.mktemp("control-fuzz")
    defaults = Settings()
    settings = replace(
        defaults,
        state_dir=root / "state",
        model_store=root / "models",
        workers=replace(defaults.workers, run_dir=root / "state" / "run"),
    )
    plane = ControlPlane(settings)
    try:
        plane.call(
            "CreateModel",
            {
                "ModelName": "m1",
                "ExecutionRoleArn": _ROLE,
                "PrimaryContainer": {
                    "Image": XGBOOST_IMAGE,
                    "ModelDataUrl": "s3://models/absent/model.tar.gz",
                },
            },
        )
        plane.call(
            "CreateEndpointConfig",
            {
                "EndpointConfigName": "cfg",
                "ProductionVariants": [
                    {
                        "VariantName": "A",
                        "ModelName": "m1",
                        "InitialInstanceCount": 1,
                        "InstanceType": "ml.t2.medium",
                    }
                ],
            },
        )
        plane.call("CreateEndpoint", {"EndpointName": "ep", "EndpointConfigName": "cfg"})
        plane.settle()
        yield plane
    finally:
        plane.close()


def _check_refused_or_done(
    plane: ControlPlane, operation: str, send: Callable[[], tuple[int, dict[str, str], bytes]]
) -> None:
    before = plane.state()
    status, headers, body = send()
    if status == 200:
        plane.settle()  # a valid request slipped through; let what it started finish
        return
    assert_client_error(status, headers, body, operation)
    assert plane.state() == before


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, str | None, bytes]:
    operation = draw(st.sampled_from([*_OPERATIONS, "CreateNotebookInstance", "", "createModel"]))
    members = sorted(INPUT_SHAPES[operation].members) if operation in INPUT_SHAPES else ["X"]
    target = draw(
        st.sampled_from([f"SageMaker.{operation}", None, operation, f"sagemaker.{operation}"])
        | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)
    )
    kind = draw(st.integers(0, 3))
    if kind == 0:
        body = draw(st.sampled_from(_RAW_BODIES))
    elif kind == 1:
        body = draw(st.binary(max_size=300))
    elif kind == 2:
        # Deeper nesting and megabyte strings are in the parametrized test below: hypothesis
        # would print examples that large in full.
        depth = draw(st.sampled_from([2, 900, 1000, 5000]))
        body = _nested(depth, as_object=draw(st.booleans()))
        if draw(st.booleans()):
            member = draw(st.sampled_from(members))
            body = b'{"' + member.encode() + b'": ' + body + b"}"
    else:
        document = draw(
            st.dictionaries(st.sampled_from(members) | st.text(max_size=8), _HOSTILE_VALUES)
        )
        body = json.dumps(document).encode()
    return operation, target, body


@hypothesis_settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(hostile=_requests())
def test_hostile_requests_get_a_client_error_and_change_nothing(
    control_plane: ControlPlane, hostile: tuple[str, str | None, bytes]
) -> None:
    operation, target, body = hostile
    _check_refused_or_done(control_plane, operation, lambda: control_plane.post(body, target))


@pytest.mark.parametrize("operation", _OPERATIONS)
@pytest.mark.parametrize(
    "body",
    [
        _nested(100_000, as_object=False),
        _nested(100_000, as_object=True),
        b'{"Tags": ' + _nested(100_000, as_object=False) + b"}",
        json.dumps({"ModelName": "a" * 1_000_000, "EndpointName": "é" * 300_000}).encode(),
        b'{"Tags": [' + b'{"Key": "k", "Value": "v"},' * 20_000 + b"{}]}",
    ],
    ids=["lists-100k-deep", "objects-100k-deep", "member-100k-deep", "megabyte-names", "20k-tags"],
)
def test_every_operation_refuses_deep_and_huge_bodies(
    control_plane: ControlPlane, operation: str, body: bytes
) -> None:
    _check_refused_or_done(
        control_plane, operation, lambda: control_plane.post(body, f"SageMaker.{operation}")
    )


@pytest.mark.parametrize(
    "target", [None, "", "SageMaker.", "SageMaker.Nope", "Sagemaker.ListModels"]
)
def test_unknown_targets(control_plane: ControlPlane, target: str | None) -> None:
    status, headers, body = control_plane.post(b"{}", target)
    assert_client_error(status, headers, body, "ListModels")
    assert headers["x-amzn-RequestId"]
