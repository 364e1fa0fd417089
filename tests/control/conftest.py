"""The control service's unit tier: the service called directly, over a test Deployer.

`RecordingDeployer` stands in for the lead's real deployer (worker fleets, the Rust router): it
records every call, and a test can make the next call of a method fail, or hold it until released,
to observe the states in between. The end-to-end tests use the real one.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from splitserve.config import ControlSettings, Settings, WorkerSettings
from splitserve.control.deployer import DeploymentPlan
from splitserve.control.service import ControlService
from splitserve.control.store import Store

#: The instance types the tests' "catalog" offers, with their vCPUs.
INSTANCE_VCPUS = {"ml.m5.large": 2, "ml.m5.xlarge": 4, "ml.c5.large": 2, "ml.t2.medium": 2}
INSTANCE_TYPES = frozenset(INSTANCE_VCPUS)

#: The host the tests' limits assume: 4 CPUs, whatever the machine has.
HOST_CPUS = (0, 1, 2, 3)

#: The tests' per-variant instance cap (lower than the default, to test it cheaply).
MAX_INSTANCES_PER_VARIANT = 8

ACCOUNT_ARN = "arn:aws:sagemaker:us-east-1:123456789012"
IMAGE = "local/xgboost:1.7-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


@dataclass
class RecordingDeployer:
    """A Deployer that runs nothing: it records calls and can fail or hold any of them.

    Attributes:
        calls: every call as (method, endpoint name, detail), in order.
        plans: every plan handed to deploy().
        live: the plan last activated, per endpoint (what the data plane would route to).
        weights: the weights the router would hold, per endpoint.
        counts: the instance count per (endpoint, variant) of the live generation.
        unroutable: what `pending` (None) and `failed` (the reason) last said of each endpoint.
        failover: what `set_failover` last said of each endpoint.
        adopting: whether it claims to adopt instances a previous controller left running.
    """

    calls: list[tuple[str, str, object]] = field(default_factory=list)
    plans: list[DeploymentPlan] = field(default_factory=list)
    live: dict[str, DeploymentPlan] = field(default_factory=dict)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    details: dict[str, dict[str, list[dict[str, object]]]] = field(default_factory=dict)
    unroutable: dict[str, str | None] = field(default_factory=dict)
    failover: dict[str, bool] = field(default_factory=dict)
    adopting: bool = False
    _failures: dict[str, list[BaseException]] = field(default_factory=dict)
    _gates: dict[str, asyncio.Event] = field(default_factory=dict)
    _entered: dict[str, asyncio.Event] = field(default_factory=dict)

    def fail_next(self, method: str, error: BaseException) -> None:
        """Make the next call of `method` raise `error` (after recording it)."""
        self._failures.setdefault(method, []).append(error)

    def hold(self, method: str) -> None:
        """Make calls of `method` wait until `release(method)`."""
        self._gates[method] = asyncio.Event()
        self._entered[method] = asyncio.Event()

    def release(self, method: str) -> None:
        """Let held calls of `method` (and later ones) proceed."""
        self._gates.pop(method).set()

    async def entered(self, method: str) -> None:
        """Wait until a held call of `method` has started."""
        await asyncio.wait_for(self._entered[method].wait(), timeout=5)

    def methods(self, endpoint_name: str | None = None) -> list[tuple[str, object]]:
        """The calls (method, detail), optionally of one endpoint only."""
        return [
            (method, detail)
            for method, name, detail in self.calls
            if endpoint_name is None or name == endpoint_name
        ]

    async def _enter(self, method: str, endpoint_name: str, detail: object) -> None:
        self.calls.append((method, endpoint_name, detail))
        gate = self._gates.get(method)
        if gate is not None:
            self._entered[method].set()
            await gate.wait()
        failures = self._failures.get(method)
        if failures:
            raise failures.pop(0)

    async def deploy(self, plan: DeploymentPlan) -> None:
        """Record the plan."""
        await self._enter("deploy", plan.endpoint_name, plan.generation)
        self.plans.append(plan)

    async def activate(self, plan: DeploymentPlan) -> None:
        """Make `plan` the live generation."""
        await self._enter("activate", plan.endpoint_name, plan.generation)
        self.live[plan.endpoint_name] = plan
        self.weights[plan.endpoint_name] = {v.variant_name: v.weight for v in plan.variants}
        for variant in plan.variants:
            self.counts[plan.endpoint_name, variant.variant_name] = variant.instance_count

    async def retire(self, endpoint_name: str, generation: int) -> None:
        """Record the retirement."""
        await self._enter("retire", endpoint_name, generation)

    async def shift(
        self, endpoint_name: str, blue_generation: int, green_generation: int, green_share: float
    ) -> None:
        """Record one step of a stepped update as (blue, green, share)."""
        await self._enter("shift", endpoint_name, (blue_generation, green_generation, green_share))

    async def scale_generation(
        self, endpoint_name: str, generation: int, variant_name: str, instance_count: int
    ) -> None:
        """Record a rolling update's batch as (generation, variant, count)."""
        await self._enter(
            "scale_generation", endpoint_name, (generation, variant_name, instance_count)
        )

    async def set_weights(self, endpoint_name: str, weights: Mapping[str, float]) -> None:
        """Record the new weights."""
        await self._enter("set_weights", endpoint_name, dict(weights))
        self.weights[endpoint_name] = dict(weights)

    async def set_failover(self, endpoint_name: str, failover: bool) -> None:
        """Record the new failover setting."""
        await self._enter("set_failover", endpoint_name, failover)
        self.failover[endpoint_name] = failover

    async def scale(self, endpoint_name: str, variant_name: str, instance_count: int) -> None:
        """Record the new count."""
        await self._enter("scale", endpoint_name, (variant_name, instance_count))
        self.counts[endpoint_name, variant_name] = instance_count

    async def remove(self, endpoint_name: str) -> None:
        """Forget the endpoint."""
        await self._enter("remove", endpoint_name, None)
        self.live.pop(endpoint_name, None)

    @property
    def adopts_instances(self) -> bool:
        """What the test set in `adopting` (instances outliving the controller, as on Ray)."""
        return self.adopting

    async def recovering(self, generations: Mapping[str, int]) -> None:
        """Recorded in `calls` as ("recovering", "", generations)."""
        self.calls.append(("recovering", "", dict(generations)))

    def instance_details(self, endpoint_name: str) -> dict[str, list[dict[str, object]]]:
        """Whatever the test put in `details`."""
        return self.details.get(endpoint_name, {})

    def pending(self, endpoint_name: str) -> None:
        """Recorded in `unroutable` as None (not in `calls`: it is no deployment step)."""
        self.unroutable[endpoint_name] = None

    def failed(self, endpoint_name: str, failure_reason: str) -> None:
        """Recorded in `unroutable` as the reason."""
        self.unroutable[endpoint_name] = failure_reason


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with the state and the model store under the test's temporary directory, a
    4-CPU host and a cap of 8 instances per variant (the vCPU overcommit is the default)."""
    return Settings(
        state_dir=tmp_path / "state",
        model_store=tmp_path / "models",
        workers=WorkerSettings(cpu_pool=HOST_CPUS),
        control=ControlSettings(max_instances_per_variant=MAX_INSTANCES_PER_VARIANT),
    )


@pytest.fixture
def deployer() -> RecordingDeployer:
    """A fresh recording deployer."""
    return RecordingDeployer()


def state_file(settings: Settings) -> Path:
    """Where the tests keep the state file."""
    return settings.state_dir / "state.sqlite3"


async def open_service(settings: Settings, deployer: RecordingDeployer) -> ControlService:
    """A started service over the state file of `settings`."""
    service = ControlService(
        settings,
        Store.open(state_file(settings)),
        deployer,
        instance_vcpus=INSTANCE_VCPUS,
    )
    await service.start()
    return service


@pytest.fixture
async def service(settings: Settings, deployer: RecordingDeployer) -> AsyncIterator[ControlService]:
    """A started service; closed after the test."""
    service = await open_service(settings, deployer)
    try:
        yield service
    finally:
        await service.close()


def write_artifact(settings: Settings, key: str = "bucket/model.tar.gz") -> str:
    """Put a (dummy) model artifact into the model store; return its s3:// URL."""
    path = settings.model_store / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not really a tarball")
    return f"s3://{key}"


def model_body(name: str, url: str | None = "s3://bucket/model.tar.gz") -> dict[str, object]:
    """A CreateModel request like the SageMaker SDK's."""
    container: dict[str, object] = {"Image": IMAGE, "Environment": {"SAGEMAKER_REGION": "local"}}
    if url is not None:
        container["ModelDataUrl"] = url
    return {"ModelName": name, "ExecutionRoleArn": ROLE, "PrimaryContainer": container}


def variant(
    name: str,
    model: str,
    weight: float | None = 1.0,
    count: int = 1,
    instance_type: str = "ml.m5.large",
) -> dict[str, object]:
    """One ProductionVariant."""
    body: dict[str, object] = {
        "VariantName": name,
        "ModelName": model,
        "InitialInstanceCount": count,
        "InstanceType": instance_type,
    }
    if weight is not None:
        body["InitialVariantWeight"] = weight
    return body


async def create_model(service: ControlService, name: str, url: str | None = None) -> None:
    """CreateModel over s3://bucket/model.tar.gz (or `url`)."""
    body = model_body(name) if url is None else model_body(name, url)
    await service.dispatch("CreateModel", body)


async def create_config(
    service: ControlService, name: str, variants: list[dict[str, object]], **extra: object
) -> None:
    """CreateEndpointConfig."""
    await service.dispatch(
        "CreateEndpointConfig",
        {"EndpointConfigName": name, "ProductionVariants": variants, **extra},
    )


async def describe(service: ControlService, endpoint: str) -> dict[str, Any]:
    """DescribeEndpoint (typed loosely: tests index into it)."""
    described: dict[str, Any] = await service.dispatch(
        "DescribeEndpoint", {"EndpointName": endpoint}
    )
    return described


async def two_variant_endpoint(
    service: ControlService,
    settings: Settings,
    endpoint: str = "ab",
    weights: tuple[float, float] = (1.0, 1.0),
) -> None:
    """Models m1 and m2, config `<endpoint>-cfg` with variants A and B, the endpoint InService."""
    write_artifact(settings)
    for model in ("m1", "m2"):
        if await _exists(service, model):
            continue
        await create_model(service, model)
    await create_config(
        service,
        f"{endpoint}-cfg",
        [variant("A", "m1", weights[0]), variant("B", "m2", weights[1])],
    )
    await service.dispatch(
        "CreateEndpoint", {"EndpointName": endpoint, "EndpointConfigName": f"{endpoint}-cfg"}
    )
    await service.settle()


async def _exists(service: ControlService, model: str) -> bool:
    listed = await service.dispatch("ListModels", {"NameContains": model, "MaxResults": 100})
    models = listed["Models"]
    assert isinstance(models, list)
    return any(item["ModelName"] == model for item in models)


def variants_by_name(described: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """DescribeEndpoint's ProductionVariants by VariantName."""
    summaries = described["ProductionVariants"]
    assert isinstance(summaries, list)
    return {summary["VariantName"]: summary for summary in summaries}


def dump_state(settings: Settings) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, read through a separate connection (WAL lets it see commits)."""
    connection = sqlite3.connect(state_file(settings))
    try:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        return {
            table: sorted(connection.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for table in tables
        }
    finally:
        connection.close()
