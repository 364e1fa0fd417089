"""The control plane's records: models, endpoint configurations, endpoints and their variants.

Models and endpoint configurations keep the validated request that created them (`document`), which
is what their Describe operation echoes. An endpoint keeps its own copy of everything it needs to
run (image, model data URL, environment, instance type per variant, and the data-capture settings),
because SageMaker lets a client delete the model or the configuration of a live endpoint and the
endpoint keeps serving; splitserve must also be able to bring it back after a restart.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from splitserve.config import AccountSettings


class EndpointStatus(enum.StrEnum):
    """SageMaker's EndpointStatus values (those splitserve uses are documented in service.py)."""

    OUT_OF_SERVICE = "OutOfService"
    CREATING = "Creating"
    UPDATING = "Updating"
    SYSTEM_UPDATING = "SystemUpdating"
    ROLLING_BACK = "RollingBack"
    IN_SERVICE = "InService"
    DELETING = "Deleting"
    FAILED = "Failed"
    UPDATE_ROLLBACK_FAILED = "UpdateRollbackFailed"


#: The endpoint tag (CreateEndpoint, AddTags, DeleteTags) that turns failover on (`true`): an
#: untargeted request whose variant has no healthy instance is routed to another variant instead of
#: failing with 503. AddTags and DeleteTags change it on the live router (`Deployer.set_failover`).
FAILOVER_TAG = "splitserve:failover"

#: The endpoint tag (AddTags) that ramps one production variant's share of the requests in steps
#: toward a target, each baked while alarms are watched (`control/ramp.py` has its value's form).
RAMP_TAG = "splitserve:ramp"

#: An endpoint in one of these has a background task working on it: no update, no delete.
IN_PROGRESS_STATUSES = frozenset(
    {
        EndpointStatus.CREATING,
        EndpointStatus.UPDATING,
        EndpointStatus.SYSTEM_UPDATING,
        EndpointStatus.ROLLING_BACK,
        EndpointStatus.DELETING,
    }
)


class ResourceKind(enum.Enum):
    """The three resource types of the control plane: ARN part and the wording messages use."""

    MODEL = ("model", "model")
    ENDPOINT_CONFIG = ("endpoint-config", "endpoint configuration")
    ENDPOINT = ("endpoint", "endpoint")

    def __init__(self, arn_type: str, description: str) -> None:
        self.arn_type = arn_type
        self.description = description

    def arn(self, account: AccountSettings, name: str) -> str:
        """`arn:aws:sagemaker:<region>:<account>:<type>/<name>`, the name lower-cased (as AWS)."""
        return (
            f"arn:aws:sagemaker:{account.region}:{account.account_id}:"
            f"{self.arn_type}/{name.lower()}"
        )


#: A resource's tags: (Key, Value) pairs, keys unique, in the order they were first added.
Tags = tuple[tuple[str, str], ...]


def failover_enabled(tags: Iterable[tuple[str, str]]) -> bool:
    """Whether (Key, Value) `tags` hold `splitserve:failover` = `true` (any case)."""
    return any(key == FAILOVER_TAG and value.lower() == "true" for key, value in tags)


def name_key(name: str) -> str:
    """The identity of a resource name: its ARN's spelling, so names differing in case collide."""
    return name.lower()


@dataclass(frozen=True)
class ModelRecord:
    """A model: its name, creation time, the validated CreateModel request (without Tags) and
    its tags (CreateModel's, then as AddTags and DeleteTags changed them)."""

    name: str
    creation_time: float
    document: Mapping[str, object]
    tags: Tags = ()

    def container(self) -> Mapping[str, object]:
        """The one container splitserve runs: PrimaryContainer, or the one entry of Containers."""
        primary = self.document.get("PrimaryContainer")
        if isinstance(primary, dict):
            return primary
        containers = self.document.get("Containers")
        if isinstance(containers, list) and containers and isinstance(containers[0], dict):
            first: dict[str, object] = containers[0]
            return first
        return {}


@dataclass(frozen=True)
class EndpointConfigRecord:
    """An endpoint configuration, the validated request that created it (without Tags) and its
    tags (CreateEndpointConfig's, then as AddTags and DeleteTags changed them)."""

    name: str
    creation_time: float
    document: Mapping[str, object]
    tags: Tags = ()

    def production_variants(self) -> list[Mapping[str, object]]:
        """The ProductionVariants as validated (every entry has the classic-variant members)."""
        variants = self.document.get("ProductionVariants")
        if not isinstance(variants, list):
            return []
        return [variant for variant in variants if isinstance(variant, dict)]

    def shadow_production_variants(self) -> list[Mapping[str, object]]:
        """The ShadowProductionVariants as validated (the same member shape); none when absent."""
        variants = self.document.get("ShadowProductionVariants")
        if not isinstance(variants, list):
            return []
        return [variant for variant in variants if isinstance(variant, dict)]

    def data_capture(self) -> Mapping[str, object] | None:
        """The DataCaptureConfig as validated, if the configuration has one."""
        config = self.document.get("DataCaptureConfig")
        return config if isinstance(config, dict) else None


@dataclass(frozen=True)
class VariantStatusEntry:
    """One ProductionVariantStatus: what is happening to a variant now, and since when."""

    status: str
    message: str
    start_time: float


@dataclass(frozen=True)
class DeployedVariant:
    """A production or shadow variant of an endpoint: what runs, and its weights and counts.

    The run-time fields are copied from the model and the configuration when the deployment starts.

    Attributes:
        model_data_url: the location the client gave (resolved again at every deployment).
        routing_strategy: the configuration's RoutingConfig.RoutingStrategy, None if it had none.
        container_startup_timeout_seconds: ContainerStartupHealthCheckTimeoutInSeconds, if given.
        deployed_time: when this variant's instances were started (DeployedImages.ResolutionTime);
            None until they are.
        status: the ProductionVariantStatus shown while the variant changes.
        shadow: a ShadowProductionVariant: its instances run, the router never picks it for a
            caller, and its weight sets the share of requests copied to it
            (docs/sagemaker-api.md, "Shadow variants"). An endpoint's shadows come after its
            production variants.
    """

    variant_name: str
    model_name: str
    image: str
    model_data_url: str | None
    environment: Mapping[str, str]
    instance_type: str
    routing_strategy: str | None
    container_startup_timeout_seconds: int | None
    current_weight: float
    desired_weight: float
    current_instance_count: int
    desired_instance_count: int
    deployed_time: float | None = None
    status: VariantStatusEntry | None = None
    shadow: bool = False


@dataclass(frozen=True)
class PendingDeployment:
    """The new (green) generation of an UpdateEndpoint, until it takes the traffic."""

    endpoint_config_name: str
    generation: int
    start_time: float
    variants: tuple[DeployedVariant, ...]
    data_capture: Mapping[str, object] | None


@dataclass(frozen=True)
class EndpointRecord:
    """An endpoint as the store keeps it.

    Attributes:
        endpoint_config_name: the configuration of the live generation.
        generation: the live generation's number; every deployment gets a new one.
        variants: the live generation's variants (while Creating: those being created).
        data_capture: the live configuration's DataCaptureConfig.
        deployment_config: the DeploymentConfig last given (LastDeploymentConfig).
        failure_reason: why the endpoint Failed, or why its last update failed (while InService).
        pending: the green generation of a blue/green update that has not taken traffic yet.
        tags: CreateEndpoint's Tags as (Key, Value) pairs, then as AddTags and DeleteTags
            changed them; `splitserve:failover` is read from them (see `failover`).
    """

    name: str
    status: EndpointStatus
    endpoint_config_name: str
    generation: int
    creation_time: float
    last_modified_time: float
    variants: tuple[DeployedVariant, ...]
    data_capture: Mapping[str, object] | None = None
    deployment_config: Mapping[str, object] | None = None
    failure_reason: str | None = None
    pending: PendingDeployment | None = None
    tags: Tags = ()

    @property
    def failover(self) -> bool:
        """Whether the endpoint's tag `splitserve:failover` is `true`."""
        return failover_enabled(self.tags)
