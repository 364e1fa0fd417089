"""Instance limits: a per-variant cap and a per-endpoint vCPU budget, checked when instances are
asked for (CreateEndpoint, UpdateEndpoint, UpdateEndpointWeightsAndCapacities)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from splitserve import cli
from splitserve.config import ControlSettings, Settings, WorkerSettings
from splitserve.control.service import ControlService
from splitserve.errors import ResourceLimitExceeded
from tests.control.conftest import (
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


async def _model(service: ControlService, settings: Settings) -> None:
    write_artifact(settings)
    await create_model(service, "m1")


async def _no_endpoint(service: ControlService) -> None:
    listed = await service.dispatch("ListEndpoints", {})
    assert listed["Endpoints"] == []


async def test_a_stored_config_may_ask_for_more_than_the_cap(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    """As SageMaker: the configuration is stored; creating the endpoint is what is refused."""
    await _model(service, settings)
    await create_config(service, "huge", [variant("A", "m1", count=1000)])
    stored = await service.dispatch("DescribeEndpointConfig", {"EndpointConfigName": "huge"})
    assert stored["ProductionVariants"][0]["InitialInstanceCount"] == 1000  # type: ignore[index]
    with pytest.raises(ResourceLimitExceeded) as refused:
        await service.dispatch(
            "CreateEndpoint", {"EndpointName": "e", "EndpointConfigName": "huge"}
        )
    assert refused.value.message == (
        'The instance count 1000 requested for variant "A" is over this gateway\'s limit of 8 '
        "instances per variant (splitserve serve --max-instances-per-variant)."
    )
    await _no_endpoint(service)
    assert deployer.calls == []


async def test_an_endpoint_over_the_vcpu_budget_is_refused(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    # 4 host CPUs x 4 (the default overcommit) = 16 vCPUs; 3 x 4 + 3 x 2 = 18.
    await _model(service, settings)
    await create_config(
        service,
        "wide",
        [
            variant("A", "m1", count=3, instance_type="ml.m5.xlarge"),
            variant("B", "m1", count=3, instance_type="ml.m5.large"),
        ],
    )
    with pytest.raises(ResourceLimitExceeded) as refused:
        await service.dispatch(
            "CreateEndpoint", {"EndpointName": "e", "EndpointConfigName": "wide"}
        )
    assert refused.value.message.startswith(
        'Endpoint "e" asks for 18 vCPUs ("A" 3 x ml.m5.xlarge (4 vCPUs each), "B" 3 x ml.m5.large '
        "(2 vCPUs each)), over this gateway's limit of 16: 4 times the host's 4 CPUs "
        "(splitserve serve --max-vcpu-overcommit)."
    )
    await _no_endpoint(service)
    assert deployer.calls == []
    # At the budget exactly, it is accepted.
    await create_config(
        service,
        "full",
        [
            variant("A", "m1", count=2, instance_type="ml.m5.xlarge"),
            variant("B", "m1", count=4, instance_type="ml.m5.large"),
        ],
    )
    await service.dispatch("CreateEndpoint", {"EndpointName": "e", "EndpointConfigName": "full"})
    await service.settle()
    assert (await describe(service, "e"))["EndpointStatus"] == "InService"


async def test_an_instance_counts_at_most_the_hosts_cpus(
    settings: Settings, deployer: RecordingDeployer
) -> None:
    # A 2-CPU host: ml.m5.xlarge (4 vCPUs) counts 2, so 4 of them fill the budget of 8.
    small = replace(settings, workers=WorkerSettings(cpu_pool=(0, 1)))
    service = await open_service(small, deployer)
    try:
        await _model(service, small)
        await create_config(
            service, "c", [variant("A", "m1", count=4, instance_type="ml.m5.xlarge")]
        )
        await service.dispatch("CreateEndpoint", {"EndpointName": "e", "EndpointConfigName": "c"})
        await service.settle()
        assert (await describe(service, "e"))["EndpointStatus"] == "InService"
    finally:
        await service.close()


async def test_update_endpoint_to_a_config_over_the_limits_keeps_the_old_one(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)
    await create_config(service, "too-big", [variant("A", "m1", count=9)])
    before = await describe(service, "ab")
    calls = len(deployer.calls)
    with pytest.raises(ResourceLimitExceeded, match="limit of 8 instances per variant"):
        await service.dispatch(
            "UpdateEndpoint", {"EndpointName": "ab", "EndpointConfigName": "too-big"}
        )
    assert await describe(service, "ab") == before
    assert len(deployer.calls) == calls


async def test_weights_and_capacities_over_the_vcpu_budget_change_nothing(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    await two_variant_endpoint(service, settings)  # A and B: 1 x ml.m5.large each
    before = await describe(service, "ab")
    calls = len(deployer.calls)
    with pytest.raises(ResourceLimitExceeded) as refused:
        await service.dispatch(
            "UpdateEndpointWeightsAndCapacities",
            {
                "EndpointName": "ab",
                "DesiredWeightsAndCapacities": [{"VariantName": "A", "DesiredInstanceCount": 8}],
            },
        )
    assert refused.value.message.startswith('Endpoint "ab" asks for 18 vCPUs')
    after = await describe(service, "ab")
    assert after == before
    assert variants_by_name(after)["A"]["DesiredInstanceCount"] == 1
    assert len(deployer.calls) == calls
    # Within the budget, the same call is accepted.
    await service.dispatch(
        "UpdateEndpointWeightsAndCapacities",
        {
            "EndpointName": "ab",
            "DesiredWeightsAndCapacities": [{"VariantName": "A", "DesiredInstanceCount": 7}],
        },
    )
    await service.settle()
    assert variants_by_name(await describe(service, "ab"))["A"]["CurrentInstanceCount"] == 7


def test_serve_flags_set_the_limits() -> None:
    parser = cli.build_parser()
    defaults = cli.settings_from_args(parser.parse_args(["serve"]))
    assert defaults.control == ControlSettings()
    args = parser.parse_args(
        ["serve", "--max-instances-per-variant", "3", "--max-vcpu-overcommit", "1.5"]
    )
    assert cli.settings_from_args(args).control == ControlSettings(
        max_instances_per_variant=3, max_vcpu_overcommit=1.5
    )


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-instances-per-variant", "0"),
        ("--max-instances-per-variant", "many"),
        ("--max-vcpu-overcommit", "0"),
        ("--max-vcpu-overcommit", "-1"),
        ("--max-vcpu-overcommit", "inf"),
        ("--max-vcpu-overcommit", "nan"),
    ],
)
def test_bad_limit_flags_are_refused(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["serve", flag, value])
    assert exited.value.code == 2
    assert flag in capsys.readouterr().err
