"""`splitserve serve --auth FILE`: real boto3 clients signing with right and wrong keys."""

from __future__ import annotations

import contextlib
import datetime
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import botocore
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.e2e.helpers import FAST_WAIT, create_model, csv_rows
from tests.support.gateway import Gateway, running_gateway, start_gateway

pytestmark = pytest.mark.e2e

ACCESS_KEY_ID = "AKIDE2EAUTH00001"
SECRET = "e2e-Secret/wJalrXUtnFEMI+K7MDENGbPxRfiCY"
OTHER_ID = "AKIDE2EAUTH00002"
OTHER_SECRET = "e2e-Second-Secret-9f8e7d6c5b4a"
KEYS_TOML = f"""
[[keys]]
access_key_id = "{ACCESS_KEY_ID}"
secret_access_key = "{SECRET}"

[[keys]]
access_key_id = "{OTHER_ID}"
secret_access_key = "{OTHER_SECRET}"
"""
MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)


def keys_file(directory: Path) -> Path:
    """The two keys above in a file only its owner may read."""
    path = directory / "keys.toml"
    path.write_text(KEYS_TOML)
    path.chmod(0o600)
    return path


def client(gateway: Gateway, service: str, key_id: str | None, secret: str = "") -> Any:
    """A boto3 client for `service` signing with (key_id, secret); unsigned if key_id is None."""
    config = Config(retries={"mode": "standard", "max_attempts": 1})
    if key_id is None:
        config = config.merge(Config(signature_version=botocore.UNSIGNED))
    return boto3.client(
        service,
        endpoint_url=gateway.url,
        region_name="us-east-1",
        aws_access_key_id=key_id or "unused",
        aws_secret_access_key=secret or "unused",
        config=config,
    )


@pytest.fixture(scope="module")
def signed_gateway(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[Gateway]:
    """A gateway requiring signatures on both planes, logging everything (DEBUG)."""
    directory = tmp_path_factory.mktemp("auth")
    with running_gateway(
        directory / "state",
        model_store,
        "--auth", str(keys_file(directory)), "--auth-data-plane", "--log-level", "DEBUG",
    ) as running:  # fmt: skip
        yield running


def _refused(call: Any) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as refused:
        call()
    response = refused.value.response
    return (
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Code"],
        response["Error"]["Message"],
    )


_WRONG_KEYS = [
    pytest.param((ACCESS_KEY_ID, "not-the-secret"), "InvalidSignatureException", id="wrong-secret"),
    pytest.param(("AKIDNOBODY", SECRET), "UnrecognizedClientException", id="unknown-key"),
    pytest.param((None, ""), "MissingAuthenticationTokenException", id="unsigned"),
]
_MESSAGES = {
    "InvalidSignatureException": MISMATCH,
    "UnrecognizedClientException": "The security token included in the request is invalid.",
    "MissingAuthenticationTokenException": "Missing Authentication Token",
}


def test_right_keys_work_end_to_end(signed_gateway: Gateway) -> None:
    sagemaker = client(signed_gateway, "sagemaker", ACCESS_KEY_ID, SECRET)
    create_model(sagemaker, "auth-m", "v1")
    sagemaker.create_endpoint_config(
        EndpointConfigName="auth-cfg",
        ProductionVariants=[
            {
                "VariantName": "Only",
                "ModelName": "auth-m",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.t2.medium",
            }
        ],
    )
    sagemaker.create_endpoint(EndpointName="auth-ep", EndpointConfigName="auth-cfg")
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName="auth-ep", WaiterConfig=FAST_WAIT)
    body = csv_rows(np.zeros((1, 13), dtype=np.float32))
    for key_id, secret in ((ACCESS_KEY_ID, SECRET), (OTHER_ID, OTHER_SECRET)):
        runtime = client(signed_gateway, "sagemaker-runtime", key_id, secret)
        answer = runtime.invoke_endpoint(EndpointName="auth-ep", Body=body, ContentType="text/csv")
        assert answer["InvokedProductionVariant"] == "Only"
        assert answer["Body"].read()


@pytest.mark.parametrize(("key", "code"), _WRONG_KEYS)
def test_wrong_keys_are_refused_on_both_planes(
    signed_gateway: Gateway, key: tuple[str | None, str], code: str
) -> None:
    sagemaker = client(signed_gateway, "sagemaker", *key)
    assert _refused(sagemaker.list_endpoints) == (403, code, _MESSAGES[code])
    runtime = client(signed_gateway, "sagemaker-runtime", *key)
    invoke = lambda: runtime.invoke_endpoint(EndpointName="auth-ep", Body=b"1")  # noqa: E731
    assert _refused(invoke) == (403, code, _MESSAGES[code])


def test_a_skewed_clock_is_refused(signed_gateway: Gateway) -> None:
    sagemaker = client(signed_gateway, "sagemaker", ACCESS_KEY_ID, SECRET)
    an_hour_ago = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(
        hours=1
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=an_hour_ago):
        status, code, message = _refused(sagemaker.list_endpoints)
    assert (status, code) == (403, "InvalidSignatureException")
    stamp = an_hour_ago.strftime("%Y%m%dT%H%M%SZ")
    assert message.startswith(f"Signature expired: {stamp} is now earlier than ")
    assert message.endswith(" - 5 min.)")


def test_secrets_never_reach_the_log(signed_gateway: Gateway) -> None:
    for key_id, secret in ((ACCESS_KEY_ID, SECRET), (ACCESS_KEY_ID, OTHER_SECRET), ("X", SECRET)):
        sagemaker = client(signed_gateway, "sagemaker", key_id, secret)
        with contextlib.suppress(ClientError):
            sagemaker.list_endpoints()
    log = signed_gateway.log()
    assert "refused POST /" in log  # failures are logged, at INFO
    assert ACCESS_KEY_ID in log  # the ids at start-up; never the secrets
    for secret in (SECRET, OTHER_SECRET):
        for start in range(0, len(secret) - 8):
            assert secret[start : start + 8] not in log


def test_data_plane_stays_open_without_its_switch(tmp_path: Path, model_store: Path) -> None:
    gateway = start_gateway(tmp_path / "state", model_store, "--auth", str(keys_file(tmp_path)))
    try:
        unsigned = client(gateway, "sagemaker-runtime", None)
        invoke = lambda: unsigned.invoke_endpoint(EndpointName="nope", Body=b"1")  # noqa: E731
        status, code, _ = _refused(invoke)
        assert (status, code) == (400, "ValidationError")  # past the (absent) check
        sagemaker = client(gateway, "sagemaker", None)
        assert _refused(sagemaker.list_endpoints)[:2] == (
            403,
            "MissingAuthenticationTokenException",
        )
    finally:
        gateway.stop()


def test_a_key_file_others_can_read_stops_the_start(tmp_path: Path) -> None:
    path = keys_file(tmp_path)
    path.chmod(0o644)
    finished = subprocess.run(
        [sys.executable, "-m", "splitserve.cli", "serve", "--port", "1",
         "--state-dir", str(tmp_path / "state"), "--auth", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert finished.returncode == 2
    assert f"chmod 600 {path}" in finished.stderr
    assert SECRET not in finished.stdout + finished.stderr
