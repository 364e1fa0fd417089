"""AddTags, ListTags and DeleteTags, called on the service directly: every kind of resource, the
limits and messages, and the `splitserve:failover` tag changed on a live endpoint."""

from __future__ import annotations

import base64
import json
import sqlite3
from typing import Any

import pytest

from splitserve.config import Settings
from splitserve.control.service import ControlService
from splitserve.errors import DeploymentError, ValidationException
from tests.control.conftest import (
    ACCOUNT_ARN,
    RecordingDeployer,
    create_config,
    create_model,
    dump_state,
    open_service,
    state_file,
    two_variant_endpoint,
    variant,
    write_artifact,
)

MODEL_ARN = f"{ACCOUNT_ARN}:model/m1"
CONFIG_ARN = f"{ACCOUNT_ARN}:endpoint-config/ab-cfg"
ENDPOINT_ARN = f"{ACCOUNT_ARN}:endpoint/ab"
FAILOVER_ON = [{"Key": "splitserve:failover", "Value": "true"}]


def _tags(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in pairs]


async def _list(service: ControlService, arn: str, **extra: object) -> dict[str, Any]:
    listed: dict[str, Any] = await service.dispatch("ListTags", {"ResourceArn": arn, **extra})
    return listed


@pytest.fixture
async def endpoint(service: ControlService, settings: Settings) -> ControlService:
    """The service with models m1 and m2, configuration ab-cfg and endpoint ab InService."""
    await two_variant_endpoint(service, settings)
    return service


@pytest.mark.parametrize("arn", [MODEL_ARN, CONFIG_ARN, ENDPOINT_ARN])
async def test_add_list_and_delete_tags_of_each_kind(endpoint: ControlService, arn: str) -> None:
    assert await _list(endpoint, arn) == {"Tags": []}
    added = await endpoint.dispatch(
        "AddTags", {"ResourceArn": arn, "Tags": _tags(("team", "ml"), ("stage", ""))}
    )
    assert added == {"Tags": _tags(("team", "ml"), ("stage", ""))}
    # A key added again keeps its place and takes the new value; the answer is what was given.
    again = await endpoint.dispatch(
        "AddTags", {"ResourceArn": arn, "Tags": _tags(("owner", "ana"), ("team", "search"))}
    )
    assert again == {"Tags": _tags(("owner", "ana"), ("team", "search"))}
    assert await _list(endpoint, arn) == {
        "Tags": _tags(("team", "search"), ("stage", ""), ("owner", "ana"))
    }
    # Tag keys are case-sensitive, and deleting a key the resource does not have is no error.
    assert (
        await endpoint.dispatch(
            "DeleteTags", {"ResourceArn": arn, "TagKeys": ["stage", "Team", "absent"]}
        )
        == {}
    )
    assert await _list(endpoint, arn) == {"Tags": _tags(("team", "search"), ("owner", "ana"))}


async def test_create_tags_are_listed_and_a_repeated_key_keeps_its_last_value(
    service: ControlService, settings: Settings
) -> None:
    write_artifact(settings)
    tags = _tags(("team", "ml"), ("cost", "1"), ("team", "search"))
    await service.dispatch(
        "CreateModel",
        {
            "ModelName": "m1",
            "ExecutionRoleArn": "arn:aws:iam::123456789012:role/R",
            "PrimaryContainer": {"Image": "local/xgboost:1.7-1"},
            "Tags": tags,
        },
    )
    await create_config(service, "ab-cfg", [variant("A", "m1")], Tags=tags)
    await service.dispatch(
        "CreateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "ab-cfg", "Tags": tags}
    )
    await service.settle()
    for arn in (MODEL_ARN, CONFIG_ARN, ENDPOINT_ARN):
        assert await _list(service, arn) == {"Tags": _tags(("team", "search"), ("cost", "1"))}
    # Describe stays as SageMaker's: tags are not part of it.
    described = await service.dispatch("DescribeModel", {"ModelName": "m1"})
    assert "Tags" not in described


async def test_an_arn_names_its_resource_whatever_the_case_of_the_name(
    endpoint: ControlService,
) -> None:
    await endpoint.dispatch(
        "AddTags", {"ResourceArn": f"{ACCOUNT_ARN}:endpoint/AB", "Tags": _tags(("a", "b"))}
    )
    assert await _list(endpoint, ENDPOINT_ARN) == {"Tags": _tags(("a", "b"))}


@pytest.mark.parametrize(
    ("arn", "message"),
    [
        (f"{ACCOUNT_ARN}:model/nope", f'Could not find model "{ACCOUNT_ARN}:model/nope".'),
        (
            f"{ACCOUNT_ARN}:endpoint-config/nope",
            f'Could not find endpoint configuration "{ACCOUNT_ARN}:endpoint-config/nope".',
        ),
        (f"{ACCOUNT_ARN}:endpoint/nope", f'Could not find endpoint "{ACCOUNT_ARN}:endpoint/nope".'),
        # Another account, region or partition: nothing of it exists on this gateway.
        (
            "arn:aws:sagemaker:us-east-1:999999999999:model/m1",
            'Could not find model "arn:aws:sagemaker:us-east-1:999999999999:model/m1".',
        ),
        (
            "arn:aws:sagemaker:eu-west-1:123456789012:endpoint/ab",
            'Could not find endpoint "arn:aws:sagemaker:eu-west-1:123456789012:endpoint/ab".',
        ),
        (
            "arn:aws-cn:sagemaker:us-east-1:123456789012:endpoint/ab",
            'Could not find endpoint "arn:aws-cn:sagemaker:us-east-1:123456789012:endpoint/ab".',
        ),
        (f"{ACCOUNT_ARN}:endpoint/", f'Could not find endpoint "{ACCOUNT_ARN}:endpoint/".'),
        (f"{ACCOUNT_ARN}:model/m1/x", f'Could not find model "{ACCOUNT_ARN}:model/m1/x".'),
        (
            f"{ACCOUNT_ARN}:training-job/job",
            "splitserve keeps tags for models, endpoint configurations and endpoints only",
        ),
        (f"{ACCOUNT_ARN}:endpoint", f'Could not find endpoint "{ACCOUNT_ARN}:endpoint".'),
        (
            "arn:aws:s3:::bucket",
            "1 validation error detected: Value 'arn:aws:s3:::bucket' at 'resourceArn' failed to "
            "satisfy constraint: Member must satisfy regular expression pattern: "
            "arn:aws[a-z-]*:sagemaker:[a-z0-9-]*:[0-9]{12}:.+",
        ),
        (
            f"{ACCOUNT_ARN}:model/{'m' * 300}",
            "Member must have length less than or equal to 256",
        ),
    ],
)
async def test_an_arn_of_nothing_here_is_refused_by_every_operation(
    endpoint: ControlService, settings: Settings, arn: str, message: str
) -> None:
    before = dump_state(settings)
    for operation, extra in (
        ("AddTags", {"Tags": _tags(("a", "b"))}),
        ("ListTags", {}),
        ("DeleteTags", {"TagKeys": ["a"]}),
    ):
        with pytest.raises(ValidationException) as refused:
            await endpoint.dispatch(operation, {"ResourceArn": arn, **extra})
        assert message in refused.value.message
    assert dump_state(settings) == before


async def test_a_deleted_resource_has_no_tags_to_list(endpoint: ControlService) -> None:
    await endpoint.dispatch("AddTags", {"ResourceArn": MODEL_ARN, "Tags": _tags(("a", "b"))})
    await endpoint.dispatch("DeleteModel", {"ModelName": "m1"})
    with pytest.raises(ValidationException, match=r'Could not find model ".*:model/m1"'):
        await _list(endpoint, MODEL_ARN)
    await create_model(endpoint, "m1")  # a new model of that name starts without tags
    assert await _list(endpoint, MODEL_ARN) == {"Tags": []}


async def test_a_resource_has_at_most_50_tags(endpoint: ControlService, settings: Settings) -> None:
    fifty = _tags(*((f"key-{index}", "v") for index in range(50)))
    await endpoint.dispatch("AddTags", {"ResourceArn": CONFIG_ARN, "Tags": fifty})
    # Overwriting existing keys is within the limit.
    await endpoint.dispatch("AddTags", {"ResourceArn": CONFIG_ARN, "Tags": fifty[:3]})
    before = dump_state(settings)
    with pytest.raises(ValidationException) as refused:
        await endpoint.dispatch(
            "AddTags", {"ResourceArn": CONFIG_ARN, "Tags": _tags(("one-more", "v"))}
        )
    assert refused.value.message == (
        f'Tag limit exceeded: "{CONFIG_ARN}" would have 51 tags; a resource can have at most 50.'
    )
    assert dump_state(settings) == before
    with pytest.raises(ValidationException, match="'tags' failed to satisfy constraint: Member"):
        await endpoint.dispatch(
            "AddTags", {"ResourceArn": MODEL_ARN, "Tags": [*fifty, *_tags(("x", "y"))]}
        )
    with pytest.raises(ValidationException, match="'tagKeys' failed to satisfy constraint"):
        await endpoint.dispatch(
            "DeleteTags", {"ResourceArn": MODEL_ARN, "TagKeys": [f"k{i}" for i in range(51)]}
        )


@pytest.mark.parametrize(
    ("operation", "body", "message"),
    [
        ("AddTags", {"Tags": _tags(("", "v"))}, "at 'tags.1.member.key' failed to satisfy"),
        ("AddTags", {"Tags": _tags(("k" * 129, "v"))}, "length less than or equal to 128"),
        ("AddTags", {"Tags": _tags(("k", "v" * 257))}, "length less than or equal to 256"),
        ("AddTags", {"Tags": _tags(("a;b", "v"))}, "at 'tags.1.member.key' failed to satisfy"),
        ("AddTags", {"Tags": [{"Key": "k"}]}, "at 'tags.1.member.value' failed to satisfy"),
        ("AddTags", {}, "at 'tags' failed to satisfy constraint: Member must not be null"),
        ("AddTags", {"Tags": _tags(("aws:team", "v"))}, "reserved for AWS"),
        ("DeleteTags", {"TagKeys": ["aws:cloudformation:stack-name"]}, "reserved for AWS"),
        ("DeleteTags", {"TagKeys": []}, "at 'tagKeys' failed to satisfy constraint"),
        ("DeleteTags", {"TagKeys": ["k\n"]}, "at 'tagKeys.1.member' failed to satisfy"),
        ("ListTags", {"MaxResults": 49}, "greater than or equal to 50"),
        ("ListTags", {"NextToken": "not-a-token"}, "Invalid pagination token"),
        ("ListTags", {"NextToken": base64.b64encode(b'{"Offset": 51}').decode()}, "Invalid"),
        ("ListTags", {"NextToken": base64.b64encode(b"[1]").decode()}, "Invalid pagination"),
    ],
)
async def test_bad_requests_are_refused_and_change_nothing(
    endpoint: ControlService,
    settings: Settings,
    operation: str,
    body: dict[str, object],
    message: str,
) -> None:
    before = dump_state(settings)
    with pytest.raises(ValidationException) as refused:
        await endpoint.dispatch(operation, {"ResourceArn": MODEL_ARN, **body})
    assert message in refused.value.message
    assert dump_state(settings) == before


async def test_list_tags_pages_with_an_opaque_next_token(endpoint: ControlService) -> None:
    fifty = _tags(*((f"key-{index:02}", "v") for index in range(50)))
    await endpoint.dispatch("AddTags", {"ResourceArn": MODEL_ARN, "Tags": fifty})
    # MaxResults is at least 50, so one page holds every tag a resource can have.
    assert await _list(endpoint, MODEL_ARN, MaxResults=50) == {"Tags": fifty}
    assert await _list(endpoint, MODEL_ARN, MaxResults=1000) == {"Tags": fifty}
    token = base64.urlsafe_b64encode(json.dumps({"Offset": 48}).encode()).decode()
    assert await _list(endpoint, MODEL_ARN, NextToken=token) == {"Tags": fifty[48:]}


# --- the splitserve:failover tag on a live endpoint ----------------------------------------------


async def test_failover_is_turned_on_and_off_live_and_survives_a_restart(
    endpoint: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await endpoint.dispatch("AddTags", {"ResourceArn": ENDPOINT_ARN, "Tags": FAILOVER_ON})
    assert deployer.methods("ab")[-1] == ("set_failover", True)
    # The same value again, or another tag, is no change for the router.
    await endpoint.dispatch(
        "AddTags",
        {"ResourceArn": ENDPOINT_ARN, "Tags": [*_tags(("team", "ml")), {**FAILOVER_ON[0]}]},
    )
    assert [call for call in deployer.methods("ab") if call[0] == "set_failover"] == [
        ("set_failover", True)
    ]
    # `FALSE` is false in any case; the endpoint stays InService and is not redeployed.
    await endpoint.dispatch(
        "AddTags", {"ResourceArn": ENDPOINT_ARN, "Tags": _tags(("splitserve:failover", "FALSE"))}
    )
    assert deployer.methods("ab")[-1] == ("set_failover", False)
    await endpoint.dispatch("AddTags", {"ResourceArn": ENDPOINT_ARN, "Tags": FAILOVER_ON})
    described = await endpoint.dispatch("DescribeEndpoint", {"EndpointName": "ab"})
    assert described["EndpointStatus"] == "InService"
    assert [method for method, _ in deployer.methods("ab")].count("deploy") == 1

    await endpoint.close()
    redeployer = RecordingDeployer()
    again = await open_service(settings, redeployer)
    try:
        await again.settle()
        assert [plan.failover for plan in redeployer.plans] == [True]
        # Deleting the tag turns failover off.
        await again.dispatch(
            "DeleteTags", {"ResourceArn": ENDPOINT_ARN, "TagKeys": ["splitserve:failover"]}
        )
        assert redeployer.methods("ab")[-1] == ("set_failover", False)
        assert await _list(again, ENDPOINT_ARN) == {"Tags": _tags(("team", "ml"))}
        await again.dispatch(
            "UpdateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "ab-cfg"}
        )
        await again.settle()
        assert not redeployer.plans[-1].failover
    finally:
        await again.close()


@pytest.mark.parametrize("value", ["yes", "", "on"])
async def test_an_invalid_failover_value_is_refused_as_at_create_endpoint(
    endpoint: ControlService, settings: Settings, deployer: RecordingDeployer, value: str
) -> None:
    before = dump_state(settings)
    with pytest.raises(ValidationException) as refused:
        await endpoint.dispatch(
            "AddTags",
            {
                "ResourceArn": ENDPOINT_ARN,
                "Tags": _tags(("team", "ml"), ("splitserve:failover", value)),
            },
        )
    assert refused.value.message == (
        f"The tag splitserve:failover must have the value true or false, not '{value}'."
    )
    assert dump_state(settings) == before
    assert "set_failover" not in [method for method, _ in deployer.methods()]
    # On a model or a configuration the tag means nothing, so any value is kept as given.
    await endpoint.dispatch(
        "AddTags", {"ResourceArn": CONFIG_ARN, "Tags": _tags(("splitserve:failover", value))}
    )


async def test_a_router_that_refuses_the_change_leaves_the_old_tags(
    endpoint: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await endpoint.dispatch("AddTags", {"ResourceArn": ENDPOINT_ARN, "Tags": _tags(("a", "b"))})
    before = dump_state(settings)
    deployer.fail_next("set_failover", DeploymentError("Endpoint ab has no running fleet."))
    with pytest.raises(ValidationException) as refused:
        await endpoint.dispatch("AddTags", {"ResourceArn": ENDPOINT_ARN, "Tags": FAILOVER_ON})
    assert refused.value.message == (
        "The failover setting could not be applied: Endpoint ab has no running fleet."
    )
    assert dump_state(settings) == before
    deployer.fail_next("set_failover", RuntimeError("internal detail"))
    with pytest.raises(ValidationException) as refused:
        await endpoint.dispatch("AddTags", {"ResourceArn": ENDPOINT_ARN, "Tags": FAILOVER_ON})
    assert "internal detail" not in refused.value.message
    assert dump_state(settings) == before


async def test_failover_changed_while_creating_reaches_the_deployer(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    write_artifact(settings)
    await create_model(service, "m1")
    await create_config(service, "ab-cfg", [variant("A", "m1")])
    deployer.hold("deploy")
    await service.dispatch("CreateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "ab-cfg"})
    await deployer.entered("deploy")
    await service.dispatch("AddTags", {"ResourceArn": ENDPOINT_ARN, "Tags": FAILOVER_ON})
    # The plan being deployed was made before the tag; the deployer is told, and the real one
    # builds the router with what it was told last.
    assert deployer.failover == {"ab": True}
    deployer.release("deploy")
    await service.settle()
    assert deployer.plans[-1].failover is False


async def test_a_deleting_endpoint_keeps_its_tags_but_its_router_is_not_told(
    endpoint: ControlService, deployer: RecordingDeployer
) -> None:
    deployer.hold("remove")
    await endpoint.dispatch("DeleteEndpoint", {"EndpointName": "ab"})
    await deployer.entered("remove")
    await endpoint.dispatch("AddTags", {"ResourceArn": ENDPOINT_ARN, "Tags": FAILOVER_ON})
    assert await _list(endpoint, ENDPOINT_ARN) == {"Tags": FAILOVER_ON}
    assert deployer.failover == {}
    deployer.release("remove")
    await endpoint.settle()
    with pytest.raises(ValidationException, match="Could not find endpoint"):
        await _list(endpoint, ENDPOINT_ARN)


async def test_a_version_3_state_file_gets_tags_for_models_and_configurations(
    service: ControlService, settings: Settings
) -> None:
    write_artifact(settings)
    await create_model(service, "m1")
    await create_config(service, "ab-cfg", [variant("A", "m1")])
    await service.close()
    # The same file as version 3 wrote it: only endpoints had a tags column.
    connection = sqlite3.connect(state_file(settings))
    try:
        connection.execute("ALTER TABLE models DROP COLUMN tags")
        connection.execute("ALTER TABLE endpoint_configs DROP COLUMN tags")
        connection.execute("UPDATE schema_version SET version = 3")
        connection.commit()
    finally:
        connection.close()
    migrated = await open_service(settings, RecordingDeployer())
    try:
        assert await _list(migrated, MODEL_ARN) == {"Tags": []}
        await migrated.dispatch("AddTags", {"ResourceArn": CONFIG_ARN, "Tags": _tags(("a", "b"))})
        assert await _list(migrated, CONFIG_ARN) == {"Tags": _tags(("a", "b"))}
    finally:
        await migrated.close()
