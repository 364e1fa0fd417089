"""ShadowProductionVariants in the control plane: validation, echo, plans and DescribeEndpoint."""

from __future__ import annotations

from typing import Any

import pytest

from splitserve.config import Settings
from splitserve.control.service import ControlService
from splitserve.errors import ValidationException
from tests.control.conftest import (
    ACCOUNT_ARN,
    RecordingDeployer,
    create_config,
    create_model,
    describe,
    open_service,
    variant,
    write_artifact,
)
from tests.control.shapes import check_output


async def _models(service: ControlService, settings: Settings) -> None:
    write_artifact(settings)
    for name in ("m1", "m2", "m3"):
        await create_model(service, name)


async def test_shadow_config_is_stored_and_echoed(
    service: ControlService, settings: Settings
) -> None:
    await _models(service, settings)
    await create_config(
        service,
        "shadowed",
        [variant("A", "m1"), variant("B", "m2", 3.0)],
        ShadowProductionVariants=[variant("S", "m3", None), variant("T", "m3", 0.5)],
    )
    described = check_output(
        "DescribeEndpointConfig",
        await service.dispatch("DescribeEndpointConfig", {"EndpointConfigName": "shadowed"}),
    )
    shadows = described["ShadowProductionVariants"]
    assert [(v["VariantName"], v["InitialVariantWeight"]) for v in shadows] == [
        ("S", 1.0),
        ("T", 0.5),
    ]
    assert [v["VariantName"] for v in described["ProductionVariants"]] == ["A", "B"]


@pytest.mark.parametrize(
    ("shadows", "message"),
    [
        (
            [variant("A", "m3")],
            'The variant name "A" was non-unique within the request.',
        ),
        (
            [variant("S", "m3"), variant("S", "m3")],
            'The variant name "S" was non-unique within the request.',
        ),
        (
            [variant("S", "m3", instance_type="ml.nope.large")],
            "Value 'ml.nope.large' at 'shadowProductionVariants.1.member.instanceType' failed to "
            "satisfy constraint: Member must satisfy enum value set:",
        ),
        (
            [variant(f"S{index}", "m3") for index in range(11)],
            "at 'shadowProductionVariants' failed to satisfy constraint: Member must have length "
            "less than or equal to 10",
        ),
        ([], "at 'shadowProductionVariants' failed to satisfy constraint: Member must have "),
        (
            [variant("S", "m3", -1.0)],
            "Value '-1.0' at 'shadowProductionVariants.1.member.initialVariantWeight' failed to "
            "satisfy constraint: Member must have value greater than or equal to 0",
        ),
        ([variant("S", "missing")], f'Could not find model "{ACCOUNT_ARN}:model/missing".'),
    ],
)
async def test_shadow_variants_are_validated(
    service: ControlService,
    settings: Settings,
    shadows: list[dict[str, object]],
    message: str,
) -> None:
    await _models(service, settings)
    with pytest.raises(ValidationException) as refused:
        await create_config(service, "bad", [variant("A", "m1")], ShadowProductionVariants=shadows)
    assert message in refused.value.message
    # Nothing was stored.
    with pytest.raises(ValidationException):
        await service.dispatch("DescribeEndpointConfig", {"EndpointConfigName": "bad"})


async def test_shadow_variants_are_planned_and_described(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await _models(service, settings)
    await create_config(
        service,
        "shadowed",
        [variant("A", "m1")],
        ShadowProductionVariants=[variant("S", "m3", 0.25, count=2)],
    )
    await service.dispatch(
        "CreateEndpoint", {"EndpointName": "ep", "EndpointConfigName": "shadowed"}
    )
    await service.settle()
    plan = deployer.plans[-1]
    assert [(v.variant_name, v.shadow, v.weight) for v in plan.variants] == [
        ("A", False, 1.0),
        ("S", True, 0.25),
    ]
    described = await describe(service, "ep")
    parsed = check_output("DescribeEndpoint", described)
    assert parsed["EndpointStatus"] == "InService"
    assert [v["VariantName"] for v in parsed["ProductionVariants"]] == ["A"]
    (shadow,) = parsed["ShadowProductionVariants"]
    assert shadow["VariantName"] == "S"
    assert shadow["CurrentWeight"] == shadow["DesiredWeight"] == 0.25
    assert shadow["CurrentInstanceCount"] == shadow["DesiredInstanceCount"] == 2

    # A shadow's weight changes like a production variant's (the share copied to it).
    await service.dispatch(
        "UpdateEndpointWeightsAndCapacities",
        {
            "EndpointName": "ep",
            "DesiredWeightsAndCapacities": [{"VariantName": "S", "DesiredWeight": 1.0}],
        },
    )
    await service.settle()
    assert deployer.weights["ep"] == {"A": 1.0, "S": 1.0}
    (shadow,) = (await describe(service, "ep"))["ShadowProductionVariants"]
    assert shadow["CurrentWeight"] == 1.0

    # The weight history holds the callers' split: production variants only.
    history: dict[str, Any] = await service.weight_history("ep")
    for change in history["WeightChanges"]:
        assert [w["VariantName"] for w in change["Weights"]] == ["A"]


async def test_shadows_are_redeployed_as_shadows_after_a_restart(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    first = await open_service(settings, deployer)
    try:
        await _models(first, settings)
        await create_config(
            first, "shadowed", [variant("A", "m1")], ShadowProductionVariants=[variant("S", "m3")]
        )
        await first.dispatch(
            "CreateEndpoint", {"EndpointName": "ep", "EndpointConfigName": "shadowed"}
        )
        await first.settle()
    finally:
        await first.close()
    second = await open_service(settings, deployer)
    try:
        await second.settle()
        plan = deployer.plans[-1]
        assert plan.generation == 2
        assert [(v.variant_name, v.shadow) for v in plan.variants] == [("A", False), ("S", True)]
        described = await describe(second, "ep")
        assert [v["VariantName"] for v in described["ShadowProductionVariants"]] == ["S"]
    finally:
        await second.close()
