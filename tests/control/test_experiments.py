"""Inference experiments (shadow tests) in the control plane: each operation, its refusals, the
status machine over the recording deployer, the schedule, and a restart halfway."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from splitserve.config import Settings
from splitserve.control import experiment_runner
from splitserve.control.service import ControlService
from splitserve.errors import (
    ConflictException,
    DeploymentError,
    InferenceExperimentNotFound,
    ResourceInUse,
    ValidationException,
)
from tests.control.conftest import (
    ACCOUNT_ARN,
    ROLE,
    RecordingDeployer,
    create_config,
    create_model,
    describe,
    open_service,
    two_variant_endpoint,
    variant,
    write_artifact,
)
from tests.control.shapes import check_output

EXPERIMENT_ARN = f"{ACCOUNT_ARN}:inference-experiment"
HOUR = 3600.0


def model_variant(
    name: str, model: str, count: int = 1, instance_type: str = "ml.m5.large"
) -> dict[str, object]:
    """One ModelVariantConfig."""
    return {
        "ModelName": model,
        "VariantName": name,
        "InfrastructureConfig": {
            "InfrastructureType": "RealTimeInference",
            "RealTimeInferenceConfig": {"InstanceType": instance_type, "InstanceCount": count},
        },
    }


def experiment(name: str = "shadow-test", **changes: object) -> dict[str, object]:
    """A CreateInferenceExperiment request: production A on m1, shadow S on m2 at 50 %, starting
    in an hour (so it waits for StartInferenceExperiment)."""
    body: dict[str, object] = {
        "Name": name,
        "Type": "ShadowMode",
        "RoleArn": ROLE,
        "EndpointName": "ep",
        "Schedule": {"StartTime": time.time() + HOUR, "EndTime": time.time() + 2 * HOUR},
        "ModelVariants": [model_variant("A", "m1"), model_variant("S", "m2")],
        "ShadowModeConfig": {
            "SourceModelVariantName": "A",
            "ShadowModelVariants": [{"ShadowModelVariantName": "S", "SamplingPercentage": 50}],
        },
    }
    body.update(changes)
    return body


async def endpoint_with_one_variant(service: ControlService, settings: Settings) -> None:
    """Models m1, m2, m3; endpoint `ep` InService with production variant A on m1."""
    write_artifact(settings)
    for name in ("m1", "m2", "m3"):
        await create_model(service, name)
    await create_config(service, "ep-cfg", [variant("A", "m1")])
    await service.dispatch("CreateEndpoint", {"EndpointName": "ep", "EndpointConfigName": "ep-cfg"})
    await service.settle()


async def describe_experiment(service: ControlService, name: str = "shadow-test") -> dict[str, Any]:
    """DescribeInferenceExperiment, checked against botocore's output shape."""
    return check_output(
        "DescribeInferenceExperiment",
        await service.dispatch("DescribeInferenceExperiment", {"Name": name}),
    )


def shadows(described: dict[str, Any]) -> list[tuple[str, float]]:
    """DescribeEndpoint's shadow variants as (name, current weight)."""
    return [
        (v["VariantName"], v["CurrentWeight"])
        for v in described.get("ShadowProductionVariants", [])
    ]


async def running(service: ControlService, body: dict[str, object] | None = None) -> None:
    """Create and start the experiment, and let it reach Running."""
    await service.dispatch("CreateInferenceExperiment", body or experiment())
    await service.dispatch("StartInferenceExperiment", {"Name": "shadow-test"})
    await service.settle_experiments()
    assert (await describe_experiment(service))["Status"] == "Running"


async def test_created_waits_for_its_start_then_runs_resizes_and_promotes(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await endpoint_with_one_variant(service, settings)
    created = await service.dispatch("CreateInferenceExperiment", experiment())
    assert created == {"InferenceExperimentArn": f"{EXPERIMENT_ARN}/shadow-test"}
    await service.settle_experiments()
    described = await describe_experiment(service)
    # StartTime is an hour away: it waits, and the endpoint has no shadow yet.
    assert described["Status"] == "Created"
    assert described["EndpointMetadata"]["EndpointStatus"] == "InService"
    assert [(v["VariantName"], v["Status"]) for v in described["ModelVariants"]] == [
        ("A", "InService"),
        ("S", "Creating"),
    ]
    assert shadows(await describe(service, "ep")) == []

    await service.dispatch("StartInferenceExperiment", {"Name": "shadow-test"})
    assert (await describe_experiment(service))["Status"] == "Starting"
    await service.settle_experiments()
    described = await describe_experiment(service)
    assert described["Status"] == "Running"
    assert [v["Status"] for v in described["ModelVariants"]] == ["InService", "InService"]
    endpoint = await describe(service, "ep")
    assert endpoint["EndpointConfigName"] == described["EndpointMetadata"]["EndpointConfigName"]
    assert endpoint["EndpointConfigName"].startswith("shadow-test-start-")
    assert shadows(endpoint) == [("S", 0.5)]
    plan = deployer.live["ep"]
    assert [(v.variant_name, v.shadow) for v in plan.variants] == [("A", False), ("S", True)]

    # Resize: the shadow's weight (its copy share) changes in place, without a redeployment.
    deployments = len(deployer.plans)
    await service.dispatch(
        "UpdateInferenceExperiment",
        {
            "Name": "shadow-test",
            "ShadowModeConfig": {
                "SourceModelVariantName": "A",
                "ShadowModelVariants": [{"ShadowModelVariantName": "S", "SamplingPercentage": 20}],
            },
        },
    )
    assert (await describe_experiment(service))["Status"] == "Updating"
    await service.settle_experiments()
    assert (await describe_experiment(service))["Status"] == "Running"
    assert shadows(await describe(service, "ep")) == [("S", 0.2)]
    assert deployer.weights["ep"]["S"] == pytest.approx(0.2)
    assert len(deployer.plans) == deployments

    # Promote: production A now runs the shadow's model, and the shadow is gone.
    await service.dispatch(
        "StopInferenceExperiment",
        {"Name": "shadow-test", "ModelVariantActions": {"A": "Remove", "S": "Promote"}},
    )
    assert (await describe_experiment(service))["Status"] == "Stopping"
    await service.settle_experiments()
    described = await describe_experiment(service)
    assert described["Status"] == "Completed"
    assert "CompletionTime" in described
    assert [(v["VariantName"], v["Status"]) for v in described["ModelVariants"]] == [
        ("A", "InService"),
        ("S", "Deleted"),
    ]
    endpoint = await describe(service, "ep")
    assert shadows(endpoint) == []
    assert [(v.variant_name, v.model_name, v.shadow) for v in deployer.live["ep"].variants] == [
        ("A", "m2", False)
    ]


async def test_remove_and_retain_and_data_storage(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await endpoint_with_one_variant(service, settings)
    storage = {
        "Destination": "s3://capture/experiment",
        "ContentType": {"CsvContentTypes": ["text/csv"]},
    }
    await running(service, experiment(DataStorageConfig=storage))
    capture = deployer.live["ep"].data_capture
    assert capture is not None
    assert capture.destination_s3_uri == "s3://capture/experiment"
    assert (capture.sampling_percentage, capture.capture_input, capture.capture_output) == (
        100,
        True,
        True,
    )
    assert capture.csv_content_types == ("text/csv",)
    await service.dispatch(
        "StopInferenceExperiment",
        {"Name": "shadow-test", "ModelVariantActions": {"S": "Retain"}, "Reason": "keep it"},
    )
    await service.settle_experiments()
    described = await describe_experiment(service)
    assert (described["Status"], described["StatusReason"]) == ("Completed", "keep it")
    assert shadows(await describe(service, "ep")) == [("S", 0.5)]

    # A second experiment on the same endpoint, with the retained shadow, then Remove.
    second = experiment("second")
    await service.dispatch("CreateInferenceExperiment", second)
    await service.dispatch("StartInferenceExperiment", {"Name": "second"})
    await service.settle_experiments()
    await service.dispatch(
        "StopInferenceExperiment",
        {"Name": "second", "ModelVariantActions": {"S": "Remove"}, "DesiredState": "Cancelled"},
    )
    await service.settle_experiments()
    assert (await describe_experiment(service, "second"))["Status"] == "Cancelled"
    assert shadows(await describe(service, "ep")) == []
    assert [(v.variant_name, v.model_name) for v in deployer.live["ep"].variants] == [("A", "m1")]


async def test_without_a_schedule_it_starts_at_once_and_its_end_time_completes_it(
    service: ControlService, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    await endpoint_with_one_variant(service, settings)
    body = experiment()
    del body["Schedule"]
    await service.dispatch("CreateInferenceExperiment", body)
    await service.settle_experiments()
    described = await describe_experiment(service)
    assert described["Status"] == "Running"
    schedule = described["Schedule"]
    week = (schedule["EndTime"] - schedule["StartTime"]).total_seconds()
    assert week == pytest.approx(7 * 24 * HOUR)
    # Eight days later (the runner's clock only): the end time passed.
    later = time.time() + 8 * 24 * HOUR
    monkeypatch.setattr(experiment_runner, "time", SimpleNamespace(time=lambda: later))
    await service.settle_experiments()
    described = await describe_experiment(service)
    assert described["Status"] == "Completed"
    assert described["StatusReason"] == "The inference experiment reached its scheduled end time."
    assert shadows(await describe(service, "ep")) == []


async def test_a_restart_halfway_resumes(settings: Settings, deployer: RecordingDeployer) -> None:
    service = await open_service(settings, deployer)
    try:
        await endpoint_with_one_variant(service, settings)
        await service.dispatch("CreateInferenceExperiment", experiment())
        deployer.hold("deploy")
        await service.dispatch("StartInferenceExperiment", {"Name": "shadow-test"})
        for _ in range(5):  # name the configuration, create it and issue the update
            await service._experiment_runner.reconcile_all()  # one step at a time
        await deployer.entered("deploy")
    finally:
        await service.close()
    deployer.release("deploy")
    service = await open_service(settings, deployer)
    try:
        assert (await describe_experiment(service))["Status"] == "Starting"
        await service.settle_experiments()
        described = await describe_experiment(service)
        assert described["Status"] == "Running", described.get("StatusReason")
        assert shadows(await describe(service, "ep")) == [("S", 0.5)]
    finally:
        await service.close()
    # And Running survives another restart as it is.
    service = await open_service(settings, deployer)
    try:
        assert (await describe_experiment(service))["Status"] == "Running"
    finally:
        await service.close()


async def test_list_and_delete(service: ControlService, settings: Settings) -> None:
    await endpoint_with_one_variant(service, settings)
    await service.dispatch("CreateInferenceExperiment", experiment("first"))
    await service.dispatch(
        "StopInferenceExperiment",
        {"Name": "first", "ModelVariantActions": {"S": "Remove"}, "DesiredState": "Cancelled"},
    )
    # A Created one stops at once, without touching the endpoint.
    assert (await describe_experiment(service, "first"))["Status"] == "Cancelled"
    await service.dispatch("CreateInferenceExperiment", experiment("second"))
    listed = check_output(
        "ListInferenceExperiments",
        await service.dispatch(
            "ListInferenceExperiments", {"SortBy": "Name", "SortOrder": "Ascending"}
        ),
    )
    assert [(e["Name"], e["Status"]) for e in listed["InferenceExperiments"]] == [
        ("first", "Cancelled"),
        ("second", "Created"),
    ]
    listed = check_output(
        "ListInferenceExperiments",
        await service.dispatch("ListInferenceExperiments", {"StatusEquals": "Created"}),
    )
    assert [e["Name"] for e in listed["InferenceExperiments"]] == ["second"]
    assert await service.dispatch("DeleteInferenceExperiment", {"Name": "first"}) == {
        "InferenceExperimentArn": f"{EXPERIMENT_ARN}/first"
    }
    with pytest.raises(InferenceExperimentNotFound, match='Could not find inference experiment "'):
        await service.dispatch("DescribeInferenceExperiment", {"Name": "first"})


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (
            {
                "ShadowModeConfig": {
                    "SourceModelVariantName": "A",
                    "ShadowModelVariants": [
                        {"ShadowModelVariantName": "S", "SamplingPercentage": 101}
                    ],
                }
            },
            ValidationException,
            "Value '101' at 'shadowModeConfig.shadowModelVariants.1.member.samplingPercentage' "
            "failed to satisfy constraint: Member must have value less than or equal to 100",
        ),
        (
            {
                "ShadowModeConfig": {
                    "SourceModelVariantName": "A",
                    "ShadowModelVariants": [
                        {"ShadowModelVariantName": "S", "SamplingPercentage": -1}
                    ],
                }
            },
            ValidationException,
            "Member must have value greater than or equal to 0",
        ),
        (
            {
                "ShadowModeConfig": {
                    "SourceModelVariantName": "A",
                    "ShadowModelVariants": [
                        {"ShadowModelVariantName": "S", "SamplingPercentage": 10},
                        {"ShadowModelVariantName": "T", "SamplingPercentage": 10},
                    ],
                }
            },
            ValidationException,
            "at 'shadowModeConfig.shadowModelVariants' failed to satisfy constraint: Member must "
            "have length less than or equal to 1",
        ),
        ({"Name": "bad_name"}, ValidationException, "at 'name' failed to satisfy constraint"),
        ({"Type": "AB"}, ValidationException, "Member must satisfy enum value set: [ShadowMode]"),
        (
            {"ModelVariants": [model_variant("A", "m1")]},
            ValidationException,
            'ModelVariants has no variant "S", which ShadowModeConfig names',
        ),
        (
            {"ModelVariants": [model_variant("A", "m1"), model_variant("T", "m2")]},
            ValidationException,
            'ModelVariants has no variant "S"',
        ),
        (
            {
                "ModelVariants": [
                    model_variant("A", "m1"),
                    model_variant("S", "m2", instance_type="ml.nope"),
                ]
            },
            ValidationException,
            "Value 'ml.nope' at 'modelVariants.2.member.infrastructureConfig."
            "realTimeInferenceConfig.instanceType' failed to satisfy constraint",
        ),
        (
            {"ModelVariants": [model_variant("A", "m1"), model_variant("S", "missing")]},
            ValidationException,
            f'Could not find model "{ACCOUNT_ARN}:model/missing".',
        ),
        (
            {"EndpointName": "nope"},
            ValidationException,
            f'Could not find endpoint "{ACCOUNT_ARN}:endpoint/nope".',
        ),
        (
            {
                "ModelVariants": [model_variant("B", "m1"), model_variant("S", "m2")],
                "ShadowModeConfig": {
                    "SourceModelVariantName": "B",
                    "ShadowModelVariants": [
                        {"ShadowModelVariantName": "S", "SamplingPercentage": 5}
                    ],
                },
            },
            ValidationException,
            'The source variant "B" is not a production variant of endpoint',
        ),
        (
            {
                "ShadowModeConfig": {
                    "SourceModelVariantName": "A",
                    "ShadowModelVariants": [
                        {"ShadowModelVariantName": "A", "SamplingPercentage": 5}
                    ],
                },
            },
            ValidationException,
            'ShadowModeConfig names "A" as both the source and the shadow variant.',
        ),
        (
            {"Schedule": {"StartTime": time.time() + 2 * HOUR, "EndTime": time.time() + HOUR}},
            ValidationException,
            "The Schedule's EndTime must be after its StartTime.",
        ),
        (
            {"Schedule": {"EndTime": time.time() + 31 * 24 * HOUR}},
            ValidationException,
            "An inference experiment runs for at most 30 days",
        ),
        (
            {"DataStorageConfig": {"Destination": "s3://../escape"}},
            ValidationException,
            "dataStorageConfig.destination",
        ),
    ],
)
async def test_create_refusals(
    service: ControlService,
    settings: Settings,
    changes: dict[str, object],
    error: type[Exception],
    message: str,
) -> None:
    await endpoint_with_one_variant(service, settings)
    with pytest.raises(error) as raised:
        await service.dispatch("CreateInferenceExperiment", {**experiment(), **changes})
    assert message in str(raised.value)


async def test_one_experiment_per_name_and_per_endpoint(
    service: ControlService, settings: Settings
) -> None:
    await endpoint_with_one_variant(service, settings)
    await service.dispatch("CreateInferenceExperiment", experiment())
    with pytest.raises(ResourceInUse, match="Cannot create already existing inference experiment"):
        await service.dispatch("CreateInferenceExperiment", experiment())
    with pytest.raises(
        ResourceInUse, match='already has an inference experiment that is not over: "shadow-test"'
    ):
        await service.dispatch("CreateInferenceExperiment", experiment("other"))


async def test_status_conflicts_and_stop_refusals(
    service: ControlService, settings: Settings
) -> None:
    await endpoint_with_one_variant(service, settings)
    with pytest.raises(InferenceExperimentNotFound):
        await service.dispatch("StartInferenceExperiment", {"Name": "shadow-test"})
    await running(service)
    arn = f"{EXPERIMENT_ARN}/shadow-test"
    with pytest.raises(
        ConflictException,
        match=f'Cannot start inference experiment "{arn}" in status Running: it must be Created.',
    ):
        await service.dispatch("StartInferenceExperiment", {"Name": "shadow-test"})
    with pytest.raises(ConflictException, match="Cannot delete inference experiment"):
        await service.dispatch("DeleteInferenceExperiment", {"Name": "shadow-test"})
    for actions, message in [
        ({}, "Member must have length greater than or equal to 1"),
        ({"Z": "Remove"}, 'ModelVariantActions names variant "Z"'),
        ({"A": "Promote"}, 'The variant "A" is the production variant already'),
        (
            {"A": "Remove"},
            'Removing the production variant "A" needs the shadow variant "S" promoted',
        ),
        ({"A": "Retain", "S": "Promote"}, 'Promoting "S" replaces the production variant "A"'),
        ({"S": "Drop"}, "Member must satisfy enum value set: [Retain, Remove, Promote]"),
    ]:
        with pytest.raises(ValidationException) as raised:
            await service.dispatch(
                "StopInferenceExperiment", {"Name": "shadow-test", "ModelVariantActions": actions}
            )
        assert message in str(raised.value), actions
    with pytest.raises(
        ValidationException, match='DesiredModelVariants gives variant "S" the model "m3"'
    ):
        await service.dispatch(
            "StopInferenceExperiment",
            {
                "Name": "shadow-test",
                "ModelVariantActions": {"S": "Promote"},
                "DesiredModelVariants": [model_variant("S", "m3")],
            },
        )
    # What a running experiment cannot change.
    refused: list[tuple[dict[str, object], str]] = [
        (
            {"Schedule": {"StartTime": time.time() + 5 * HOUR}},
            "The StartTime of a running inference experiment cannot change",
        ),
        (
            {"DataStorageConfig": {"Destination": "s3://capture/x"}},
            "The DataStorageConfig of a running inference experiment cannot change",
        ),
        (
            {"ModelVariants": [model_variant("S", "m3")]},
            'The model and instance type of variant "S" cannot change',
        ),
        (
            {
                "ShadowModeConfig": {
                    "SourceModelVariantName": "A",
                    "ShadowModelVariants": [
                        {"ShadowModelVariantName": "T", "SamplingPercentage": 5}
                    ],
                }
            },
            "The variants of a running inference experiment cannot change",
        ),
    ]
    for update, message in refused:
        with pytest.raises(ValidationException) as raised:
            await service.dispatch("UpdateInferenceExperiment", {"Name": "shadow-test", **update})
        assert message in str(raised.value), update
    # The end time and the shadow's instance count can change while it runs.
    await service.dispatch(
        "UpdateInferenceExperiment",
        {
            "Name": "shadow-test",
            "Schedule": {"EndTime": time.time() + 3 * HOUR},
            "ModelVariants": [model_variant("S", "m2", count=2)],
        },
    )
    await service.settle_experiments()
    assert (await describe_experiment(service))["Status"] == "Running"
    (shadow,) = (await describe(service, "ep"))["ShadowProductionVariants"]
    assert shadow["CurrentInstanceCount"] == 2
    # Stopping, then Completed: neither can be updated.
    await service.dispatch(
        "StopInferenceExperiment", {"Name": "shadow-test", "ModelVariantActions": {"S": "Remove"}}
    )
    await service.settle_experiments()
    with pytest.raises(ConflictException, match="in status Completed"):
        await service.dispatch(
            "UpdateInferenceExperiment", {"Name": "shadow-test", "Description": "x"}
        )
    with pytest.raises(ConflictException, match="Cannot stop inference experiment"):
        await service.dispatch(
            "StopInferenceExperiment",
            {"Name": "shadow-test", "ModelVariantActions": {"S": "Remove"}},
        )


async def test_a_deleted_endpoint_cancels_the_experiment(
    service: ControlService, settings: Settings
) -> None:
    await endpoint_with_one_variant(service, settings)
    await running(service)
    await service.dispatch("DeleteEndpoint", {"EndpointName": "ep"})
    await service.settle()
    await service.settle_experiments()
    described = await describe_experiment(service)
    assert described["Status"] == "Cancelled"
    assert described["StatusReason"] == 'The endpoint "ep" was deleted.'
    assert described["EndpointMetadata"] == {"EndpointName": "ep"}


async def test_a_failed_start_cancels_with_the_endpoints_reason(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await endpoint_with_one_variant(service, settings)
    await service.dispatch("CreateInferenceExperiment", experiment())
    deployer.fail_next("deploy", DeploymentError("the shadow's instance did not start"))
    await service.dispatch("StartInferenceExperiment", {"Name": "shadow-test"})
    await service.settle_experiments()
    described = await describe_experiment(service)
    assert described["Status"] == "Cancelled"
    assert "did not take the experiment's configuration" in described["StatusReason"]
    assert "the shadow's instance did not start" in described["StatusReason"]
    # The endpoint goes on serving production as before.
    endpoint = await describe(service, "ep")
    assert (endpoint["EndpointStatus"], endpoint["EndpointConfigName"]) == ("InService", "ep-cfg")


async def test_the_shadow_cannot_be_a_production_variant(
    service: ControlService, settings: Settings
) -> None:
    write_artifact(settings)
    for name in ("m1", "m2"):
        await create_model(service, name)
    await create_config(service, "ep-cfg", [variant("A", "m1"), variant("B", "m2")])
    await service.dispatch("CreateEndpoint", {"EndpointName": "ep", "EndpointConfigName": "ep-cfg"})
    await service.settle()
    body = experiment(
        ModelVariants=[model_variant("A", "m1"), model_variant("B", "m2")],
        ShadowModeConfig={
            "SourceModelVariantName": "A",
            "ShadowModelVariants": [{"ShadowModelVariantName": "B", "SamplingPercentage": 5}],
        },
    )
    with pytest.raises(ValidationException, match='The shadow variant "B" is a production variant'):
        await service.dispatch("CreateInferenceExperiment", body)


async def test_a_created_experiment_starts_at_its_start_time_and_takes_any_change(
    service: ControlService, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    await endpoint_with_one_variant(service, settings)
    await service.dispatch("CreateInferenceExperiment", experiment())
    # Before it starts, anything it was created with may change (and is checked again).
    start = time.time() + 2 * HOUR
    await service.dispatch(
        "UpdateInferenceExperiment",
        {
            "Name": "shadow-test",
            "Description": "later",
            "Schedule": {"StartTime": start, "EndTime": start + HOUR},
            "ModelVariants": [model_variant("S", "m3", count=2)],
            "ShadowModeConfig": {
                "SourceModelVariantName": "A",
                "ShadowModelVariants": [{"ShadowModelVariantName": "S", "SamplingPercentage": 25}],
            },
        },
    )
    with pytest.raises(ValidationException, match="Could not find model"):
        await service.dispatch(
            "UpdateInferenceExperiment",
            {"Name": "shadow-test", "ModelVariants": [model_variant("S", "gone")]},
        )
    described = await describe_experiment(service)
    assert (described["Status"], described["Description"]) == ("Created", "later")
    assert described["ModelVariants"][1]["ModelName"] == "m3"
    # The runner's clock passes the start time: it starts by itself.
    later = start + 1
    monkeypatch.setattr(experiment_runner, "time", SimpleNamespace(time=lambda: later))
    await service.settle_experiments()
    assert (await describe_experiment(service))["Status"] == "Running"
    endpoint = await describe(service, "ep")
    (shadow,) = endpoint["ShadowProductionVariants"]
    assert (shadow["VariantName"], shadow["CurrentWeight"], shadow["CurrentInstanceCount"]) == (
        "S",
        0.25,
        2,
    )


async def test_a_stop_gives_the_endpoint_its_own_capture_back(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await endpoint_with_one_variant(service, settings)
    await running(service, experiment(DataStorageConfig={"Destination": "s3://capture/exp"}))
    live = deployer.live["ep"].data_capture
    assert live is not None
    assert live.destination_s3_uri == "s3://capture/exp"
    # A schedule change that gives only EndTime keeps the rest.
    before = await describe_experiment(service)
    end = time.time() + 5 * HOUR
    await service.dispatch(
        "UpdateInferenceExperiment", {"Name": "shadow-test", "Schedule": {"EndTime": end}}
    )
    after = await describe_experiment(service)
    assert after["Schedule"]["StartTime"] == before["Schedule"]["StartTime"]
    assert after["Schedule"]["EndTime"].timestamp() == pytest.approx(end)
    await service.dispatch(
        "StopInferenceExperiment",
        {"Name": "shadow-test", "ModelVariantActions": {"A": "Remove", "S": "Promote"}},
    )
    await service.settle_experiments()
    assert (await describe_experiment(service))["Status"] == "Completed"
    assert deployer.live["ep"].data_capture is None
    assert "DataCaptureConfig" not in await describe(service, "ep")


async def test_tags_of_an_experiment_arn_are_refused_by_name(
    service: ControlService, settings: Settings
) -> None:
    await endpoint_with_one_variant(service, settings)
    await service.dispatch("CreateInferenceExperiment", experiment())
    with pytest.raises(ValidationException) as raised:
        await service.dispatch("ListTags", {"ResourceArn": f"{EXPERIMENT_ARN}/shadow-test"})
    assert "inference-experiment" in str(raised.value)


async def test_beside_other_production_variants(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings, endpoint="ep", weights=(1.0, 3.0))
    await create_model(service, "m3")
    body = experiment(ModelVariants=[model_variant("A", "m1"), model_variant("S", "m3")])
    await running(service, body)
    # 50 % of all the endpoint's requests: half the production weights' sum.
    assert shadows(await describe(service, "ep")) == [("S", 2.0)]
    assert [(v.variant_name, v.model_name) for v in deployer.live["ep"].variants] == [
        ("A", "m1"),
        ("B", "m2"),
        ("S", "m3"),
    ]
    await service.dispatch(
        "StopInferenceExperiment",
        {"Name": "shadow-test", "ModelVariantActions": {"S": "Promote"}},
    )
    await service.settle_experiments()
    assert (await describe_experiment(service))["Status"] == "Completed"
    endpoint = await describe(service, "ep")
    assert [(v["VariantName"], v["CurrentWeight"]) for v in endpoint["ProductionVariants"]] == [
        ("A", 1.0),
        ("B", 3.0),
    ]
    assert [(v.variant_name, v.model_name) for v in deployer.live["ep"].variants] == [
        ("A", "m3"),
        ("B", "m2"),
    ]


async def test_a_created_experiment_can_rename_its_shadow(
    service: ControlService, settings: Settings
) -> None:
    await endpoint_with_one_variant(service, settings)
    await service.dispatch("CreateInferenceExperiment", experiment())
    await service.dispatch(
        "UpdateInferenceExperiment",
        {
            "Name": "shadow-test",
            "ModelVariants": [model_variant("A", "m1"), model_variant("T", "m3")],
            "ShadowModeConfig": {
                "SourceModelVariantName": "A",
                "ShadowModelVariants": [{"ShadowModelVariantName": "T", "SamplingPercentage": 5}],
            },
        },
    )
    described = await describe_experiment(service)
    assert [v["VariantName"] for v in described["ModelVariants"]] == ["A", "T"]
