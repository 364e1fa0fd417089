"""The gateway with its state in PostgreSQL (`--state postgresql://...`), end to end: boto3's
control plane and data plane, a restart that recovers the endpoint from the database, a database
that goes away (503 on the control plane, InvokeEndpoint served throughout) and comes back, and
the start-up refusals of a bad URL or an unreachable server (exit code 2); and an SQLite state
file named by URL outside the state directory."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from botocore.exceptions import ClientError

from tests.e2e.helpers import FAST_WAIT, create_two_variant_endpoint, csv_rows, invoke_many
from tests.support.gateway import running_gateway
from tests.support.http import free_port
from tests.support.models import NUM_FEATURES
from tests.support.postgres import running_server

pytestmark = pytest.mark.e2e

_T = TypeVar("_T")

_BODY = csv_rows(np.zeros((1, NUM_FEATURES), dtype=np.float32))


def _until(check: Callable[[], _T], timeout: float) -> _T:
    """Poll `check` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(0.1)


def test_control_plane_on_postgres_survives_a_restart(
    tmp_path: Path, model_store: Path, postgres_url: str
) -> None:
    with running_gateway(tmp_path / "first", model_store, "--state", postgres_url) as first:
        create_two_variant_endpoint(first.client("sagemaker"), "pg")
        seen = invoke_many(first.client("sagemaker-runtime"), "pg", _BODY, 10)
        assert sum(seen.values()) == 10
    # Another state directory: everything the control plane knows comes from the database.
    with running_gateway(tmp_path / "second", model_store, "--state", postgres_url) as second:
        sagemaker = second.client("sagemaker")
        assert {model["ModelName"] for model in sagemaker.list_models()["Models"]} == {
            "pg-m1",
            "pg-m2",
        }
        sagemaker.get_waiter("endpoint_in_service").wait(EndpointName="pg", WaiterConfig=FAST_WAIT)
        seen = invoke_many(second.client("sagemaker-runtime"), "pg", _BODY, 10)
        assert set(seen) <= {"Variant1", "Variant2"}
        assert sum(seen.values()) == 10


def test_postgres_stopped_answers_503_while_invocations_go_on(
    tmp_path: Path, model_store: Path
) -> None:
    """PostgreSQL stopped and started again under traffic: no invocation fails, the control
    plane answers 503 meanwhile (never a hang or a 500), and works again once it is back."""
    # A server of its own: this test stops it.
    with (
        running_server() as server,
        running_gateway(tmp_path / "state", model_store, "--state", server.create_database()) as gw,
    ):
        sagemaker = gw.client("sagemaker", read_timeout=60)
        create_two_variant_endpoint(sagemaker, "ab")
        traffic = _Traffic(gw.client("sagemaker-runtime"))
        traffic.start()
        try:
            server.stop()
            try:
                with pytest.raises(ClientError) as refused:
                    sagemaker.list_models()
                error: Any = refused.value.response
                assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
                assert error["Error"]["Code"] == "ServiceUnavailable"
                assert "state database" in error["Error"]["Message"]
                with pytest.raises(ClientError) as refused:
                    sagemaker.create_model(
                        ModelName="late",
                        ExecutionRoleArn="arn:aws:iam::123456789012:role/r",
                        PrimaryContainer={"Image": "x"},
                    )
                assert refused.value.response["Error"]["Code"] == "ServiceUnavailable"
            finally:
                server.start()
            models = _until(lambda: _models(sagemaker), 30)
            assert models == {"ab-m1", "ab-m2"}
            assert sagemaker.describe_endpoint(EndpointName="ab")["EndpointStatus"] == "InService"
        finally:
            traffic.stop()
        # The data plane routed with what it had throughout.
        assert traffic.failures == []
        assert traffic.answered > 0
        print(f"{traffic.answered} invocations while PostgreSQL was stopped and started, 0 failed")


class _Traffic(threading.Thread):
    """Invocations of endpoint "ab", one after another, until `stop`."""

    def __init__(self, runtime: Any) -> None:
        super().__init__(daemon=True)
        self._runtime = runtime
        self._stopping = threading.Event()
        self.answered = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                invoke_many(self._runtime, "ab", _BODY, 1)
                self.answered += 1
            except ClientError as error:
                self.failures.append(str(error))

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def _models(sagemaker: Any) -> set[str] | None:
    try:
        return {model["ModelName"] for model in sagemaker.list_models()["Models"]}
    except ClientError:
        return None


def _serve(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "splitserve.cli", "serve", "--port", str(free_port()),
            "--state-dir", str(tmp_path / "state"), *arguments,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/state", "has scheme 'mysql'"),
        ("sqlite://relative.sqlite3", "names no absolute file"),
        ("postgresql://alice:s3cret@/state", "names no host"),
    ],
)
def test_a_bad_state_url_exits_2_naming_it(tmp_path: Path, url: str, message: str) -> None:
    result = _serve(tmp_path, "--state", url)
    assert result.returncode == 2
    assert "--state" in result.stderr
    assert message in result.stderr
    assert "s3cret" not in result.stderr


def test_an_unreachable_state_database_exits_2(tmp_path: Path) -> None:
    port = free_port()
    result = _serve(tmp_path, "--state", f"postgresql://alice:s3cret@127.0.0.1:{port}/state")
    assert result.returncode == 2, result.stderr
    assert f"postgresql://alice@127.0.0.1:{port}/state is unavailable" in result.stderr
    assert "Connection refused" in result.stderr  # libpq's reason, for the operator
    assert "s3cret" not in result.stderr


def test_an_sqlite_state_url_puts_the_state_file_there(tmp_path: Path, model_store: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "gateway state.sqlite3"
    url = "sqlite://" + str(elsewhere).replace(" ", "%20")
    with running_gateway(tmp_path / "state", model_store, "--state", url) as gateway:
        create_two_variant_endpoint(gateway.client("sagemaker"), "lite")
    assert elsewhere.exists()
    assert not (tmp_path / "state" / "state.sqlite3").exists()
    with running_gateway(tmp_path / "state", model_store, "--state", url) as again:
        sagemaker = again.client("sagemaker")
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName="lite", WaiterConfig=FAST_WAIT
        )
