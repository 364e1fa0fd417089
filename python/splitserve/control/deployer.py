"""What the control service asks of whatever runs endpoints: the `Deployer` protocol and its plans.

The control service decides *what* should run (it validates, stores and sequences); a Deployer makes
it run (worker processes, the router, the registry the data plane reads). Every deployment of an
endpoint is one *generation*: CreateEndpoint deploys generation 1, each UpdateEndpoint deploys the
next one beside the live one (blue/green) and switches to it in one step, and a restart of the
gateway deploys the endpoint again under a new generation number (or, when its instances outlive
the gateway, under the same one, adopting them: `Deployer.adopts_instances`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from splitserve.capture.spec import DataCapture


@dataclass(frozen=True)
class VariantPlan:
    """One production variant of a generation.

    Attributes:
        variant_name: the VariantName.
        model_name: the ModelName it serves.
        image: the model container's Image, as given.
        model_data: the local path of the model data (a file such as model.tar.gz, or a directory
            for an uncompressed ModelDataSource); None when the model has none. It exists when the
            plan is handed over (the service checks it first).
        environment: the container's Environment.
        instance_type: an instance type of the workers' catalog.
        instance_count: how many instances to run.
        weight: the variant's weight (0 or more; finite).
        routing_strategy: instance choice inside the variant (LEAST_OUTSTANDING_REQUESTS or RANDOM).
        container_startup_timeout_seconds: ContainerStartupHealthCheckTimeoutInSeconds when the
            configuration gave it; None means the worker settings' own startup timeout.
        shadow: a shadow variant: its instances run, but the router never picks it; `weight`
            sets the share of requests copied to it (`shadow_fraction`).
    """

    variant_name: str
    model_name: str
    image: str
    model_data: Path | None
    environment: Mapping[str, str]
    instance_type: str
    instance_count: int
    weight: float
    routing_strategy: str
    container_startup_timeout_seconds: int | None = None
    shadow: bool = False


@dataclass(frozen=True)
class DeploymentPlan:
    """Everything one generation of an endpoint runs.

    Attributes:
        endpoint_name: the EndpointName, as the client spelled it.
        endpoint_config_name: the configuration this generation comes from.
        generation: a number that grows with every deployment of this endpoint.
        variants: the production variants, in the configuration's order, then the shadow
            variants in theirs.
        data_capture: the configuration's DataCaptureConfig, None when it has none (a record with
            `enable_capture` False is configured but stopped).
        failover: route an untargeted request whose variant has no healthy instance to another
            variant (the endpoint's `splitserve:failover` tag when the plan was made; a later
            `Deployer.set_failover` wins); off by default.
    """

    endpoint_name: str
    endpoint_config_name: str
    generation: int
    variants: tuple[VariantPlan, ...]
    data_capture: DataCapture | None
    failover: bool = False


class AlarmStates(Protocol):
    """The CloudWatch alarms a stepped update watches (AutoRollbackConfiguration), as the face
    reads them from the CloudWatch part (the control plane does not import it)."""

    async def in_alarm(self, alarm_names: Sequence[str]) -> list[str]:
        """The names among `alarm_names` whose alarm is in state ALARM now (an unknown name is
        an alarm that never fires)."""
        ...


class Deployer(Protocol):
    """Runs endpoints. The control service calls it from background tasks, one task per endpoint.

    Methods may raise `splitserve.errors.DeploymentError`; its message becomes the endpoint's
    FailureReason, so it is written for the client. Any other exception is logged and reported to
    the client as an internal error.
    """

    async def deploy(self, plan: DeploymentPlan) -> None:
        """Start every instance of every variant of this generation, without routing to it.

        Raises:
            DeploymentError: an instance did not come up; everything this call started is stopped
                before it raises.
        """
        ...

    async def activate(self, plan: DeploymentPlan) -> None:
        """Make this deployed generation the one the data plane routes to, in one atomic step."""
        ...

    @property
    def adopts_instances(self) -> bool:
        """True when instances outlive the controller that started them (Ray placement): a
        recovery then redeploys each endpoint under its live generation number, and `deploy`
        adopts the running instances of that generation instead of starting new ones."""
        ...

    async def recovering(self, generations: Mapping[str, int]) -> None:
        """Called once by a new controller that `adopts_instances`, before it redeploys: each
        endpoint it recovers and the generation it recovers it under. Instances a previous
        controller left running of any other endpoint or generation are stopped."""
        ...

    async def retire(self, endpoint_name: str, generation: int) -> None:
        """Drain and stop an old generation (no-op if it is not running)."""
        ...

    async def shift(
        self, endpoint_name: str, blue_generation: int, green_generation: int, green_share: float
    ) -> None:
        """One step of a stepped blue/green update: route `green_share` (0 <= share < 1) of the
        untargeted requests to the deployed generation `green_generation` and the rest to the
        live `blue_generation`, each fleet splitting its share by its own variants' weights; 0
        routes everything to blue again (a rollback). Returns once every replica routes so.
        `activate(green plan)` ends the shift.

        Raises:
            DeploymentError: the combined routing table was refused.
        """
        ...

    async def set_weights(self, endpoint_name: str, weights: Mapping[str, float]) -> None:
        """Replace the live generation's weights (every variant's) atomically in its router; a
        shadow variant's weight changes the share of requests copied to it."""
        ...

    async def set_failover(self, endpoint_name: str, failover: bool) -> None:
        """Turn failover on or off for the endpoint (its `splitserve:failover` tag changed): at
        once in every generation it runs, and in every generation deployed later until `remove`,
        whatever their plans say (a plan made before the tag changed may still be deploying)."""
        ...

    async def scale(self, endpoint_name: str, variant_name: str, instance_count: int) -> None:
        """Grow or shrink one variant of the live generation to `instance_count` instances."""
        ...

    async def scale_generation(
        self, endpoint_name: str, generation: int, variant_name: str, instance_count: int
    ) -> None:
        """Grow or shrink one variant of a deployed generation, live or not, to
        `instance_count` (at least 1) instances: a rolling update's batches. During a shift the
        combined routing follows; returns once every replica routes by what runs.

        Raises:
            DeploymentError: the generation does not run, or a new instance did not come up.
        """
        ...

    async def remove(self, endpoint_name: str) -> None:
        """Stop routing to the endpoint, drain and stop all its workers (no-op if it runs none)."""
        ...

    def instance_details(self, endpoint_name: str) -> dict[str, list[dict[str, object]]]:
        """Per variant of the live generation: {"InstanceName", "Cpus", "State"} per instance."""
        ...

    def pending(self, endpoint_name: str) -> None:
        """The endpoint exists and is being deployed (Creating, or redeployed after a restart):
        until a generation of it is activated, the data plane asks its callers to try again
        (503) rather than calling it unknown. Call it before the deployment starts."""
        ...

    def failed(self, endpoint_name: str, failure_reason: str) -> None:
        """The endpoint is Failed with `failure_reason`: without a live generation, the data plane
        refuses its requests with that reason (400) rather than calling it unknown."""
        ...
