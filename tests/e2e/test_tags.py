"""Tags end to end through boto3: add_tags, list_tags (and its paginator) and delete_tags on every
kind of resource, and the `splitserve:failover` tag turned on and off on a live endpoint, seen in
where its untargeted requests go, and kept across a restart of the gateway."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.test_faults import (
    create_endpoint,
    create_fault_model,
    metric,
    wait_until,
    worker_pids,
    write_images_file,
)
from tests.support.gateway import Gateway, running_gateway

pytestmark = pytest.mark.e2e

_BODY = b"1,2,3\n"
#: Untargeted requests sent per check: with two variants of equal weight, a router that never
#: draws the down variant in this many requests does so with probability 2**-60.
_REQUESTS = 60
_FAILOVER = {"Key": "splitserve:failover", "Value": "true"}


def _gateway_flags(root: Path) -> tuple[str, ...]:
    return ("--images", str(write_images_file(root)), "--health-check-interval", "0.5")


@pytest.fixture
def gateway(tmp_path: Path, model_store: Path) -> Iterator[Gateway]:
    """A gateway that runs the fault server as an image, checking health every 0.5 s."""
    with running_gateway(tmp_path / "state", model_store, *_gateway_flags(tmp_path)) as running:
        yield running


def _send(runtime: Any, endpoint: str) -> Counter[str]:
    """Send `_REQUESTS` untargeted invocations; count the variants that answered, and the error
    codes of those that failed."""
    seen: Counter[str] = Counter()
    for _ in range(_REQUESTS):
        try:
            response = runtime.invoke_endpoint(
                EndpointName=endpoint, Body=_BODY, ContentType="text/csv"
            )
        except ClientError as error:
            seen[error.response["Error"]["Code"]] += 1
        else:
            response["Body"].read()
            seen[response["InvokedProductionVariant"]] += 1
    return seen


def _wait_until_flaky_is_down(gateway: Gateway) -> None:
    """Wait until the router knows Flaky has no healthy instance (the supervisor saw it die), so
    that no request of a check reaches a dead instance it still thinks healthy."""

    def down() -> bool:
        healthy = metric(
            gateway, "splitserve_variant_instances", endpoint_name="live", variant_name="Flaky"
        )
        return healthy == 0

    wait_until(down, 10)


def _tags(sagemaker: Any, arn: str) -> list[dict[str, str]]:
    """Every tag of `arn`, through ListTags' paginator."""
    paginator = sagemaker.get_paginator("list_tags")
    return [tag for page in paginator.paginate(ResourceArn=arn) for tag in page["Tags"]]


def test_add_list_and_delete_tags_through_boto3(gateway: Gateway) -> None:
    sagemaker = gateway.client("sagemaker")
    create_fault_model(sagemaker, "tagged-echo")
    sagemaker.add_tags(
        ResourceArn=sagemaker.describe_model(ModelName="tagged-echo")["ModelArn"],
        Tags=[{"Key": "team", "Value": "ml"}],
    )
    create_endpoint(
        sagemaker,
        "tagged",
        [("Only", "tagged-echo", 1, 1.0)],
        Tags=[{"Key": "owner", "Value": "ana"}],
    )
    arns = {
        "model": sagemaker.describe_model(ModelName="tagged-echo")["ModelArn"],
        "config": sagemaker.describe_endpoint_config(EndpointConfigName="tagged-cfg")[
            "EndpointConfigArn"
        ],
        "endpoint": sagemaker.describe_endpoint(EndpointName="tagged")["EndpointArn"],
    }
    assert _tags(sagemaker, arns["model"]) == [{"Key": "team", "Value": "ml"}]
    assert _tags(sagemaker, arns["config"]) == []
    assert _tags(sagemaker, arns["endpoint"]) == [{"Key": "owner", "Value": "ana"}]

    fifty = [{"Key": f"key-{index:02}", "Value": str(index)} for index in range(50)]
    answer = sagemaker.add_tags(ResourceArn=arns["config"], Tags=fifty)
    assert answer["Tags"] == fifty
    assert _tags(sagemaker, arns["config"]) == fifty
    page = sagemaker.list_tags(ResourceArn=arns["config"], MaxResults=50)
    assert (len(page["Tags"]), page.get("NextToken")) == (50, None)
    with pytest.raises(ClientError) as refused:
        sagemaker.add_tags(ResourceArn=arns["config"], Tags=[{"Key": "one-more", "Value": ""}])
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "at most 50" in refused.value.response["Error"]["Message"]

    sagemaker.delete_tags(ResourceArn=arns["config"], TagKeys=[tag["Key"] for tag in fifty[1:]])
    assert _tags(sagemaker, arns["config"]) == fifty[:1]

    missing = arns["endpoint"].replace("endpoint/tagged", "endpoint/missing")
    with pytest.raises(ClientError) as refused:
        sagemaker.list_tags(ResourceArn=missing)
    assert refused.value.response["Error"] == {
        "Code": "ValidationException",
        "Message": f'Could not find endpoint "{missing}".',
    }
    with pytest.raises(ClientError) as refused:
        sagemaker.add_tags(ResourceArn=arns["model"], Tags=[{"Key": "bad;key", "Value": ""}])
    assert "at 'tags.1.member.key'" in refused.value.response["Error"]["Message"]


def test_failover_tag_flipped_on_a_live_endpoint(
    gateway: Gateway, tmp_path: Path, model_store: Path
) -> None:
    sagemaker = gateway.client("sagemaker")
    runtime = gateway.client("sagemaker-runtime")
    flag = tmp_path / "down"
    create_fault_model(sagemaker, "live-flaky", FAULT_EXIT_IF_FILE_EXISTS=str(flag))
    create_fault_model(sagemaker, "live-echo")
    create_endpoint(
        sagemaker, "live", [("Up", "live-echo", 1, 1.0), ("Flaky", "live-flaky", 1, 1.0)]
    )
    arn = sagemaker.describe_endpoint(EndpointName="live")["EndpointArn"]
    # Flaky's instance dies, and every restart of it exits at once while the flag exists.
    flag.touch()
    for pid in worker_pids(gateway, "live", "Flaky"):
        os.kill(pid, signal.SIGKILL)

    _wait_until_flaky_is_down(gateway)
    without = _send(runtime, "live")
    assert set(without) == {"Up", "ServiceUnavailable"}, without

    sagemaker.add_tags(ResourceArn=arn, Tags=[_FAILOVER])
    with_failover = _send(runtime, "live")
    assert with_failover == Counter({"Up": _REQUESTS}), with_failover
    assert metric(gateway, "splitserve_failover_total", endpoint_name="live") > 0
    # No redeployment: the endpoint stayed InService on its first configuration, and targeted
    # requests still mean their variant.
    described = sagemaker.describe_endpoint(EndpointName="live")
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == (
        "InService",
        "live-cfg",
    )
    with pytest.raises(runtime.exceptions.ServiceUnavailable):
        runtime.invoke_endpoint(EndpointName="live", Body=_BODY, TargetVariant="Flaky")

    sagemaker.delete_tags(ResourceArn=arn, TagKeys=[_FAILOVER["Key"]])
    turned_off = _send(runtime, "live")
    assert set(turned_off) == {"Up", "ServiceUnavailable"}, turned_off

    with pytest.raises(ClientError) as refused:
        sagemaker.add_tags(ResourceArn=arn, Tags=[{**_FAILOVER, "Value": "yes"}])
    assert "must have the value true or false" in refused.value.response["Error"]["Message"]

    # The tag outlives a restart: the redeployed router fails over from its first request.
    sagemaker.add_tags(ResourceArn=arn, Tags=[_FAILOVER])
    flag.unlink()
    gateway.stop()
    with running_gateway(gateway.state_dir, model_store, *_gateway_flags(tmp_path)) as again:
        sagemaker = again.client("sagemaker")
        runtime = again.client("sagemaker-runtime")
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName="live", WaiterConfig={"Delay": 1, "MaxAttempts": 90}
        )
        assert _tags(sagemaker, arn) == [_FAILOVER]
        flag.touch()
        for pid in worker_pids(again, "live", "Flaky"):
            os.kill(pid, signal.SIGKILL)
        _wait_until_flaky_is_down(again)
        assert _send(runtime, "live") == Counter({"Up": _REQUESTS})
        flag.unlink()
