"""Deployment guardrails (UpdateEndpoint's DeploymentConfig): validation, the step plan, and
stepped updates with auto-rollback driven through the service over the recording deployer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from splitserve.config import Settings
from splitserve.control.planning import RollingBatch, TrafficStep, rolling_batches, traffic_steps
from splitserve.control.ramp import ramp_shares, ramp_weights
from splitserve.control.service import ControlService
from splitserve.control.store import Store
from splitserve.errors import ValidationException
from tests.control.conftest import (
    INSTANCE_VCPUS,
    RecordingDeployer,
    create_config,
    create_model,
    describe,
    state_file,
    two_variant_endpoint,
    variant,
    write_artifact,
)
from tests.control.shapes import check_output


class FakeAlarms:
    """The alarm states a service's bakes read: `firing` are in ALARM; `polled` is set on
    every read, and `gate`, when set, holds each read until it is released."""

    def __init__(self) -> None:
        self.firing: set[str] = set()
        self.asked: list[list[str]] = []
        self.polled = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def in_alarm(self, alarm_names: Sequence[str]) -> list[str]:
        """The names of `alarm_names` in `firing`."""
        self.asked.append(list(alarm_names))
        self.polled.set()
        if self.gate is not None:
            await self.gate.wait()
        return [name for name in alarm_names if name in self.firing]


@pytest.fixture
def alarms() -> FakeAlarms:
    """No alarm in ALARM."""
    return FakeAlarms()


@pytest.fixture
async def guarded(
    settings: Settings, deployer: RecordingDeployer, alarms: FakeAlarms
) -> AsyncIterator[ControlService]:
    """A started service whose bakes read `alarms`."""
    service = ControlService(
        settings,
        Store.open(state_file(settings)),
        deployer,
        instance_vcpus=INSTANCE_VCPUS,
        alarms=alarms,
    )
    await service.start()
    try:
        yield service
    finally:
        await service.close()


def blue_green(
    routing_type: str = "CANARY",
    size: dict[str, object] | None = None,
    wait: int = 0,
    *,
    termination_wait: int | None = None,
    alarms: Sequence[str] = (),
) -> dict[str, Any]:
    """A DeploymentConfig with a BlueGreenUpdatePolicy."""
    routing: dict[str, object] = {"Type": routing_type, "WaitIntervalInSeconds": wait}
    if size is not None:
        routing["CanarySize" if routing_type == "CANARY" else "LinearStepSize"] = size
    policy: dict[str, object] = {"TrafficRoutingConfiguration": routing}
    if termination_wait is not None:
        policy["TerminationWaitInSeconds"] = termination_wait
    config: dict[str, Any] = {"BlueGreenUpdatePolicy": policy}
    if alarms:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in alarms]}
    return config


PERCENT_50 = {"Type": "CAPACITY_PERCENT", "Value": 50}


async def _green(service: ControlService, count: int = 2) -> None:
    await create_model(service, "m3")
    await create_config(
        service, "green", [variant("A", "m3", weight=3, count=count), variant("C", "m3")]
    )


async def _update(service: ControlService, deployment_config: dict[str, Any]) -> None:
    await service.dispatch(
        "UpdateEndpoint",
        {
            "EndpointName": "ab",
            "EndpointConfigName": "green",
            "DeploymentConfig": deployment_config,
        },
    )


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deployment_config", "message"),
    [
        (blue_green("CANARY"), "CanarySize must be specified when TrafficRoutingConfiguration"),
        (blue_green("LINEAR"), "LinearStepSize must be specified when TrafficRoutingConfiguration"),
        (
            {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {
                        "Type": "ALL_AT_ONCE",
                        "WaitIntervalInSeconds": 0,
                        "CanarySize": PERCENT_50,
                    }
                }
            },
            "CanarySize can only be specified when TrafficRoutingConfiguration Type is CANARY",
        ),
        (
            blue_green("CANARY", {"Type": "CAPACITY_PERCENT", "Value": 51}),
            "CanarySize Value 51 (CAPACITY_PERCENT) must be between 1 and 50 percent",
        ),
        (
            blue_green("LINEAR", {"Type": "CAPACITY_PERCENT", "Value": 9}),
            "LinearStepSize Value 9 (CAPACITY_PERCENT) must be between 10 and 50 percent",
        ),
        (
            blue_green("LINEAR", {"Type": "CAPACITY_PERCENT", "Value": 60}),
            "LinearStepSize Value 60 (CAPACITY_PERCENT) must be between 10 and 50 percent",
        ),
        # The new configuration has 3 production instances: 2 is over half of them.
        (
            blue_green("CANARY", {"Type": "INSTANCE_COUNT", "Value": 2}),
            "CanarySize Value 2 (INSTANCE_COUNT) must be between 1 and 50 percent of the new "
            "endpoint configuration's 3 production instance(s)",
        ),
        (
            blue_green("CANARY", {"Type": "INSTANCE_COUNT", "Value": 0}),
            "Member must have value greater than or equal to 1",
        ),
        (
            blue_green("CANARY", {"Type": "INSTANCES", "Value": 1}),
            "Member must satisfy enum value set: [INSTANCE_COUNT, CAPACITY_PERCENT]",
        ),
        (blue_green("ALL_AT_ONCE", wait=3601), "Member must have value less than or equal to 3600"),
        (
            blue_green("ALL_AT_ONCE", termination_wait=-1),
            "Member must have value greater than or equal to 0",
        ),
        (
            {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {
                        "Type": "ALL_AT_ONCE",
                        "WaitIntervalInSeconds": 0,
                    },
                    "MaximumExecutionTimeoutInSeconds": 599,
                }
            },
            "Member must have value greater than or equal to 600",
        ),
        (
            {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {
                        "Type": "ALL_AT_ONCE",
                        "WaitIntervalInSeconds": 0,
                    },
                    "MaximumExecutionTimeoutInSeconds": 28801,
                }
            },
            "Member must have value less than or equal to 28800",
        ),
        (
            {**blue_green("ALL_AT_ONCE"), "AutoRollbackConfiguration": {"Alarms": []}},
            "Member must have length greater than or equal to 1",
        ),
        (
            blue_green("ALL_AT_ONCE", alarms=[f"alarm-{index}" for index in range(11)]),
            "Member must have length less than or equal to 10",
        ),
        (blue_green("ALL_AT_ONCE", alarms=["   "]), "Member must satisfy regular expression"),
        (blue_green("ALL_AT_ONCE", alarms=["x" * 256]), "Member must have length less than"),
        (
            {
                **blue_green("ALL_AT_ONCE"),
                "RollingUpdatePolicy": {
                    "MaximumBatchSize": PERCENT_50,
                    "WaitIntervalInSeconds": 0,
                },
            },
            "Only one update policy may be specified in DeploymentConfig",
        ),
        (
            {"RollingUpdatePolicy": {"MaximumBatchSize": PERCENT_50, "WaitIntervalInSeconds": 0}},
            "the new endpoint configuration's production variants (A, C) must be the "
            "endpoint's (A, B)",
        ),
        (
            {
                "RollingUpdatePolicy": {
                    "MaximumBatchSize": {"Type": "CAPACITY_PERCENT", "Value": 4},
                    "WaitIntervalInSeconds": 0,
                }
            },
            "MaximumBatchSize Value 4 (CAPACITY_PERCENT) must be between 5 and 50 percent",
        ),
        (
            {
                "RollingUpdatePolicy": {
                    "MaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 2},
                    "WaitIntervalInSeconds": 0,
                }
            },
            "MaximumBatchSize Value 2 (INSTANCE_COUNT) must be between 5 and 50 percent of the "
            "new endpoint configuration's 3 production instance(s)",
        ),
        (
            {
                "RollingUpdatePolicy": {
                    "MaximumBatchSize": PERCENT_50,
                    "WaitIntervalInSeconds": 0,
                    "RollbackMaximumBatchSize": {"Type": "CAPACITY_PERCENT", "Value": 101},
                }
            },
            "RollbackMaximumBatchSize Value 101 (CAPACITY_PERCENT) must be at most 100 percent",
        ),
        (
            {"RollingUpdatePolicy": {"MaximumBatchSize": PERCENT_50}},
            "'deploymentConfig.rollingUpdatePolicy.waitIntervalInSeconds'",
        ),
        (
            {
                "RollingUpdatePolicy": {
                    "MaximumBatchSize": PERCENT_50,
                    "WaitIntervalInSeconds": 0,
                    "MaximumExecutionTimeoutInSeconds": 10,
                }
            },
            "Member must have value greater than or equal to 600",
        ),
    ],
)
async def test_deployment_config_refusals(
    service: ControlService,
    settings: Settings,
    deployer: RecordingDeployer,
    deployment_config: dict[str, Any],
    message: str,
) -> None:
    await two_variant_endpoint(service, settings)
    await _green(service)
    before = deployer.methods("ab")
    with pytest.raises(ValidationException) as refused:
        await _update(service, deployment_config)
    assert message in refused.value.message
    assert deployer.methods("ab") == before
    assert (await describe(service, "ab"))["EndpointStatus"] == "InService"


async def test_create_endpoint_checks_the_deployment_config_too(
    service: ControlService, settings: Settings
) -> None:
    await two_variant_endpoint(service, settings)
    with pytest.raises(ValidationException, match="CanarySize must be specified"):
        await service.dispatch(
            "CreateEndpoint",
            {
                "EndpointName": "other",
                "EndpointConfigName": "ab-cfg",
                "DeploymentConfig": blue_green("CANARY"),
            },
        )


# --- the step plan --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deployment_config", "instances", "expected"),
    [
        (None, 3, [(1.0, 3)]),
        (blue_green("ALL_AT_ONCE"), 2, [(1.0, 2)]),
        (blue_green("CANARY", {"Type": "INSTANCE_COUNT", "Value": 1}), 4, [(0.25, 1), (1.0, 4)]),
        (blue_green("CANARY", PERCENT_50), 1, [(0.5, 1), (1.0, 1)]),
        (
            blue_green("LINEAR", {"Type": "CAPACITY_PERCENT", "Value": 30}),
            10,
            [(0.3, 3), (0.6, 6), (0.9, 9), (1.0, 10)],
        ),
        (
            blue_green("LINEAR", {"Type": "INSTANCE_COUNT", "Value": 2}),
            5,
            [(0.4, 2), (0.8, 4), (1.0, 5)],
        ),
        (blue_green("LINEAR", PERCENT_50), 2, [(0.5, 1), (1.0, 2)]),
    ],
)
def test_traffic_steps(
    deployment_config: dict[str, Any] | None,
    instances: int,
    expected: list[tuple[float, int]],
) -> None:
    steps = traffic_steps(deployment_config, instances)
    assert steps == tuple(TrafficStep(share, count) for share, count in expected)


# --- stepped updates ------------------------------------------------------------------------------


async def test_canary_update_shifts_in_two_steps_then_retires_blue(
    guarded: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(guarded, settings)
    await _green(guarded)
    deployment_config = blue_green(
        "CANARY", {"Type": "INSTANCE_COUNT", "Value": 1}, alarms=["errors"]
    )
    deployer.hold("shift")
    await _update(guarded, deployment_config)
    await deployer.entered("shift")
    activating = await describe(guarded, "ab")
    check_output("DescribeEndpoint", activating)
    assert activating["EndpointStatus"] == "Updating"
    assert activating["EndpointConfigName"] == "ab-cfg"  # ProductionVariants: blue
    pending = activating["PendingDeploymentSummary"]
    assert pending["EndpointConfigName"] == "green"
    (status,) = pending["ProductionVariants"][0]["VariantStatus"]
    assert status["Status"] == "ActivatingTraffic"
    assert status["StatusMessage"] == (
        "Activating traffic on canary capacity of 1 instance(s) (33% of the requests)."
    )
    deployer.release("shift")
    await guarded.settle()
    # 1 of green's 3 production instances: a third of the requests, then all of them.
    assert deployer.methods("ab")[2:] == [
        ("deploy", 2),
        ("shift", (1, 2, pytest.approx(1 / 3))),
        ("activate", 2),
        ("retire", 1),
    ]
    done = await describe(guarded, "ab")
    assert done["EndpointStatus"] == "InService"
    assert done["EndpointConfigName"] == "green"
    assert "FailureReason" not in done
    assert "PendingDeploymentSummary" not in done
    assert done["LastDeploymentConfig"] == deployment_config


async def test_a_bake_shows_baking_and_watches_the_alarms(
    guarded: ControlService, settings: Settings, deployer: RecordingDeployer, alarms: FakeAlarms
) -> None:
    await two_variant_endpoint(guarded, settings)
    await _green(guarded)
    alarms.gate = asyncio.Event()
    await _update(guarded, blue_green("LINEAR", PERCENT_50, wait=0, alarms=["errors", "latency"]))
    await asyncio.wait_for(alarms.polled.wait(), timeout=5)
    baking = await describe(guarded, "ab")
    check_output("DescribeEndpoint", baking)
    (status,) = baking["PendingDeploymentSummary"]["ProductionVariants"][0]["VariantStatus"]
    assert status["Status"] == "Baking"
    assert status["StatusMessage"] == (
        "Baking for 0 seconds (WaitIntervalInSeconds) with traffic enabled on capacity of 2 "
        "instance(s)."
    )
    # Green's variant A (weight 3) takes its share of the half of the requests green has.
    assert baking["PendingDeploymentSummary"]["ProductionVariants"][0]["CurrentWeight"] == 1.5
    assert alarms.asked == [["errors", "latency"]]
    alarms.gate.set()
    await guarded.settle()
    assert (await describe(guarded, "ab"))["EndpointConfigName"] == "green"


async def test_an_alarm_during_a_bake_rolls_back_to_blue(
    guarded: ControlService, settings: Settings, deployer: RecordingDeployer, alarms: FakeAlarms
) -> None:
    await two_variant_endpoint(guarded, settings)
    await _green(guarded)
    alarms.firing = {"latency"}
    deployment_config = blue_green("LINEAR", PERCENT_50, wait=60, alarms=["errors", "latency"])
    deployer.hold("retire")
    await _update(guarded, deployment_config)
    await deployer.entered("retire")
    rolling_back = await describe(guarded, "ab")
    assert rolling_back["EndpointStatus"] == "RollingBack"
    deployer.release("retire")
    await guarded.settle()
    # Half to green, then all back to blue at once (without waiting out the bake); green gone.
    assert deployer.methods("ab")[2:] == [
        ("deploy", 2),
        ("shift", (1, 2, 0.5)),
        ("shift", (1, 2, 0.0)),
        ("retire", 2),
    ]
    described = await describe(guarded, "ab")
    check_output("DescribeEndpoint", described)
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == "ab-cfg"
    assert "PendingDeploymentSummary" not in described
    assert described["LastDeploymentConfig"] == deployment_config
    assert described["FailureReason"] == (
        'Update rolled back: the alarm(s) "latency" of AutoRollbackConfiguration went into '
        'ALARM state during the deployment of endpoint configuration "green"; all traffic was '
        'shifted back and the endpoint serves endpoint configuration "ab-cfg" again.'
    )
    # The next update is accepted, and clears the reason.
    alarms.firing = set()
    await _update(guarded, blue_green("ALL_AT_ONCE"))
    await guarded.settle()
    after = await describe(guarded, "ab")
    assert after["EndpointConfigName"] == "green"
    assert "FailureReason" not in after


async def test_an_alarm_during_the_termination_wait_brings_blue_back(
    guarded: ControlService, settings: Settings, deployer: RecordingDeployer, alarms: FakeAlarms
) -> None:
    await two_variant_endpoint(guarded, settings)
    await _green(guarded)
    alarms.gate = asyncio.Event()
    await _update(guarded, blue_green("ALL_AT_ONCE", termination_wait=60, alarms=["errors"]))
    await asyncio.wait_for(alarms.polled.wait(), timeout=5)
    switched = await describe(guarded, "ab")
    assert switched["EndpointConfigName"] == "green"  # green took the traffic; blue still runs
    alarms.firing = {"errors"}
    alarms.gate.set()
    await guarded.settle()
    assert deployer.methods("ab")[2:] == [
        ("deploy", 2),
        ("activate", 2),
        ("shift", (1, 2, 0.0)),
        ("retire", 2),
    ]
    described = await describe(guarded, "ab")
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == "ab-cfg"
    assert {v["VariantName"] for v in described["ProductionVariants"]} == {"A", "B"}
    history = await guarded.weight_history("ab")
    changes = history["WeightChanges"]
    assert isinstance(changes, list)
    assert [change["Cause"] for change in changes][-2:] == ["UpdateEndpoint", "RollBack"]


async def test_a_failing_alarm_store_neither_rolls_back_nor_fails_the_update(
    guarded: ControlService, settings: Settings, deployer: RecordingDeployer, alarms: FakeAlarms
) -> None:
    await two_variant_endpoint(guarded, settings)
    await _green(guarded)

    async def unreadable(alarm_names: Sequence[str]) -> list[str]:
        raise OSError("the state database is gone")

    alarms.in_alarm = unreadable  # type: ignore[method-assign]
    await _update(guarded, blue_green("CANARY", PERCENT_50, alarms=["errors"]))
    await guarded.settle()
    described = await describe(guarded, "ab")
    assert described["EndpointConfigName"] == "green"
    assert "FailureReason" not in described


async def test_a_refused_step_routes_back_to_blue_and_keeps_it(
    guarded: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    from splitserve.errors import DeploymentError

    await two_variant_endpoint(guarded, settings)
    await _green(guarded)
    deployer.fail_next("activate", DeploymentError("The routing table was refused: boom"))
    await _update(guarded, blue_green("CANARY", PERCENT_50))
    await guarded.settle()
    assert deployer.methods("ab")[2:] == [
        ("deploy", 2),
        ("shift", (1, 2, 0.5)),
        ("activate", 2),
        ("shift", (1, 2, 0.0)),
        ("retire", 2),
    ]
    described = await describe(guarded, "ab")
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == "ab-cfg"
    assert "The routing table was refused: boom" in described["FailureReason"]


async def test_without_an_alarm_reader_alarms_never_fire(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)
    await _green(service)
    await _update(service, blue_green("CANARY", PERCENT_50, alarms=["errors"]))
    await service.settle()
    assert (await describe(service, "ab"))["EndpointConfigName"] == "green"


# --- the A/B ramp (splitserve:ramp) ---------------------------------------------------------------

ARN = "arn:aws:sagemaker:us-east-1:123456789012:endpoint/ab"


async def _ramp(service: ControlService, value: str) -> None:
    await service.dispatch(
        "AddTags", {"ResourceArn": ARN, "Tags": [{"Key": "splitserve:ramp", "Value": value}]}
    )


def test_ramp_shares_and_weights() -> None:
    assert ramp_shares(0.5, 100, 25) == (0.75, 1.0)
    assert ramp_shares(0.5, 20, 25) == (0.25, 0.2)
    assert ramp_shares(0.3, 30, 10) == ()
    assert ramp_weights({"A": 1.0, "B": 3.0, "C": 0.0}, "C", 0.5) == {
        "A": 0.5,
        "B": 1.5,
        "C": 2.0,
    }
    assert ramp_weights({"A": 0.0, "B": 0.0, "C": 2.0}, "C", 0.5) == {
        "A": 0.5,
        "B": 0.5,
        "C": 1.0,
    }


async def test_a_ramp_moves_the_weights_in_steps(
    guarded: ControlService, settings: Settings, deployer: RecordingDeployer, alarms: FakeAlarms
) -> None:
    await two_variant_endpoint(guarded, settings)
    alarms.gate = asyncio.Event()
    await _ramp(guarded, "B 100 25 0 errors")
    await asyncio.wait_for(alarms.polled.wait(), timeout=5)
    ramping = await describe(guarded, "ab")
    check_output("DescribeEndpoint", ramping)
    assert ramping["EndpointStatus"] == "Updating"
    b = {v["VariantName"]: v for v in ramping["ProductionVariants"]}["B"]
    assert b["CurrentWeight"] == 1.5
    assert b["VariantStatus"][0]["StatusMessage"] == (
        "Ramping variant weight to 75% of the requests (step 1 of 2); baking for 0 seconds."
    )
    alarms.gate.set()
    await guarded.settle()
    assert [detail for method, detail in deployer.methods("ab") if method == "set_weights"] == [
        {"A": 0.5, "B": 1.5},
        {"A": 0.0, "B": 2.0},
    ]
    done = await describe(guarded, "ab")
    assert done["EndpointStatus"] == "InService"
    assert [v["CurrentWeight"] for v in done["ProductionVariants"]] == [0.0, 2.0]
    changes = (await guarded.weight_history("ab"))["WeightChanges"]
    assert isinstance(changes, list)
    assert [change["Cause"] for change in changes][-2:] == ["Ramp", "Ramp"]
    # The same value again starts nothing.
    await _ramp(guarded, "B 100 25 0 errors")
    assert (await describe(guarded, "ab"))["EndpointStatus"] == "InService"


async def test_an_alarm_stops_a_ramp_and_restores_the_weights(
    guarded: ControlService, settings: Settings, deployer: RecordingDeployer, alarms: FakeAlarms
) -> None:
    await two_variant_endpoint(guarded, settings)
    alarms.firing = {"errors"}
    await _ramp(guarded, "B 100 25 60 latency errors")
    await guarded.settle()
    assert [detail for method, detail in deployer.methods("ab") if method == "set_weights"] == [
        {"A": 0.5, "B": 1.5},
        {"A": 1.0, "B": 1.0},
    ]
    described = await describe(guarded, "ab")
    assert described["EndpointStatus"] == "InService"
    assert [v["CurrentWeight"] for v in described["ProductionVariants"]] == [1.0, 1.0]
    assert described["FailureReason"] == (
        'The ramp of variant "B" (splitserve:ramp) was stopped at 75% of the requests: the '
        'alarm(s) "errors" went into ALARM state; the weights from before the ramp were restored.'
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("B 100 25", "it has fewer than four parts"),
        ("B all 25 0", "TargetPercent and StepPercent must be numbers"),
        ("B 101 25 0", "TargetPercent must be between 0 and 100"),
        ("B 100 0.5 0", "StepPercent must be between 1 and 100"),
        ("B 100 25 3601", "WaitSeconds must be between 0 and 3600"),
        ("B 100 25 0 " + " ".join(f"a{i}" for i in range(11)), "more than 10 alarms"),
        ("Z 100 25 0", 'names variant "Z", which is not a production variant'),
    ],
)
async def test_ramp_tag_refusals(
    guarded: ControlService,
    settings: Settings,
    deployer: RecordingDeployer,
    value: str,
    message: str,
) -> None:
    await two_variant_endpoint(guarded, settings)
    with pytest.raises(ValidationException) as refused:
        await _ramp(guarded, value)
    assert message in refused.value.message
    assert [m for m, _ in deployer.methods("ab")] == ["deploy", "activate"]
    tags = await guarded.dispatch("ListTags", {"ResourceArn": ARN})
    assert tags["Tags"] == []


async def test_a_ramp_needs_an_idle_endpoint_with_two_variants(
    guarded: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(guarded, settings)
    await _green(guarded)
    deployer.hold("deploy")
    await _update(guarded, blue_green("ALL_AT_ONCE"))
    await deployer.entered("deploy")
    with pytest.raises(ValidationException, match="Cannot update in-progress endpoint"):
        await _ramp(guarded, "A 10 5 0")
    deployer.release("deploy")
    await guarded.settle()
    await create_config(guarded, "single", [variant("A", "m1")])
    await guarded.dispatch(
        "CreateEndpoint", {"EndpointName": "one", "EndpointConfigName": "single"}
    )
    await guarded.settle()
    with pytest.raises(ValidationException, match="at least two production variants"):
        await guarded.dispatch(
            "AddTags",
            {
                "ResourceArn": ARN.replace("/ab", "/one"),
                "Tags": [{"Key": "splitserve:ramp", "Value": "A 50 10 0"}],
            },
        )
    with pytest.raises(ValidationException, match="fewer than four parts"):
        await guarded.dispatch(
            "CreateEndpoint",
            {
                "EndpointName": "two",
                "EndpointConfigName": "single",
                "Tags": [{"Key": "splitserve:ramp", "Value": "A"}],
            },
        )


async def test_a_stepped_update_past_its_timeout_goes_back_to_blue(
    guarded: ControlService,
    settings: Settings,
    deployer: RecordingDeployer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await two_variant_endpoint(guarded, settings)
    await _green(guarded)
    real_timeout = asyncio.timeout
    # 600 s is the least MaximumExecutionTimeoutInSeconds; the test's clock runs 10^4 times faster.
    monkeypatch.setattr(
        asyncio, "timeout", lambda delay: real_timeout(None if delay is None else delay / 10_000)
    )
    deployment_config = blue_green("LINEAR", PERCENT_50, wait=3600)
    deployment_config["BlueGreenUpdatePolicy"]["MaximumExecutionTimeoutInSeconds"] = 600
    await _update(guarded, deployment_config)
    await guarded.settle()
    assert deployer.methods("ab")[2:] == [
        ("deploy", 2),
        ("shift", (1, 2, 0.5)),
        ("shift", (1, 2, 0.0)),
        ("retire", 2),
    ]
    described = await describe(guarded, "ab")
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == "ab-cfg"
    assert "MaximumExecutionTimeoutInSeconds (600 s)" in described["FailureReason"]


# --- rolling updates ------------------------------------------------------------------------------


async def _two_by_two(service: ControlService, settings: Settings) -> None:
    """Endpoint `ab` on A and B with 2 instances each, and configuration `rolled`: the same
    variants on model m3."""
    write_artifact(settings)
    for model in ("m1", "m3"):
        await create_model(service, model)
    await create_config(
        service, "ab-cfg", [variant("A", "m1", count=2), variant("B", "m1", count=2)]
    )
    await service.dispatch("CreateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "ab-cfg"})
    await service.settle()
    await create_config(
        service, "rolled", [variant("A", "m3", count=2), variant("B", "m3", count=2)]
    )


def rolling(alarms: Sequence[str] = (), wait: int = 0) -> dict[str, Any]:
    config: dict[str, Any] = {
        "RollingUpdatePolicy": {"MaximumBatchSize": PERCENT_50, "WaitIntervalInSeconds": wait}
    }
    if alarms:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in alarms]}
    return config


def test_rolling_batches() -> None:
    policy = rolling()
    assert rolling_batches(policy, {"A": 2}, {"A": 2}) == (
        RollingBatch({"A": 1}, {"A": 1}, 0.5),
        RollingBatch({"A": 2}, {"A": 0}, 1.0),
    )
    by_one = {
        "RollingUpdatePolicy": {
            "MaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": 1},
            "WaitIntervalInSeconds": 0,
        }
    }
    assert rolling_batches(by_one, {"A": 3, "B": 1}, {"A": 3, "B": 1}) == (
        RollingBatch({"A": 1, "B": 1}, {"A": 2, "B": 1}, 0.4),
        RollingBatch({"A": 2, "B": 1}, {"A": 1, "B": 1}, 0.6),
        RollingBatch({"A": 3, "B": 1}, {"A": 0, "B": 0}, 1.0),
    )
    assert rolling_batches(policy, {"A": 1}, {"A": 1}) == (RollingBatch({"A": 1}, {"A": 0}, 1.0),)


async def test_a_rolling_update_replaces_capacity_batch_by_batch(
    guarded: ControlService, settings: Settings, deployer: RecordingDeployer, alarms: FakeAlarms
) -> None:
    await _two_by_two(guarded, settings)
    alarms.gate = asyncio.Event()
    await guarded.dispatch(
        "UpdateEndpoint",
        {"EndpointName": "ab", "EndpointConfigName": "rolled", "DeploymentConfig": rolling(["e"])},
    )
    await asyncio.wait_for(alarms.polled.wait(), timeout=5)
    baking = await describe(guarded, "ab")
    check_output("DescribeEndpoint", baking)
    assert [v["CurrentInstanceCount"] for v in baking["ProductionVariants"]] == [1, 1]
    green = baking["PendingDeploymentSummary"]["ProductionVariants"]
    assert [v["CurrentInstanceCount"] for v in green] == [1, 1]
    assert green[0]["VariantStatus"][0]["Status"] == "Baking"
    assert deployer.plans[-1].variants[0].instance_count == 1  # one batch started
    alarms.gate.set()
    await guarded.settle()
    assert deployer.methods("ab")[2:] == [
        ("deploy", 2),
        ("shift", (1, 2, 0.5)),
        ("scale_generation", (1, "A", 1)),
        ("scale_generation", (1, "B", 1)),
        ("scale_generation", (2, "A", 2)),
        ("scale_generation", (2, "B", 2)),
        ("activate", 2),
        ("retire", 1),
    ]
    done = await describe(guarded, "ab")
    assert done["EndpointStatus"] == "InService"
    assert done["EndpointConfigName"] == "rolled"
    assert [v["CurrentInstanceCount"] for v in done["ProductionVariants"]] == [2, 2]


async def test_an_alarm_rolls_a_rolling_update_back_with_the_old_capacity(
    guarded: ControlService, settings: Settings, deployer: RecordingDeployer, alarms: FakeAlarms
) -> None:
    await _two_by_two(guarded, settings)
    alarms.firing = {"e"}
    await guarded.dispatch(
        "UpdateEndpoint",
        {
            "EndpointName": "ab",
            "EndpointConfigName": "rolled",
            "DeploymentConfig": rolling(["e"], wait=60),
        },
    )
    await guarded.settle()
    assert deployer.methods("ab")[2:] == [
        ("deploy", 2),
        ("shift", (1, 2, 0.5)),
        ("scale_generation", (1, "A", 1)),
        ("scale_generation", (1, "B", 1)),
        ("scale_generation", (1, "A", 2)),
        ("scale_generation", (1, "B", 2)),
        ("shift", (1, 2, 0.0)),
        ("retire", 2),
    ]
    described = await describe(guarded, "ab")
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == "ab-cfg"
    assert [v["CurrentInstanceCount"] for v in described["ProductionVariants"]] == [2, 2]
    assert described["FailureReason"].startswith('Update rolled back: the alarm(s) "e"')
