"""Endpoint lifecycles driven through the service: create, weights, blue/green update, delete."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import pytest

from splitserve.config import Settings
from splitserve.control.service import ControlService
from splitserve.control.store import Store
from splitserve.errors import DeploymentError, ResourceLimitExceeded, ValidationException
from tests.control.conftest import (
    ACCOUNT_ARN,
    IMAGE,
    RecordingDeployer,
    create_config,
    create_model,
    describe,
    open_service,
    two_variant_endpoint,
    variant,
    variants_by_name,
    write_artifact,
)
from tests.control.shapes import check_output

IN_PROGRESS = f'Cannot update in-progress endpoint "{ACCOUNT_ARN}:endpoint/ab".'


async def test_create_endpoint_goes_creating_then_in_service(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    write_artifact(settings)
    await create_model(service, "m1")
    await create_config(
        service,
        "cfg",
        [
            {
                **variant("A", "m1", weight=3, count=2),
                "RoutingConfig": {"RoutingStrategy": "RANDOM"},
            },
        ],
        DataCaptureConfig={
            "InitialSamplingPercentage": 50,
            "DestinationS3Uri": "s3://capture/ab",
            "CaptureOptions": [{"CaptureMode": "InputAndOutput"}],
        },
    )
    deployer.hold("deploy")
    created = await service.dispatch(
        "CreateEndpoint", {"EndpointName": "Ab", "EndpointConfigName": "cfg"}
    )
    assert check_output("CreateEndpoint", created) == {"EndpointArn": f"{ACCOUNT_ARN}:endpoint/ab"}
    await deployer.entered("deploy")

    creating = await describe(service, "ab")
    check_output("DescribeEndpoint", creating)
    assert creating["EndpointStatus"] == "Creating"
    assert creating["EndpointName"] == "Ab"
    summary = variants_by_name(creating)["A"]
    assert summary["CurrentInstanceCount"] == 0
    assert summary["DesiredInstanceCount"] == 2
    (status,) = summary["VariantStatus"]
    assert status["Status"] == "Creating"
    assert status["StatusMessage"] == "Launching 2 instance(s)."
    assert isinstance(status["StartTime"], float)
    assert "DeployedImages" not in summary

    deployer.release("deploy")
    await service.settle()
    assert deployer.methods() == [("deploy", 1), ("activate", 1)]
    plan = deployer.plans[0]
    assert plan.endpoint_name == "Ab"
    assert plan.endpoint_config_name == "cfg"
    (variant_plan,) = plan.variants
    assert variant_plan.model_data == (settings.model_store / "bucket/model.tar.gz").resolve()
    assert variant_plan.image == IMAGE
    assert variant_plan.environment == {"SAGEMAKER_REGION": "local"}
    assert (variant_plan.instance_count, variant_plan.weight) == (2, 3.0)
    assert variant_plan.routing_strategy == "RANDOM"
    assert plan.data_capture is not None
    assert plan.data_capture.destination == (settings.model_store / "capture/ab").resolve()
    assert plan.data_capture.capture_input
    assert plan.data_capture.capture_output
    assert plan.data_capture.sampling_percentage == 50

    deployer.details["Ab"] = {"A": [{"InstanceName": "ab-a-0", "Cpus": [0], "State": "healthy"}]}
    in_service = await describe(service, "Ab")
    parsed = check_output("DescribeEndpoint", in_service)
    assert parsed["EndpointStatus"] == "InService"
    assert parsed["EndpointConfigName"] == "cfg"
    assert parsed["DataCaptureConfig"] == {
        "EnableCapture": True,
        "CaptureStatus": "Started",
        "CurrentSamplingPercentage": 50,
        "DestinationS3Uri": "s3://capture/ab",
    }
    summary = variants_by_name(in_service)["A"]
    assert summary["CurrentWeight"] == summary["DesiredWeight"] == 3.0
    assert summary["CurrentInstanceCount"] == summary["DesiredInstanceCount"] == 2
    assert "VariantStatus" not in summary
    assert summary["RoutingConfig"] == {"RoutingStrategy": "RANDOM"}
    assert summary["Instances"] == [{"InstanceName": "ab-a-0", "Cpus": [0], "State": "healthy"}]
    images = summary["DeployedImages"]
    assert isinstance(images, list)
    assert images[0]["SpecifiedImage"] == IMAGE
    assert "FailureReason" not in in_service


async def test_default_routing_strategy_comes_from_settings(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)
    strategies = {v.routing_strategy for v in deployer.plans[0].variants}
    assert strategies == {settings.router.default_routing_strategy}


async def test_create_endpoint_errors_verbatim(service: ControlService, settings: Settings) -> None:
    await two_variant_endpoint(service, settings)
    with pytest.raises(ValidationException) as duplicate:
        await service.dispatch(
            "CreateEndpoint", {"EndpointName": "AB", "EndpointConfigName": "ab-cfg"}
        )
    assert duplicate.value.message == (
        f'Cannot create already existing endpoint "{ACCOUNT_ARN}:endpoint/ab".'
    )
    with pytest.raises(ValidationException) as no_config:
        await service.dispatch(
            "CreateEndpoint", {"EndpointName": "x", "EndpointConfigName": "Nope"}
        )
    assert no_config.value.message == (
        f'Could not find endpoint configuration "{ACCOUNT_ARN}:endpoint-config/nope".'
    )
    cases: list[tuple[str, dict[str, object]]] = [
        ("DescribeEndpoint", {"EndpointName": "Missing"}),
        ("DeleteEndpoint", {"EndpointName": "Missing"}),
        ("UpdateEndpoint", {"EndpointName": "Missing", "EndpointConfigName": "ab-cfg"}),
        (
            "UpdateEndpointWeightsAndCapacities",
            {
                "EndpointName": "Missing",
                "DesiredWeightsAndCapacities": [{"VariantName": "A", "DesiredWeight": 1}],
            },
        ),
    ]
    for operation, body in cases:
        with pytest.raises(ValidationException) as missing:
            await service.dispatch(operation, body)
        assert missing.value.message == f'Could not find endpoint "{ACCOUNT_ARN}:endpoint/missing".'


async def test_create_endpoint_whose_model_was_deleted(
    service: ControlService, settings: Settings
) -> None:
    write_artifact(settings)
    await create_model(service, "m1")
    await create_config(service, "cfg", [variant("A", "m1")])
    await service.dispatch("DeleteModel", {"ModelName": "m1"})
    with pytest.raises(ValidationException) as missing:
        await service.dispatch("CreateEndpoint", {"EndpointName": "e", "EndpointConfigName": "cfg"})
    assert missing.value.message == f'Could not find model "{ACCOUNT_ARN}:model/m1".'


async def test_instance_limit(service: ControlService, settings: Settings) -> None:
    write_artifact(settings)
    await create_model(service, "m1")
    await create_config(service, "big", [variant("A", "m1", count=9)])
    with pytest.raises(ResourceLimitExceeded) as refused:
        await service.dispatch("CreateEndpoint", {"EndpointName": "e", "EndpointConfigName": "big"})
    assert "limit of 8 instances per variant" in refused.value.message


async def test_missing_artifact_fails_the_endpoint_naming_it(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await create_model(service, "m1", "s3://bucket/absent/model.tar.gz")
    await create_config(service, "cfg", [variant("A", "m1")])
    await service.dispatch("CreateEndpoint", {"EndpointName": "e", "EndpointConfigName": "cfg"})
    await service.settle()
    described = await describe(service, "e")
    check_output("DescribeEndpoint", described)
    assert described["EndpointStatus"] == "Failed"
    assert described["FailureReason"] == (
        'Failed to find model data for variant "A" (model "m1") at URL '
        '"s3://bucket/absent/model.tar.gz". Please ensure that there is an object located at '
        "the URL."
    )
    assert deployer.methods() == []


async def test_nodes_that_fetch_from_s3_deploy_an_object_the_model_store_lacks(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    # `--s3-endpoint-url`: the placement's nodes fetch s3:// model data themselves (a missing
    # object fails there, with the store's reason); a file:// URL is still checked here.
    fetching = replace(settings, placement=replace(settings.placement, s3_endpoint_url="http://s3"))
    service = await open_service(fetching, deployer)
    try:
        await create_model(service, "m1", "s3://bucket/only-in-s3/model.tar.gz")
        await create_config(service, "cfg", [variant("A", "m1")])
        await service.dispatch("CreateEndpoint", {"EndpointName": "e", "EndpointConfigName": "cfg"})
        await service.settle()
        assert (await describe(service, "e"))["EndpointStatus"] == "InService"
        local = settings.model_store / "local" / "absent.tar.gz"
        await create_model(service, "m2", f"file://{local}")
        await create_config(service, "cfg2", [variant("A", "m2")])
        await service.dispatch(
            "CreateEndpoint", {"EndpointName": "e2", "EndpointConfigName": "cfg2"}
        )
        await service.settle()
        described = await describe(service, "e2")
        assert described["EndpointStatus"] == "Failed"
        assert described["FailureReason"].startswith('Failed to find model data for variant "A"')
    finally:
        await service.close()


async def test_deployment_error_fails_the_endpoint_with_its_reason(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    deployer.fail_next("deploy", DeploymentError("CapacityError: " + "x" * 2000))
    await two_variant_endpoint(service, settings)
    described = await describe(service, "ab")
    assert described["EndpointStatus"] == "Failed"
    reason = described["FailureReason"]
    assert isinstance(reason, str)
    assert reason.startswith("CapacityError: xxx")
    assert len(reason) == 1024
    # Failed: only DeleteEndpoint is allowed.
    with pytest.raises(ValidationException, match="DeleteEndpoint is the only operation"):
        await service.dispatch(
            "UpdateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "ab-cfg"}
        )
    await service.dispatch("DeleteEndpoint", {"EndpointName": "ab"})
    await service.settle()
    with pytest.raises(ValidationException, match="Could not find endpoint"):
        await describe(service, "ab")


async def test_unexpected_exception_gives_a_generic_reason(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    deployer.fail_next("activate", RuntimeError("secret internal detail"))
    await two_variant_endpoint(service, settings)
    described = await describe(service, "ab")
    assert described["EndpointStatus"] == "Failed"
    reason = described["FailureReason"]
    assert isinstance(reason, str)
    assert reason.startswith("An internal error occurred while deploying the endpoint (incident ")
    assert "secret" not in reason
    # The half-made generation was retired.
    assert deployer.methods("ab") == [("deploy", 1), ("activate", 1), ("retire", 1)]


async def test_weights_and_capacities(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)
    deployer.hold("scale")
    answer = await service.dispatch(
        "UpdateEndpointWeightsAndCapacities",
        {
            "EndpointName": "ab",
            "DesiredWeightsAndCapacities": [
                {"VariantName": "A", "DesiredWeight": 1, "DesiredInstanceCount": 3},
            ],
        },
    )
    assert check_output("UpdateEndpointWeightsAndCapacities", answer) == {
        "EndpointArn": f"{ACCOUNT_ARN}:endpoint/ab"
    }
    await deployer.entered("scale")
    updating = await describe(service, "ab")
    check_output("DescribeEndpoint", updating)
    assert updating["EndpointStatus"] == "Updating"
    a = variants_by_name(updating)["A"]
    assert (a["CurrentInstanceCount"], a["DesiredInstanceCount"]) == (1, 3)
    status = a["VariantStatus"]
    assert isinstance(status, list)
    assert status[0]["Status"] == "Updating"
    assert status[0]["StatusMessage"] == "Scaling out desired instance count to 3."
    assert "VariantStatus" not in variants_by_name(updating)["B"]
    with pytest.raises(ValidationException) as busy:
        await service.dispatch("DeleteEndpoint", {"EndpointName": "ab"})
    assert busy.value.message == IN_PROGRESS

    deployer.release("scale")
    await service.settle()
    settled = variants_by_name(await describe(service, "ab"))
    assert (settled["A"]["CurrentInstanceCount"], settled["A"]["DesiredInstanceCount"]) == (3, 3)
    assert deployer.counts["ab", "A"] == 3
    # Only A changed; the weight did not, so the router was not touched.
    assert [m for m, _ in deployer.methods("ab")] == ["deploy", "activate", "scale"]


async def test_new_weights_reach_the_router_before_the_call_answers(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)
    await service.dispatch(
        "UpdateEndpointWeightsAndCapacities",
        {
            "EndpointName": "ab",
            "DesiredWeightsAndCapacities": [
                {"VariantName": "A", "DesiredWeight": 25},
                {"VariantName": "B", "DesiredWeight": 75.0},
            ],
        },
    )
    assert deployer.weights["ab"] == {"A": 25.0, "B": 75.0}
    described = await describe(service, "ab")
    assert described["EndpointStatus"] in ("Updating", "InService")
    await service.settle()
    described = await describe(service, "ab")
    assert described["EndpointStatus"] == "InService"
    weights = {n: v["CurrentWeight"] for n, v in variants_by_name(described).items()}
    assert weights == {"A": 25.0, "B": 75.0}
    counts = {n: v["CurrentInstanceCount"] for n, v in variants_by_name(described).items()}
    assert counts == {"A": 1, "B": 1}
    assert not any(method == "scale" for method, _ in deployer.methods())


async def test_weights_errors_verbatim(service: ControlService, settings: Settings) -> None:
    await two_variant_endpoint(service, settings)

    async def update(*items: dict[str, object]) -> None:
        await service.dispatch(
            "UpdateEndpointWeightsAndCapacities",
            {"EndpointName": "ab", "DesiredWeightsAndCapacities": list(items)},
        )

    with pytest.raises(ValidationException) as unknown:
        await update({"VariantName": "C", "DesiredWeight": 1})
    assert unknown.value.message == (
        'The variant name(s) "C" is/are not present within endpoint configuration "ab-cfg".'
    )
    with pytest.raises(ValidationException) as duplicate:
        await update(
            {"VariantName": "A", "DesiredWeight": 1}, {"VariantName": "A", "DesiredWeight": 2}
        )
    assert duplicate.value.message == 'The variant name "A" was non-unique within the request.'
    with pytest.raises(ValidationException) as zero:
        await update({"VariantName": "A", "DesiredInstanceCount": 0})
    assert zero.value.message == (
        "1 validation error detected: Value '0' at "
        "'desiredWeightsAndCapacities.1.member.desiredInstanceCount' failed to satisfy "
        "constraint: Member must have value greater than or equal to 1"
    )
    with pytest.raises(ValidationException) as negative:
        await update({"VariantName": "A", "DesiredWeight": -0.5})
    assert "Member must have value greater than or equal to 0" in negative.value.message
    with pytest.raises(ValidationException) as empty:
        await update({"VariantName": "A"})
    assert (
        empty.value.message == 'Give DesiredWeight, DesiredInstanceCount or both for variant "A".'
    )
    with pytest.raises(ResourceLimitExceeded):
        await update({"VariantName": "A", "DesiredInstanceCount": 9})
    assert (await describe(service, "ab"))["EndpointStatus"] == "InService"


async def test_all_weights_zero_is_accepted(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings, weights=(0.0, 0.0))
    assert (await describe(service, "ab"))["EndpointStatus"] == "InService"
    assert deployer.plans[0].variants[0].weight == 0.0


async def test_router_refusing_weights_leaves_the_endpoint_unchanged(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)
    before = await describe(service, "ab")
    deployer.fail_next("set_weights", DeploymentError("Endpoint ab has no running fleet."))
    with pytest.raises(ValidationException) as refused:
        await service.dispatch(
            "UpdateEndpointWeightsAndCapacities",
            {
                "EndpointName": "ab",
                "DesiredWeightsAndCapacities": [{"VariantName": "A", "DesiredWeight": 5}],
            },
        )
    assert refused.value.message == (
        "The new weights could not be applied: Endpoint ab has no running fleet."
    )
    assert await describe(service, "ab") == before


async def test_failed_scaling_rolls_back(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)
    deployer.fail_next("scale", DeploymentError("no CPUs left"))
    await service.dispatch(
        "UpdateEndpointWeightsAndCapacities",
        {
            "EndpointName": "ab",
            "DesiredWeightsAndCapacities": [
                {"VariantName": "A", "DesiredWeight": 4, "DesiredInstanceCount": 2}
            ],
        },
    )
    await service.settle()
    described = await describe(service, "ab")
    assert described["EndpointStatus"] == "InService"
    assert described["FailureReason"] == (
        "Failed to update the endpoint's weights and capacities: no CPUs left"
    )
    a = variants_by_name(described)["A"]
    assert (a["CurrentWeight"], a["DesiredWeight"]) == (1.0, 1.0)
    assert (a["CurrentInstanceCount"], a["DesiredInstanceCount"]) == (1, 1)
    assert deployer.weights["ab"] == {"A": 1.0, "B": 1.0}
    assert deployer.methods("ab")[-3:] == [
        ("scale", ("A", 2)),
        ("set_weights", {"A": 1.0, "B": 1.0}),
        ("scale", ("A", 1)),
    ]


async def _green_config(service: ControlService) -> None:
    await create_model(service, "m3")
    await create_config(
        service, "green", [variant("A", "m3", weight=5), variant("C", "m3", weight=2)]
    )


async def test_blue_green_update_order_and_states(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)
    await _green_config(service)
    deployer.hold("deploy")
    answer = await service.dispatch(
        "UpdateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "green"}
    )
    assert check_output("UpdateEndpoint", answer) == {"EndpointArn": f"{ACCOUNT_ARN}:endpoint/ab"}
    await deployer.entered("deploy")

    updating = await describe(service, "ab")
    check_output("DescribeEndpoint", updating)
    assert updating["EndpointStatus"] == "Updating"
    assert updating["EndpointConfigName"] == "ab-cfg"  # blue still serves
    assert set(variants_by_name(updating)) == {"A", "B"}
    pending = updating["PendingDeploymentSummary"]
    assert isinstance(pending, dict)
    assert pending["EndpointConfigName"] == "green"
    assert [v["VariantName"] for v in pending["ProductionVariants"]] == ["A", "C"]
    assert pending["ProductionVariants"][0]["InstanceType"] == "ml.m5.large"
    assert pending["ProductionVariants"][0]["VariantStatus"][0]["Status"] == "Creating"
    cases: list[tuple[str, dict[str, object]]] = [
        ("UpdateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "green"}),
        (
            "UpdateEndpointWeightsAndCapacities",
            {
                "EndpointName": "ab",
                "DesiredWeightsAndCapacities": [{"VariantName": "A", "DesiredWeight": 1}],
            },
        ),
        ("DeleteEndpoint", {"EndpointName": "ab"}),
    ]
    for operation, body in cases:
        with pytest.raises(ValidationException) as busy:
            await service.dispatch(operation, body)
        assert busy.value.message == IN_PROGRESS

    deployer.release("deploy")
    await service.settle()
    # Green is deployed while blue serves, switched to in one step, then blue is retired.
    assert deployer.methods("ab") == [
        ("deploy", 1),
        ("activate", 1),
        ("deploy", 2),
        ("activate", 2),
        ("retire", 1),
    ]
    done = await describe(service, "ab")
    check_output("DescribeEndpoint", done)
    assert done["EndpointStatus"] == "InService"
    assert done["EndpointConfigName"] == "green"
    assert "PendingDeploymentSummary" not in done
    weights = {n: v["CurrentWeight"] for n, v in variants_by_name(done).items()}
    assert weights == {"A": 5.0, "C": 2.0}  # no Retain: the new configuration's values


async def test_failed_green_keeps_blue(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)
    await _green_config(service)
    deployer.fail_next("deploy", DeploymentError("instance A-0 of green did not answer /ping"))
    await service.dispatch("UpdateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "green"})
    await service.settle()
    described = await describe(service, "ab")
    check_output("DescribeEndpoint", described)
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == "ab-cfg"
    assert set(variants_by_name(described)) == {"A", "B"}
    assert "PendingDeploymentSummary" not in described
    assert described["FailureReason"] == (
        'Failed to update endpoint to endpoint configuration "green"; the endpoint still serves '
        "its previous configuration. instance A-0 of green did not answer /ping"
    )
    assert ("activate", 2) not in deployer.methods("ab")
    assert ("retire", 1) not in deployer.methods("ab")
    assert deployer.live["ab"].generation == 1
    # The next update clears the reason.
    await service.dispatch("UpdateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "green"})
    await service.settle()
    described = await describe(service, "ab")
    assert described["EndpointConfigName"] == "green"
    assert "FailureReason" not in described


async def test_update_times_out_and_keeps_blue(
    service: ControlService,
    settings: Settings,
    deployer: RecordingDeployer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await two_variant_endpoint(service, settings)
    await _green_config(service)
    real_timeout = asyncio.timeout
    # 600 s is the least MaximumExecutionTimeoutInSeconds; the test's clock runs 10^4 times faster.
    monkeypatch.setattr(
        asyncio, "timeout", lambda delay: real_timeout(None if delay is None else delay / 10_000)
    )
    deployer.hold("deploy")
    deployment_config = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
            "MaximumExecutionTimeoutInSeconds": 600,
        }
    }
    await service.dispatch(
        "UpdateEndpoint",
        {
            "EndpointName": "ab",
            "EndpointConfigName": "green",
            "DeploymentConfig": deployment_config,
        },
    )
    await service.settle()
    described = await describe(service, "ab")
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == "ab-cfg"
    assert "MaximumExecutionTimeoutInSeconds (600 s)" in str(described["FailureReason"])
    assert described["LastDeploymentConfig"] == deployment_config
    assert deployer.methods("ab")[-1] == ("retire", 2)
    deployer.release("deploy")


@pytest.mark.parametrize(
    ("retain", "exclude", "expected"),
    [
        (False, [], {"A": (5.0, 1), "C": (2.0, 1)}),
        (True, [], {"A": (3.0, 2), "C": (2.0, 1)}),
        (True, ["DesiredWeight"], {"A": (5.0, 2), "C": (2.0, 1)}),
        (True, ["DesiredInstanceCount"], {"A": (3.0, 1), "C": (2.0, 1)}),
        (
            True,
            ["DesiredWeight", "DesiredInstanceCount", "DataCaptureConfig"],
            {"A": (5.0, 1), "C": (2.0, 1)},
        ),
        # Exclusions only matter with RetainAllVariantProperties.
        (False, ["DesiredWeight"], {"A": (5.0, 1), "C": (2.0, 1)}),
    ],
)
async def test_retain_and_exclude(
    service: ControlService,
    settings: Settings,
    deployer: RecordingDeployer,
    retain: bool,
    exclude: list[str],
    expected: dict[str, tuple[float, int]],
) -> None:
    await two_variant_endpoint(service, settings)
    await service.dispatch(
        "UpdateEndpointWeightsAndCapacities",
        {
            "EndpointName": "ab",
            "DesiredWeightsAndCapacities": [
                {"VariantName": "A", "DesiredWeight": 3, "DesiredInstanceCount": 2}
            ],
        },
    )
    await service.settle()
    await _green_config(service)
    await service.dispatch(
        "UpdateEndpoint",
        {
            "EndpointName": "ab",
            "EndpointConfigName": "green",
            "RetainAllVariantProperties": retain,
            "ExcludeRetainedVariantProperties": [{"VariantPropertyType": p} for p in exclude],
        },
    )
    await service.settle()
    described = variants_by_name(await describe(service, "ab"))
    assert {
        name: (v["DesiredWeight"], v["DesiredInstanceCount"]) for name, v in described.items()
    } == expected
    green = deployer.plans[-1]
    assert {v.variant_name: (v.weight, v.instance_count) for v in green.variants} == expected


async def test_termination_wait_bakes_green_before_retiring_blue(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)
    await _green_config(service)
    deployer.hold("retire")
    await service.dispatch(
        "UpdateEndpoint",
        {
            "EndpointName": "ab",
            "EndpointConfigName": "green",
            "DeploymentConfig": {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {
                        "Type": "ALL_AT_ONCE",
                        "WaitIntervalInSeconds": 0,
                    },
                    "TerminationWaitInSeconds": 0,
                }
            },
        },
    )
    await deployer.entered("retire")
    switched = await describe(service, "ab")
    # Green took the traffic: it is what the endpoint runs now, blue is being retired.
    assert switched["EndpointStatus"] == "Updating"
    assert switched["EndpointConfigName"] == "green"
    assert "PendingDeploymentSummary" not in switched
    deployer.release("retire")
    await service.settle()
    assert (await describe(service, "ab"))["EndpointStatus"] == "InService"


async def test_delete_endpoint(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)
    deployer.hold("remove")
    assert (
        check_output(
            "DeleteEndpoint", await service.dispatch("DeleteEndpoint", {"EndpointName": "ab"})
        )
        == {}
    )
    await deployer.entered("remove")
    assert (await describe(service, "ab"))["EndpointStatus"] == "Deleting"
    with pytest.raises(ValidationException) as busy:
        await service.dispatch("DeleteEndpoint", {"EndpointName": "ab"})
    assert busy.value.message == IN_PROGRESS
    deployer.release("remove")
    await service.settle()
    with pytest.raises(ValidationException) as gone:
        await describe(service, "ab")
    assert gone.value.message == f'Could not find endpoint "{ACCOUNT_ARN}:endpoint/ab".'
    # The configuration and the models stay.
    await service.dispatch("DescribeEndpointConfig", {"EndpointConfigName": "ab-cfg"})
    await service.dispatch("DescribeModel", {"ModelName": "m1"})
    # The name can be used again.
    await service.dispatch("CreateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "ab-cfg"})
    await service.settle()
    assert (await describe(service, "ab"))["EndpointStatus"] == "InService"


async def test_failed_removal_leaves_a_failed_endpoint(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)
    deployer.fail_next("remove", DeploymentError("workers did not stop"))
    await service.dispatch("DeleteEndpoint", {"EndpointName": "ab"})
    await service.settle()
    described = await describe(service, "ab")
    assert described["EndpointStatus"] == "Failed"
    assert described["FailureReason"] == "Failed to delete the endpoint: workers did not stop"
    await service.dispatch("DeleteEndpoint", {"EndpointName": "ab"})
    await service.settle()
    with pytest.raises(ValidationException):
        await describe(service, "ab")


async def test_deleting_a_live_endpoints_model_and_config_is_allowed(
    service: ControlService, settings: Settings
) -> None:
    await two_variant_endpoint(service, settings)
    await service.dispatch("DeleteEndpointConfig", {"EndpointConfigName": "ab-cfg"})
    await service.dispatch("DeleteModel", {"ModelName": "m1"})
    described = await describe(service, "ab")
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == "ab-cfg"


async def test_store_calls_run_off_the_event_loop(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    threads: set[str] = set()

    class WatchedStore(Store):
        def get_endpoint(self, name: str):  # type: ignore[no-untyped-def]
            threads.add(threading.current_thread().name)
            return super().get_endpoint(name)

    from tests.control.conftest import INSTANCE_VCPUS, state_file

    store = WatchedStore.open(state_file(settings))
    service = ControlService(settings, store, deployer, instance_vcpus=INSTANCE_VCPUS)
    await service.start()
    try:
        with pytest.raises(ValidationException):
            await describe(service, "ab")
    finally:
        await service.close()
    assert threads
    assert all(name.startswith("splitserve-store") for name in threads)
