"""Where to look when something fails, through the real CLI: a ModelError's LogStreamArn names a
log file that exists, the failure and the access line carry the request id boto3 saw, JSON log
lines; one gateway per state directory; a port in use; instances that share CPUs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.helpers import FAST_WAIT, create_two_variant_endpoint, csv_rows
from tests.e2e.test_faults import create_fault_model, write_images_file
from tests.support.gateway import Gateway, running_gateway
from tests.support.http import free_port
from tests.support.models import ROLE, XGBOOST_IMAGE

pytestmark = pytest.mark.e2e

_ARN_GROUP = "arn:aws:logs:us-east-1:"


def _json_lines(text: str) -> list[dict[str, Any]]:
    """The gateway's JSON log lines (its stdout's announcement is not one)."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitserve.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_failed_invocation_is_in_the_log_the_access_log_and_the_instances_file(
    tmp_path: Path, model_store: Path
) -> None:
    access = tmp_path / "access.log"
    # One CPU for the instances: the two variants' instances share it.
    with running_gateway(
        tmp_path / "state",
        model_store,
        "--log-format",
        "json",
        "--access-log",
        str(access),
        command_prefix=("taskset", "-c", "0"),
    ) as gateway:
        sagemaker, runtime = gateway.client("sagemaker"), gateway.client("sagemaker-runtime")
        create_two_variant_endpoint(sagemaker, "ops", weights=(1.0, 0.0))
        with pytest.raises(runtime.exceptions.ModelError) as raised:
            runtime.invoke_endpoint(EndpointName="ops", Body=b"1,2,3\n", ContentType="text/csv")
        answer = raised.value.response
        request_id = answer["ResponseMetadata"]["RequestId"]
        arn = answer["LogStreamArn"]
        ok = runtime.invoke_endpoint(
            EndpointName="ops",
            Body=csv_rows(np.zeros((1, 13), dtype=np.float32)),
            ContentType="text/csv",
        )
        ok["Body"].read()
        described = sagemaker.describe_endpoint(EndpointName="ops")
        raw_variants = _raw_describe(gateway, "ops")["ProductionVariants"]
        log = gateway.log()
    assert described["EndpointStatus"] == "InService"

    # The ARN: the endpoint's log group, then the instance's stream, which is its file's path.
    group = "log-group:/aws/sagemaker/Endpoints/ops:log-stream:"
    assert arn.startswith(_ARN_GROUP)
    assert group in arn
    stream = arn.split(":log-stream:", 1)[1]
    assert stream == "Variant1/g1/0"
    log_file = gateway.state_dir / "logs" / "ops" / f"{stream}.log"
    assert log_file.read_text().startswith("--- splitserve: ops/Variant1/g1/0 started, pid ")

    lines = _json_lines(log)
    (failure,) = [line for line in lines if line["message"].startswith("invocation failed")]
    assert failure["request_id"] == request_id
    assert failure["level"] == "WARNING"
    assert (
        "endpoint ops variant Variant1 instance ops/Variant1/g1/0 status 400"
        in (failure["message"])
    )

    # The access log: one line per request, the failed one with its id and ModelError's 424.
    entries = _json_lines(access.read_text())
    (failed_entry,) = [entry for entry in entries if entry.get("request_id") == request_id]
    assert '"POST /endpoints/ops/invocations HTTP/1.1" 424 ' in failed_entry["message"]
    ok_id = ok["ResponseMetadata"]["RequestId"]
    assert any(entry.get("request_id") == ok_id for entry in entries)

    # Two instances on one CPU: said once in the log, and per instance in DescribeEndpoint.
    shared = [line for line in lines if "share CPUs with other instances" in line["message"]]
    assert len(shared) == 1
    for variant in raw_variants:
        (instance,) = variant["Instances"]
        assert instance["Cpus"] == [0]
        assert instance["SharedCpus"] == [0]
        assert "CPUs 0 are shared with other instances" in instance["Message"]


def _raw_describe(gateway: Gateway, endpoint: str) -> dict[str, Any]:
    """DescribeEndpoint's JSON as the gateway sent it (botocore drops splitserve's Instances)."""
    request = urllib.request.Request(
        gateway.url,
        data=json.dumps({"EndpointName": endpoint}).encode(),
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "SageMaker.DescribeEndpoint",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        document: dict[str, Any] = json.loads(answer.read())
        return document


def test_a_second_gateway_on_a_state_dir_in_use_is_refused_naming_the_first(
    tmp_path: Path, model_store: Path
) -> None:
    state = tmp_path / "state"
    with running_gateway(state, model_store) as first:
        second = _serve("--port", str(free_port()), "--state-dir", str(state))
        assert first.process.poll() is None
    assert second.returncode == 2
    message = second.stderr.strip().splitlines()[-1]
    assert message == (
        f"splitserve: the state directory {state} is in use by another gateway "
        f"(pid {first.process.pid}); stop it, or give this one its own --state-dir"
    )
    assert "Traceback" not in second.stderr
    # The first one gone, its lock went with it: the directory can be served again.
    with running_gateway(state, model_store):
        pass


def test_a_port_in_use_is_a_one_line_refusal(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = _serve("--port", str(port), "--state-dir", str(tmp_path / "state"))
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"splitserve: cannot listen on 127.0.0.1:{port}: Address already in use: another "
        "gateway or program has it; stop it or choose another with --port"
    )


def test_an_unopenable_access_log_is_a_one_line_refusal(tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "access.log"
    refused = _serve(
        "--port", str(free_port()), "--state-dir", str(tmp_path / "state"),
        "--access-log", str(target),
    )  # fmt: skip
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"splitserve: cannot open the access log {target}: No such file or directory"
    )


def test_a_failed_endpoint_s_reason_is_logged_and_invoking_it_says_why(
    gateway: Gateway, sagemaker: Any, runtime: Any
) -> None:
    sagemaker.create_model(
        ModelName="gone",
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": XGBOOST_IMAGE, "ModelDataUrl": "s3://models/gone/model.tar.gz"},
    )
    sagemaker.create_endpoint_config(
        EndpointConfigName="gone",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": "gone",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.t2.medium",
            }
        ],
    )
    sagemaker.create_endpoint(EndpointName="gone", EndpointConfigName="gone")
    with pytest.raises(Exception, match="Failed"):
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName="gone", WaiterConfig=FAST_WAIT
        )
    reason = sagemaker.describe_endpoint(EndpointName="gone")["FailureReason"]
    assert "gone/model.tar.gz" in reason
    assert f"WARNING splitserve.wiring.fleet: endpoint gone is Failed: {reason}" in gateway.log()
    with pytest.raises(runtime.exceptions.ValidationError) as raised:
        runtime.invoke_endpoint(EndpointName="gone", Body=b"1", ContentType="text/csv")
    message = raised.value.response["Error"]["Message"]
    assert message.endswith(f"failed and cannot take requests: {reason}")


def test_a_model_that_does_not_load_is_logged_with_its_output_kept_in_its_file(
    tmp_path: Path, model_store: Path
) -> None:
    images = write_images_file(tmp_path)
    with running_gateway(tmp_path / "state", model_store, "--images", str(images)) as gateway:
        sagemaker = gateway.client("sagemaker")
        create_fault_model(
            sagemaker, "unloadable", FAULT_EXIT_AT_START="3", FAULT_EXIT_MESSAGE="no model here"
        )
        sagemaker.create_endpoint_config(
            EndpointConfigName="unloadable",
            ProductionVariants=[
                {
                    "VariantName": "Only",
                    "ModelName": "unloadable",
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.t2.medium",
                }
            ],
        )
        sagemaker.create_endpoint(EndpointName="unloadable", EndpointConfigName="unloadable")
        with pytest.raises(Exception, match="Failed"):
            sagemaker.get_waiter("endpoint_in_service").wait(
                EndpointName="unloadable", WaiterConfig=FAST_WAIT
            )
        log = gateway.log()
    assert (
        "WARNING splitserve.wiring.fleet: endpoint unloadable: generation 1 did not start: " in log
    )
    assert "WARNING splitserve.wiring.fleet: endpoint unloadable is Failed: " in log
    kept = (gateway.state_dir / "logs" / "unloadable" / "Only" / "g1" / "0.log").read_text()
    assert "no model here" in kept
