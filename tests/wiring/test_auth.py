"""SigV4 verification: requests signed by botocore's own `SigV4Auth` pass, anything else is refused
with the code and message AWS gives; the key file; the app and CLI wiring."""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import botocore.session
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HeadersDict
from botocore.credentials import Credentials
from botocore.parsers import create_parser
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from splitserve import cli
from splitserve.app import create_app, signed_routes
from splitserve.config import MAX_PAYLOAD_BYTES, AuthSettings, Settings
from splitserve.errors import (
    InvalidSignatureException,
    MissingAuthenticationToken,
    UnrecognizedClientException,
)
from splitserve.wiring import auth, edge
from splitserve.wiring.auth import (
    AccessKey,
    AuthFileError,
    Principal,
    SigV4Verifier,
    load_access_keys,
)
from splitserve.wiring.boundary import ErrorBoundary, Plane

ACCESS_KEY_ID = "AKIDSPLITSERVE01"
SECRET = "s3cr3t/K7MDENG+bPxRfiCYzEXAMPLEKEYwJalr"
OTHER_ID = "AKIDSPLITSERVE02"
OTHER_SECRET = "an0ther-Secret-Of-The-Second-Key"
SKEW = AuthSettings().max_clock_skew_seconds
MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)
URL = "http://127.0.0.1:8080"
WHEN = datetime.datetime(2025, 3, 1, 12, 0, 0)


@pytest.fixture
def verifier() -> SigV4Verifier:
    """A verifier for two keys whose clock reads WHEN."""
    return SigV4Verifier(
        [AccessKey(ACCESS_KEY_ID, SECRET), AccessKey(OTHER_ID, OTHER_SECRET)],
        max_clock_skew_seconds=SKEW,
        clock=lambda: WHEN.replace(tzinfo=datetime.UTC).timestamp(),
    )


def sign(
    url: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    key: tuple[str, str] = (ACCESS_KEY_ID, SECRET),
    service: str = "sagemaker",
    region: str = "us-east-1",
    when: datetime.datetime = WHEN,
) -> CIMultiDict[str]:
    """The headers botocore's SigV4Auth sends for this request, plus the Host it goes out with."""
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    with mock.patch("botocore.auth.get_current_datetime", return_value=when):
        SigV4Auth(Credentials(*key), service, region).add_auth(request)
    signed: CIMultiDict[str] = CIMultiDict(
        (name, value.decode() if isinstance(value, bytes) else value)
        for name, value in request.headers.items()
    )
    signed["Host"] = urlsplit(url).netloc
    return signed


def check(
    verifier: SigV4Verifier, url: str, body: bytes, headers: CIMultiDict[str], method: str = "POST"
) -> Principal:
    """`verifier.verify` on the request as it arrives at the gateway."""
    parts = urlsplit(url)
    return verifier.verify(method, parts.path, parts.query, headers, body)


_CONTROL = {"X-Amz-Target": "SageMaker.ListEndpoints", "Content-Type": "application/x-amz-json-1.1"}


# --- the verifier, called directly -----------------------------------------------------------


def test_botocore_signatures_pass(verifier: SigV4Verifier) -> None:
    body = b'{"MaxResults": 10}'
    assert check(verifier, f"{URL}/", body, sign(f"{URL}/", body, _CONTROL)) == Principal(
        ACCESS_KEY_ID
    )
    invoke = f"{URL}/endpoints/my-ep/invocations"
    headers = sign(invoke, b"1,2,3\n", {"Content-Type": "text/csv"}, key=(OTHER_ID, OTHER_SECRET))
    assert check(verifier, invoke, b"1,2,3\n", headers) == Principal(OTHER_ID)


# Paths as they go on the wire: already percent-encoded, maybe with dot or empty segments.
_PATH_SEGMENT = st.text(
    alphabet="abcXYZ019-._~!$&'()*+,;=:@%", min_size=0, max_size=8
) | st.sampled_from([".", "..", "%20", "%2F", "a%20b"])
_QUERY_PART = st.text(alphabet="abcXYZ019-._~%+", max_size=6)


@settings(max_examples=150, deadline=None)
@given(
    segments=st.lists(_PATH_SEGMENT, max_size=5),
    trailing_slash=st.booleans(),
    query=st.lists(st.tuples(_QUERY_PART, st.none() | _QUERY_PART), max_size=4),
    body=st.binary(max_size=64),
    attribute=st.text(alphabet=" \tab,c=;", min_size=1, max_size=12).filter(str.strip),
)
def test_any_request_botocore_signs_passes(
    segments: list[str],
    trailing_slash: bool,
    query: list[tuple[str, str | None]],
    body: bytes,
    attribute: str,
) -> None:
    path = "/" + "/".join(segments) + ("/" if trailing_slash and segments else "")
    query_string = "&".join(name if value is None else f"{name}={value}" for name, value in query)
    url = f"{URL}{path}" + (f"?{query_string}" if query_string else "")
    headers = sign(url, body, {"X-Amzn-SageMaker-Custom-Attributes": attribute})
    verifier = SigV4Verifier(
        [AccessKey(ACCESS_KEY_ID, SECRET)],
        max_clock_skew_seconds=SKEW,
        clock=lambda: WHEN.replace(tzinfo=datetime.UTC).timestamp(),
    )
    assert verifier.verify("POST", path, query_string, headers, body) == Principal(ACCESS_KEY_ID)
    with pytest.raises(InvalidSignatureException, match="does not match the signature"):
        verifier.verify("POST", path, query_string, headers, body + b"!")
    with pytest.raises(InvalidSignatureException, match="does not match the signature"):
        verifier.verify("PUT", path, query_string, headers, body)


@pytest.mark.parametrize(
    "tamper",
    [
        "body",
        "path",
        "query",
        "target",
        "host",
    ],
)
def test_any_change_to_a_signed_request_is_refused(verifier: SigV4Verifier, tamper: str) -> None:
    url, body = f"{URL}/?a=1", b'{"EndpointName": "ep"}'
    headers = sign(url, body, _CONTROL)
    if tamper == "body":
        body = b'{"EndpointName": "other"}'
    elif tamper == "path":
        url = f"{URL}/endpoints/ep/invocations?a=1"
    elif tamper == "query":
        url = f"{URL}/?a=2"
    elif tamper == "target":
        headers["X-Amz-Target"] = "SageMaker.DeleteEndpoint"
    else:
        headers["Host"] = "evil.example:8080"
    with pytest.raises(InvalidSignatureException) as refused:
        check(verifier, url, body, headers)
    assert refused.value.message == MISMATCH


def test_wrong_secret(verifier: SigV4Verifier) -> None:
    headers = sign(f"{URL}/", b"{}", _CONTROL, key=(ACCESS_KEY_ID, "not-the-secret"))
    with pytest.raises(InvalidSignatureException) as refused:
        check(verifier, f"{URL}/", b"{}", headers)
    assert refused.value.message == MISMATCH


def test_unknown_access_key(verifier: SigV4Verifier) -> None:
    headers = sign(f"{URL}/", b"{}", _CONTROL, key=("AKIDUNKNOWN", SECRET))
    with pytest.raises(UnrecognizedClientException) as refused:
        check(verifier, f"{URL}/", b"{}", headers)
    assert refused.value.message == "The security token included in the request is invalid."


def test_unsigned_request(verifier: SigV4Verifier) -> None:
    with pytest.raises(MissingAuthenticationToken) as refused:
        check(verifier, f"{URL}/", b"{}", CIMultiDict(_CONTROL))
    assert refused.value.message == "Missing Authentication Token"


def test_expired_and_future_dates(verifier: SigV4Verifier) -> None:
    late = sign(f"{URL}/", b"{}", _CONTROL, when=WHEN - datetime.timedelta(minutes=5, seconds=1))
    with pytest.raises(InvalidSignatureException) as refused:
        check(verifier, f"{URL}/", b"{}", late)
    assert refused.value.message == (
        "Signature expired: 20250301T115459Z is now earlier than 20250301T115500Z "
        "(20250301T120000Z - 5 min.)"
    )
    early = sign(f"{URL}/", b"{}", _CONTROL, when=WHEN + datetime.timedelta(minutes=6))
    with pytest.raises(InvalidSignatureException) as refused:
        check(verifier, f"{URL}/", b"{}", early)
    assert refused.value.message == (
        "Signature not yet current: 20250301T120600Z is still later than 20250301T120500Z "
        "(20250301T120000Z + 5 min.)"
    )
    # Within the skew on either side is fine.
    for minutes in (-5, 5):
        near = sign(f"{URL}/", b"{}", _CONTROL, when=WHEN + datetime.timedelta(minutes=minutes))
        assert check(verifier, f"{URL}/", b"{}", near) == Principal(ACCESS_KEY_ID)


def test_scope_for_another_service(verifier: SigV4Verifier) -> None:
    headers = sign(f"{URL}/", b"{}", _CONTROL, service="sagemaker-runtime")
    with pytest.raises(InvalidSignatureException) as refused:
        check(verifier, f"{URL}/", b"{}", headers)
    assert refused.value.message == "Credential should be scoped to correct service: 'sagemaker'."


def test_scope_date_must_match_the_request_date(verifier: SigV4Verifier) -> None:
    headers = sign(f"{URL}/", b"{}", _CONTROL)
    headers["X-Amz-Date"] = "20250302T000100Z"
    with pytest.raises(InvalidSignatureException) as refused:
        check(verifier, f"{URL}/", b"{}", headers)
    assert refused.value.message == (
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
        "HTTP: '20250301' != '20250302', from '20250302T000100Z'."
    )


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        ("Bearer abc", "accepts only AWS4-HMAC-SHA256"),
        ("AWS4-HMAC-SHA256 Credential=a/b", "requires 'Signature' parameter"),
        (
            "AWS4-HMAC-SHA256 Credential=AKIDSPLITSERVE01/20250301/us-east-1/sagemaker, "
            "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
            "Credential must have the form",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKIDSPLITSERVE01/20250301/us-east-1/sagemaker/aws4_x, "
            "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
            "valid terminator: 'aws4_request', not 'aws4_x'",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKIDSPLITSERVE01/20250301/US EAST/sagemaker/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
            "valid region, not 'US EAST'",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKIDSPLITSERVE01/20250301/us-east-1/sagemaker/aws4_request"
            ", SignedHeaders=x-amz-date, Signature=" + "0" * 64,
            "'Host' must be a 'SignedHeader'",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=AKIDSPLITSERVE01/20250301/us-east-1/sagemaker/aws4_request"
            ", SignedHeaders=host;x-amz-date, Signature=not-hex-ü",
            "does not match the signature",
        ),
    ],
)
def test_malformed_authorization(verifier: SigV4Verifier, authorization: str, message: str) -> None:
    headers = CIMultiDict(
        {"Authorization": authorization, "X-Amz-Date": "20250301T120000Z", "Host": "h"}
    )
    with pytest.raises(InvalidSignatureException, match=message):
        verifier.verify("POST", "/", "", headers, b"")


def test_missing_or_bad_date(verifier: SigV4Verifier) -> None:
    headers = sign(f"{URL}/", b"{}", _CONTROL)
    del headers["X-Amz-Date"]
    with pytest.raises(InvalidSignatureException, match="either a 'X-Amz-Date' or a 'Date'"):
        check(verifier, f"{URL}/", b"{}", headers)
    headers["X-Amz-Date"] = "20251399T000000Z"
    with pytest.raises(InvalidSignatureException, match="not a valid date"):
        check(verifier, f"{URL}/", b"{}", headers)


def test_date_header_instead_of_x_amz_date(verifier: SigV4Verifier) -> None:
    # botocore signs with the Date header when the request already has one.
    headers = sign(f"{URL}/", b"{}", {**_CONTROL, "Date": "Sat, 01 Mar 2025 11:59:00 GMT"})
    assert "X-Amz-Date" not in headers
    assert check(verifier, f"{URL}/", b"{}", headers) == Principal(ACCESS_KEY_ID)


def test_declared_payload_hash_must_match_the_body(verifier: SigV4Verifier) -> None:
    body = b'{"a": 1}'
    declared = {**_CONTROL, "X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()}
    assert check(verifier, f"{URL}/", body, sign(f"{URL}/", body, declared))
    with pytest.raises(InvalidSignatureException, match="x-amz-content-sha256"):
        check(verifier, f"{URL}/", b'{"a": 2}', sign(f"{URL}/", body, declared))
    unsigned = {**_CONTROL, "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}
    with pytest.raises(InvalidSignatureException, match="UNSIGNED-PAYLOAD is not accepted"):
        check(verifier, f"{URL}/", body, sign(f"{URL}/", body, unsigned))


def test_signing_key_is_derived_once_per_key_and_day(
    verifier: SigV4Verifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    derived: list[tuple[str, str, str]] = []
    real = auth.derive_signing_key

    def counting(secret: str, date: str, region: str, service: str) -> bytes:
        derived.append((date, region, service))
        return real(secret, date, region, service)

    monkeypatch.setattr(auth, "derive_signing_key", counting)
    bad = sign(f"{URL}/", b"{}", _CONTROL, key=(ACCESS_KEY_ID, "wrong"))
    for _ in range(2):
        with pytest.raises(InvalidSignatureException):
            check(verifier, f"{URL}/", b"{}", bad)
    assert len(derived) == 2  # a failed request does not cache what it derived
    for seconds in range(3):
        when = WHEN + datetime.timedelta(seconds=seconds)
        check(verifier, f"{URL}/", b"{}", sign(f"{URL}/", b"{}", _CONTROL, when=when))
    assert derived[2:] == [("20250301", "us-east-1", "sagemaker")]
    check(verifier, f"{URL}/", b"{}", sign(f"{URL}/", b"{}", _CONTROL, region="eu-west-1"))
    assert derived[3:] == [("20250301", "eu-west-1", "sagemaker")]


def test_secrets_stay_out_of_repr_and_str(verifier: SigV4Verifier) -> None:
    key = AccessKey(ACCESS_KEY_ID, SECRET)
    for text in (repr(key), str(key), repr(verifier), str(verifier)):
        assert SECRET not in text
        assert OTHER_SECRET not in text
    assert ACCESS_KEY_ID in repr(key)


def test_duplicate_access_key_ids() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        SigV4Verifier([AccessKey("A", "x"), AccessKey("A", "y")], max_clock_skew_seconds=SKEW)


# --- the access-key file ---------------------------------------------------------------------


def write_keys(path: Path, text: str, mode: int = 0o600) -> Path:
    """Write an access-key file with `mode`."""
    path.write_text(text)
    path.chmod(mode)
    return path


KEYS_TOML = f"""
# two keys
[[keys]]
access_key_id = "{ACCESS_KEY_ID}"
secret_access_key = "{SECRET}"

[[keys]]
access_key_id = "{OTHER_ID}"
secret_access_key = "{OTHER_SECRET}"
"""


def test_load_access_keys(tmp_path: Path) -> None:
    keys = load_access_keys(write_keys(tmp_path / "keys.toml", KEYS_TOML))
    assert keys == (AccessKey(ACCESS_KEY_ID, SECRET), AccessKey(OTHER_ID, OTHER_SECRET))
    loaded = SigV4Verifier.from_settings(AuthSettings(keys_file=tmp_path / "keys.toml"))
    assert loaded.access_key_ids == (ACCESS_KEY_ID, OTHER_ID)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o620, 0o604, 0o660])
def test_key_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_keys(tmp_path / "keys.toml", KEYS_TOML, mode)
    with pytest.raises(AuthFileError, match=f"mode {mode:04o}.*chmod 600"):
        load_access_keys(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[keys]\naccess_key_id = 1", "not valid UTF-8 TOML"),
        ("", "has no keys"),
        ("keys = []", "has no keys"),
        ('[[keys]]\naccess_key_id = "A"', r"missing fields \['secret_access_key'\]"),
        (
            f'[[keys]]\naccess_key_id = "A"\nsecret_access_key = "{SECRET}"\nsecret = "{SECRET}"',
            r"unknown fields \['secret'\]",
        ),
        (f'[[keys]]\naccess_key_id = "A/B"\nsecret_access_key = "{SECRET}"', "access_key_id must"),
        ('[[keys]]\naccess_key_id = "A"\nsecret_access_key = ""', "must be a non-empty string"),
        (
            f'[[keys]]\naccess_key_id = "A"\nsecret_access_key = "{SECRET}"\n'
            f'[[keys]]\naccess_key_id = "A"\nsecret_access_key = "{OTHER_SECRET}"',
            "number 2: access key id A is listed twice",
        ),
        (
            f'region = "x"\n[[keys]]\naccess_key_id = "A"\nsecret_access_key = "{SECRET}"',
            "top-level",
        ),
    ],
)
def test_malformed_key_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AuthFileError, match=message) as refused:
        load_access_keys(write_keys(tmp_path / "keys.toml", text))
    assert SECRET not in str(refused.value)
    assert OTHER_SECRET not in str(refused.value)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(AuthFileError, match="cannot read auth file"):
        load_access_keys(tmp_path / "absent.toml")
    with pytest.raises(AuthFileError, match="not a regular file"):
        load_access_keys(tmp_path)
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(AuthFileError, match="not a regular file"):
        load_access_keys(tmp_path / "fifo")


# --- HTTP: the signature check in front of the planes' handlers --------------------------------


async def _echo(request: web.Request) -> web.Response:
    return web.json_response({"read": len(await request.read())})


@pytest.fixture
async def client(
    verifier: SigV4Verifier,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """Both planes' routes, signature-checked, in front of a handler that echoes the body size."""
    app = web.Application()
    control = ErrorBoundary(Plane.CONTROL, MAX_PAYLOAD_BYTES)
    runtime = ErrorBoundary(Plane.RUNTIME, MAX_PAYLOAD_BYTES)
    app.router.add_routes(control.routes(signed_routes([web.post("/", _echo)], verifier)))
    app.router.add_routes(
        runtime.routes(signed_routes([web.post("/endpoints/{name}/invocations", _echo)], verifier))
    )
    app.router.add_routes(control.routes([web.get("/ping", _echo)]))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def _botocore_error(
    protocol: str, service: str, operation: str, status: int, headers: Any, body: bytes
) -> Any:
    model = botocore.session.get_session().get_service_model(service)
    return create_parser(protocol).parse(
        {"status_code": status, "headers": HeadersDict(dict(headers)), "body": body},
        model.operation_model(operation).output_shape,
    )["Error"]


async def test_signed_requests_reach_the_handler(
    client: TestClient[web.Request, web.Application],
) -> None:
    url = str(client.make_url("/endpoints/ep/invocations"))
    response = await client.post(
        "/endpoints/ep/invocations", data=b"1,2", headers=dict(sign(url, b"1,2"))
    )
    assert response.status == 200
    assert await response.json() == {"read": 3}
    unsigned = await client.get("/ping")  # not behind the check
    assert unsigned.status == 200


@pytest.mark.parametrize(
    ("key", "signed", "code"),
    [
        ((ACCESS_KEY_ID, "wrong"), True, "InvalidSignatureException"),
        (("AKIDUNKNOWN", SECRET), True, "UnrecognizedClientException"),
        ((ACCESS_KEY_ID, SECRET), False, "MissingAuthenticationTokenException"),
    ],
)
async def test_refusals_as_botocore_parses_them(
    client: TestClient[web.Request, web.Application],
    key: tuple[str, str],
    signed: bool,
    code: str,
) -> None:
    control_url = str(client.make_url("/"))
    headers = dict(sign(control_url, b"{}", _CONTROL, key=key)) if signed else _CONTROL
    response = await client.post("/", data=b"{}", headers=headers)
    assert response.status == 403
    error = _botocore_error(
        "json", "sagemaker", "ListEndpoints", 403, response.headers, await response.read()
    )
    assert error["Code"] == code

    runtime_url = str(client.make_url("/endpoints/ep/invocations"))
    headers = dict(sign(runtime_url, b"1", key=key)) if signed else {}
    response = await client.post("/endpoints/ep/invocations", data=b"1", headers=headers)
    assert response.status == 403
    error = _botocore_error(
        "rest-json",
        "sagemaker-runtime",
        "InvokeEndpoint",
        403,
        response.headers,
        await response.read(),
    )
    assert error["Code"] == code


def test_create_app_checks_only_the_planes_asked_for(tmp_path: Path) -> None:
    def handlers(settings: Settings) -> dict[str, str]:
        app = create_app(settings)
        # The name of what runs inside the error boundary that create_app wraps around handlers:
        # the plane's own handler, or the signature check in front of it.
        return {
            route.resource.canonical: getattr(route.handler, "__wrapped__", route.handler).__name__
            for route in app.router.routes()
            if route.method == "POST" and route.resource is not None
        }

    keys_file = write_keys(tmp_path / "keys.toml", KEYS_TOML)
    invocations = "/endpoints/{name}/invocations"
    # CloudWatch's handler checks signatures itself (its errors take CloudWatch's form).
    cloudwatch = {"/service/GraniteServiceVersion20100801/operation/{operation}": "cloudwatch_api"}
    # The runtime operations splitserve refuses are data-plane routes like InvokeEndpoint.
    refused = [
        "/endpoints/{name}/async-invocations",
        "/endpoints/{name}/invocations-response-stream",
    ]
    unchecked = dict.fromkeys(refused, "refuse")
    # Feedback is signed whenever the control plane is (README, "Closing the loop").
    feedback = "/splitserve/feedback/{endpoint}"
    off = handlers(Settings(state_dir=tmp_path))
    assert off == {
        "/": "sagemaker_api",
        invocations: "invoke_endpoint",
        **cloudwatch,
        **unchecked,
        feedback: "post_feedback",
    }
    control_only = handlers(Settings(state_dir=tmp_path, auth=AuthSettings(keys_file=keys_file)))
    assert control_only == {
        "/": "checked",
        invocations: "invoke_endpoint",
        **cloudwatch,
        **unchecked,
        feedback: "checked",
    }
    both = handlers(
        Settings(state_dir=tmp_path, auth=AuthSettings(keys_file=keys_file, data_plane=True))
    )
    assert both == {
        "/": "checked",
        invocations: "checked",
        **cloudwatch,
        **dict.fromkeys(refused, "checked"),
        feedback: "checked",
    }


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def run_app(monkeypatch: pytest.MonkeyPatch) -> list[web.Application]:
    """Replace the server's start (`edge.run`): record the app instead of serving it."""
    started: list[web.Application] = []

    def record(app: web.Application, settings: Settings, announce: Any) -> None:
        started.append(app)

    monkeypatch.setattr(edge, "run", record)
    return started


def _serve(*argv: str) -> int:
    args = cli.build_parser().parse_args(["serve", *argv])
    return cli.serve(cli.settings_from_args(args), insecure=args.insecure)


def test_cli_auth_allows_a_public_address(
    tmp_path: Path, run_app: list[web.Application], capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = write_keys(tmp_path / "keys.toml", KEYS_TOML)
    state = ("--state-dir", str(tmp_path / "state"))
    assert _serve("--host", "0.0.0.0", *state) == 2
    assert "--auth FILE" in capsys.readouterr().err
    assert not run_app
    assert _serve("--host", "0.0.0.0", "--auth", str(keys_file), "--auth-data-plane", *state) == 0
    assert len(run_app) == 1


def test_cli_refuses_a_bad_key_file(
    tmp_path: Path, run_app: list[web.Application], capsys: pytest.CaptureFixture[str]
) -> None:
    state = ("--state-dir", str(tmp_path / "state"))
    open_file = write_keys(tmp_path / "keys.toml", KEYS_TOML, 0o644)
    assert _serve("--auth", str(open_file), *state) == 2
    err = capsys.readouterr().err
    assert "chmod 600" in err
    assert SECRET not in err
    assert _serve("--auth-data-plane", *state) == 2
    assert "--auth-data-plane needs --auth FILE" in capsys.readouterr().err
    assert not run_app
