"""Bad input to a running gateway: a clear 4xx every time, never a 500, a hang or a crash.

The data plane gets malformed payloads through boto3 and malformed HTTP through a raw socket
(oversized and too many headers, a body trickled a byte at a time); the control plane gets model and
capture locations that try to leave the model store. The gateway must answer each, stay up, keep
its worker, and hold its memory. The control plane's own fuzzing is tests/test_control_fuzz.py.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import psutil
import pytest
from botocore.exceptions import ClientError

from tests.e2e.helpers import FAST_WAIT, csv_rows
from tests.support.gateway import Gateway, running_gateway
from tests.support.models import NUM_FEATURES, ROLE, XGBOOST_IMAGE

pytestmark = pytest.mark.e2e

#: The gateway's body read timeout in these tests (`serve --body-read-timeout`).
BODY_READ_TIMEOUT_SECONDS = 1.0
_GOOD_ROW = csv_rows(np.zeros((1, NUM_FEATURES), dtype=np.float32))
_MAX_PAYLOAD = 6 * 1024 * 1024


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[Gateway]:
    """A gateway serving endpoint `bad` (one XGBoost variant) over a model store of its own, in
    which `s3://escape/...` is a symbolic link to a directory outside it."""
    root = tmp_path_factory.mktemp("bad-input")
    store = root / "store"
    shutil.copytree(model_store / "models" / "v1", store / "models" / "v1")
    outside = root / "outside"
    shutil.copytree(model_store / "models" / "v1", outside)
    (store / "escape").symlink_to(outside, target_is_directory=True)
    with running_gateway(
        root / "state", store, "--body-read-timeout", str(BODY_READ_TIMEOUT_SECONDS)
    ) as running:
        sagemaker = running.client("sagemaker", read_timeout=20)
        sagemaker.create_model(
            ModelName="bad-model",
            ExecutionRoleArn=ROLE,
            PrimaryContainer={
                "Image": XGBOOST_IMAGE,
                "ModelDataUrl": "s3://models/v1/model.tar.gz",
            },
        )
        sagemaker.create_endpoint_config(
            EndpointConfigName="bad-cfg",
            ProductionVariants=[
                {
                    "VariantName": "Only",
                    "ModelName": "bad-model",
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.t2.medium",
                }
            ],
        )
        sagemaker.create_endpoint(EndpointName="bad", EndpointConfigName="bad-cfg")
        sagemaker.get_waiter("endpoint_in_service").wait(EndpointName="bad", WaiterConfig=FAST_WAIT)
        yield running


@pytest.fixture
def runtime(gateway: Gateway) -> Any:
    """A boto3 runtime client, one attempt per call."""
    return gateway.client("sagemaker-runtime", read_timeout=20)


def assert_serving(gateway: Gateway, runtime: Any) -> None:
    """The gateway is up and its worker answers a good request."""
    assert gateway.process.poll() is None, gateway.log()[-3000:]
    answer = runtime.invoke_endpoint(EndpointName="bad", Body=_GOOD_ROW, ContentType="text/csv")
    assert answer["Body"].read()


def raw_exchange(gateway: Gateway, request: bytes, timeout: float = 10.0) -> bytes:
    """Send `request` bytes on a new connection; what comes back until the server closes it
    or stops sending."""
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        # The server may answer and close before it took everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return received


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP response."""
    assert response.startswith(b"HTTP/1."), response[:200]
    return int(response.split(b" ", 2)[1])


def _cells(values: list[str]) -> bytes:
    return (",".join(values) + "\n").encode()


_PAYLOADS = {
    "empty": (b"", "text/csv"),
    "invalid-utf8": (b"\xff\xfe" + _GOOD_ROW, "text/csv"),
    "nan-and-inf": (_cells(["nan", "inf", "-inf", "NaN", *["0"] * (NUM_FEATURES - 4)]), "text/csv"),
    "huge-numbers": (
        _cells(["1e999", "-1e999", "9" * 5000, *["0"] * (NUM_FEATURES - 3)]),
        "text/csv",
    ),
    "100k-columns": (_cells(["1"] * 100_000), "text/csv"),
    "wrong-feature-count": (b"1,2,3\n", "text/csv"),
    "ragged-rows": (_GOOD_ROW + b"1,2\n", "text/csv"),
    "text-in-cells": (_cells(["abc"] * NUM_FEATURES), "text/csv"),
    "wrong-content-type": (_GOOD_ROW, "application/x-splitserve-nope"),
    "malformed-content-type": (_GOOD_ROW, ";;;=\u00e9"),
    "json-garbage": (b'{"instances": [', "application/json"),
    "json-100k-deep": (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    "json-wrong-shape": (b'{"instances": {"a": 1}}', "application/json"),
    "npy-garbage": (b"\x93NUMPY\x01\x00" + b"\xff" * 64, "application/x-npy"),
    "npy-object-array": (
        b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
        + b" " * 52
        + b"\n"
        + b"\x80\x04N.",
        "application/x-npy",
    ),
    "libsvm-garbage": (b"1 a:b c:d\n", "text/libsvm"),
    "libsvm-huge-index": (b"1 99999999999:1\n", "text/libsvm"),
    "binary-noise": (bytes(range(256)) * 64, "text/csv"),
}


@pytest.mark.parametrize("name", sorted(_PAYLOADS))
def test_bad_payloads_get_a_client_error(gateway: Gateway, runtime: Any, name: str) -> None:
    body, content_type = _PAYLOADS[name]
    code = message = None
    try:
        answer = runtime.invoke_endpoint(EndpointName="bad", Body=body, ContentType=content_type)
        answer["Body"].read()
        status = answer["ResponseMetadata"]["HTTPStatusCode"]
    except ClientError as error:
        status = error.response["ResponseMetadata"]["HTTPStatusCode"]
        code = error.response["Error"]["Code"]
        message = error.response["Error"].get("Message", "")
    print(f"{name}: {status} {code or ''} {message or ''}")
    assert status == 200 or code in ("ModelError", "ValidationError"), (status, code)
    assert status == 200 or 400 <= status < 500, status
    # Refused by the worker, not left to hang until the invocation timeout (a ModelError too).
    assert "timed out" not in (message or ""), message
    assert_serving(gateway, runtime)


def test_body_over_6_mib_is_413(gateway: Gateway, runtime: Any) -> None:
    with pytest.raises(ClientError) as too_large:
        runtime.invoke_endpoint(
            EndpointName="bad", Body=b"0" * (_MAX_PAYLOAD + 1), ContentType="text/csv"
        )
    assert too_large.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert too_large.value.response["Error"]["Code"] == "ValidationError"
    assert_serving(gateway, runtime)


def _post(headers: bytes, body: bytes = b"") -> bytes:
    return (
        b"POST /endpoints/bad/invocations HTTP/1.1\r\nHost: gateway\r\n" + headers + b"\r\n" + body
    )


@pytest.mark.parametrize(
    ("name", "request_bytes"),
    [
        ("10k-headers", _post(b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)))),
        ("1-mb-header", _post(b"X-Big: " + b"a" * 1_000_000 + b"\r\n")),
        ("1-mb-url", b"POST /endpoints/" + b"a" * 1_000_000 + b" HTTP/1.1\r\n\r\n"),
        ("not-http", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n"),
        ("bad-method", b"GARBAGE / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("negative-length", _post(b"Content-Length: -1\r\n")),
        ("two-lengths", _post(b"Content-Length: 1\r\nContent-Length: 2\r\n", b"ab")),
        ("length-and-chunked", _post(b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n")),
        (
            "chunked-over-6-mib",
            _post(b"Transfer-Encoding: chunked\r\n", b"%x\r\n" % (_MAX_PAYLOAD + 1))
            + b"0" * (_MAX_PAYLOAD + 1)
            + b"\r\n0\r\n\r\n",
        ),
        ("bad-chunk", _post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nab\r\n0\r\n\r\n")),
        ("header-injection", _post(b"X-Amzn-SageMaker-Target-Variant: Only\r\n Folded: x\r\n")),
        ("target-variant-bad", _post(b"X-Amzn-SageMaker-Target-Variant: ../../x\r\n")),
        ("inference-id-control-chars", _post(b"X-Amzn-SageMaker-Inference-Id: \x01\x02\r\n")),
        ("inference-id-too-long", _post(b"X-Amzn-SageMaker-Inference-Id: " + b"i" * 65 + b"\r\n")),
        (
            "bad-endpoint-name",
            b"POST /endpoints/..%2f..%2fetc/invocations HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        ("no-host", b"POST /endpoints/bad/invocations HTTP/1.1\r\n\r\n"),
    ],
)
def test_malformed_http_gets_a_4xx(
    gateway: Gateway, runtime: Any, name: str, request_bytes: bytes
) -> None:
    status = status_of(raw_exchange(gateway, request_bytes))
    print(f"{name}: {status}")
    assert 400 <= status < 500, (name, status)
    assert_serving(gateway, runtime)


@pytest.mark.parametrize(
    ("name", "header", "body"),
    [
        ("content-type-bad-utf8", b"Content-Type: text/\xff\xfecsv", _GOOD_ROW),
        ("accept-latin-1", b"Accept: caf\xe9", _GOOD_ROW),
        ("custom-attributes-utf8", b"X-Amzn-SageMaker-Custom-Attributes: caf\xc3\xa9", _GOOD_ROW),
        ("sticky-key-bad-utf8", b"X-Splitserve-Sticky-Key: user-\xff", _GOOD_ROW),
        ("gzip-that-is-not", b"Content-Encoding: gzip", _GOOD_ROW),
    ],
)
def test_undecodable_headers_and_bodies_are_a_400_naming_the_header(
    gateway: Gateway, runtime: Any, name: str, header: bytes, body: bytes
) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    request = _post(
        b"Content-Length: %d\r\nConnection: close\r\n%s\r\n" % (len(body), header), body
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        response = b""
        while chunk := sock.recv(65536):  # the gateway closes the connection after its answer
            response += chunk
    assert status_of(response) == 400, (name, response[:300])
    head, _, answer = response.partition(b"\r\n\r\n")
    assert b"x-amzn-errortype: validationerror" in head.lower()
    assert header.split(b":")[0] in answer, answer
    assert_serving(gateway, runtime)


def test_trickled_body_is_cut_off_with_408(gateway: Gateway, runtime: Any) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    body = _GOOD_ROW
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            _post(b"Content-Type: text/csv\r\nContent-Length: %d\r\n" % len(body), body[:1])
        )
        started = perf_counter()
        answer = b""
        sock.setblocking(False)
        # One byte every 100 ms; the gateway must answer before the body is complete.
        for byte in body[1:]:
            time.sleep(0.1)
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            if answer:
                break
            # Meanwhile the gateway serves everyone else.
            assert_serving(gateway, runtime)
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
        answered_after = perf_counter() - started
    assert answer, "the trickled body got no answer"
    assert status_of(answer) == 408
    assert b"RequestTimeout" in answer
    # Cut off at the body read timeout, not before; when exactly after is the host's business (the
    # answer came before the body was complete, or the loop above would have found none).
    assert answered_after >= BODY_READ_TIMEOUT_SECONDS - 0.05
    print(f"trickled body: 408 after {answered_after:.2f} s")


def _rss(gateway: Gateway) -> int:
    rss: int = psutil.Process(gateway.process.pid).memory_info().rss
    return rss


def _bad_burst(gateway: Gateway, runtime: Any) -> None:
    for _ in range(20):
        with pytest.raises(ClientError):
            runtime.invoke_endpoint(
                EndpointName="bad", Body=b"0" * (_MAX_PAYLOAD + 1), ContentType="text/csv"
            )
    for name in sorted(_PAYLOADS) * 3:
        body, content_type = _PAYLOADS[name]
        with contextlib.suppress(ClientError):
            runtime.invoke_endpoint(EndpointName="bad", Body=body, ContentType=content_type)
    for _ in range(20):
        raw_exchange(gateway, _post(b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))))
        raw_exchange(gateway, _post(b"X-Big: " + b"a" * 1_000_000 + b"\r\n"))


def test_memory_stays_bounded_under_bad_requests(gateway: Gateway, runtime: Any) -> None:
    _bad_burst(gateway, runtime)  # warm up: first-use allocations are not a leak
    before = _rss(gateway)
    _bad_burst(gateway, runtime)
    _bad_burst(gateway, runtime)
    after = _rss(gateway)
    print(f"gateway RSS {before / 2**20:.1f} MiB before, {after / 2**20:.1f} MiB after")
    assert after - before < 32 * 2**20
    assert_serving(gateway, runtime)


@pytest.mark.parametrize(
    "url",
    [
        "s3://models/../../etc/passwd",
        "s3://models/v1/../../../outside/model.tar.gz",
        "s3://models//etc/passwd",
        "s3://../etc/passwd",
        "s3:///etc/passwd",
        "s3://escape/model.tar.gz",
        "s3://models/./v1/model.tar.gz",
        "s3://models/v1/model.tar.gz\x00.txt",
        "https://example.com/model.tar.gz",
        "ftp://example.com/model.tar.gz",
        "models/v1/model.tar.gz",
    ],
)
def test_locations_outside_the_model_store_are_refused(gateway: Gateway, url: str) -> None:
    sagemaker = gateway.client("sagemaker", read_timeout=20)
    with pytest.raises(ClientError) as refused:
        sagemaker.create_model(
            ModelName="escape",
            ExecutionRoleArn=ROLE,
            PrimaryContainer={"Image": XGBOOST_IMAGE, "ModelDataUrl": url},
        )
    error = refused.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as refused_capture:
        sagemaker.create_endpoint_config(
            EndpointConfigName="escape-cfg",
            ProductionVariants=[
                {
                    "VariantName": "Only",
                    "ModelName": "bad-model",
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.t2.medium",
                }
            ],
            DataCaptureConfig={
                "InitialSamplingPercentage": 100,
                "DestinationS3Uri": url,
                "CaptureOptions": [{"CaptureMode": "Input"}],
            },
        )
    assert refused_capture.value.response["Error"]["Code"] == "ValidationException"
    listed = sagemaker.list_models(NameContains="escape")["Models"]
    assert listed == []
    assert sagemaker.list_endpoint_configs(NameContains="escape")["EndpointConfigs"] == []
