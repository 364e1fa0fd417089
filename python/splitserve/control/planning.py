"""From stored configurations to deployments: the variants an endpoint runs and the Deployer's plan.

CreateEndpoint and UpdateEndpoint turn an endpoint configuration (and its models) into the
variants they store (`Planner.variants_for`), checked against the instance limits; every
deployment, including a recovery's, turns stored variants into a `DeploymentPlan`
(`Planner.plan`), resolving model and capture locations again since the files may have moved.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from splitserve.capture.spec import DataCapture
from splitserve.control.deployer import DeploymentPlan, VariantPlan
from splitserve.control.documents import (
    mappings,
    model_data_location,
    optional_float,
    optional_int,
    optional_mapping,
    text,
    texts,
)
from splitserve.control.limits import InstanceLimits
from splitserve.control.models import DeployedVariant, EndpointConfigRecord
from splitserve.control.paths import LocalPathResolver
from splitserve.control.state import ControlState
from splitserve.control.validation import check_environment
from splitserve.errors import DeploymentError, ValidationException

log = logging.getLogger(__name__)


class Planner:
    """Builds the variants and deployment plans of endpoints.

    Args:
        state: the store (models are looked up there).
        resolver: resolves model data and capture locations to local paths.
        limits: the instance limits every new set of variants must keep.
        default_routing_strategy: a variant's routing strategy when its config names none.
        nodes_fetch_s3: the placement's nodes fetch `s3://` model data from an S3-compatible
            store themselves (`PlacementSettings.s3_endpoint_url`), so it need not be in the
            local model store; a missing object then fails on the node, with the store's reason.
    """

    def __init__(
        self,
        state: ControlState,
        resolver: LocalPathResolver,
        limits: InstanceLimits,
        default_routing_strategy: str,
        *,
        nodes_fetch_s3: bool = False,
    ) -> None:
        self._state = state
        self._resolver = resolver
        self._limits = limits
        self._default_routing_strategy = default_routing_strategy
        self._nodes_fetch_s3 = nodes_fetch_s3

    @property
    def instance_types(self) -> frozenset[str]:
        """The instance types this gateway runs."""
        return frozenset(self._limits.instance_vcpus)

    async def check_model_data(
        self, variants: tuple[DeployedVariant, ...], plan: DeploymentPlan
    ) -> None:
        """SageMaker checks the model data when it deploys: a missing one fails the deployment.

        Raises:
            DeploymentError: naming the variant, the model and the URL whose data is missing.
        """
        urls = {variant.variant_name: variant for variant in variants}
        for variant_plan in plan.variants:
            path = variant_plan.model_data
            variant = urls.get(variant_plan.variant_name)
            url = (variant.model_data_url if variant is not None else None) or str(path)
            if path is None or (self._nodes_fetch_s3 and url.startswith("s3://")):
                continue
            if await asyncio.to_thread(path.exists):
                continue
            log.warning(
                "endpoint %s, variant %s: model data %s (%s) does not exist",
                plan.endpoint_name,
                variant_plan.variant_name,
                url,
                path,
            )
            raise DeploymentError(
                f'Failed to find model data for variant "{variant_plan.variant_name}" (model '
                f'"{variant_plan.model_name}") at URL "{url}". Please ensure that there is an '
                "object located at the URL."
            )

    async def variants_for(
        self,
        endpoint_name: str,
        config: EndpointConfigRecord,
        *,
        retained: Mapping[str, DeployedVariant] | None,
        excluded: set[str] | None = None,
    ) -> tuple[DeployedVariant, ...]:
        """The variants a deployment of `config` runs: weights and counts from the configuration,
        or from `retained` live variants of the same name (except `excluded` properties).

        Raises:
            ValidationException: a model is missing or sets a reserved Environment variable, or
                an instance type is not available here.
            ResourceLimitExceeded: the variants are over the instance limits.
        """
        variants: list[DeployedVariant] = []
        instance_types = self.instance_types
        roles = [(variant, False) for variant in config.production_variants()]
        roles += [(variant, True) for variant in config.shadow_production_variants()]
        for variant, shadow in roles:
            variant_name = text(variant, "VariantName")
            model = await self._state.model(text(variant, "ModelName"))
            instance_type = text(variant, "InstanceType")
            if instance_type not in instance_types:
                raise ValidationException(
                    f'The instance type "{instance_type}" of variant "{variant_name}" in endpoint '
                    f'configuration "{config.name}" is not available on this gateway (available: '
                    f"{', '.join(sorted(instance_types))})."
                )
            weight = optional_float(variant.get("InitialVariantWeight"))
            weight = 1.0 if weight is None else weight
            count = optional_int(variant.get("InitialInstanceCount")) or 1
            live = None if retained is None else retained.get(variant_name)
            if live is not None:
                if "DesiredWeight" not in (excluded or set()):
                    weight = live.desired_weight
                if "DesiredInstanceCount" not in (excluded or set()):
                    count = live.desired_instance_count
            container = model.container()
            environment = optional_mapping(container.get("Environment")) or {}
            # A model stored before a name was reserved is refused here, when it would run.
            check_environment(environment, where=f'of model "{model.name}"')
            routing = optional_mapping(variant.get("RoutingConfig")) or {}
            strategy = routing.get("RoutingStrategy")
            location, _ = model_data_location(container, "")
            variants.append(
                DeployedVariant(
                    variant_name=variant_name,
                    model_name=model.name,
                    image=text(container, "Image"),
                    model_data_url=location,
                    environment={str(k): str(v) for k, v in environment.items()},
                    instance_type=instance_type,
                    routing_strategy=strategy if isinstance(strategy, str) else None,
                    container_startup_timeout_seconds=optional_int(
                        variant.get("ContainerStartupHealthCheckTimeoutInSeconds")
                    ),
                    current_weight=weight,
                    desired_weight=weight,
                    current_instance_count=count,
                    desired_instance_count=count,
                    shadow=shadow,
                )
            )
        self.check_limits(endpoint_name, variants)
        return tuple(variants)

    def check_limits(self, endpoint_name: str, variants: Sequence[DeployedVariant]) -> None:
        """Refuse `variants` (by their Desired counts) if they are over the instance limits.

        Raises:
            ResourceLimitExceeded: see `InstanceLimits.check`.
        """
        self._limits.check(
            [(v.variant_name, v.instance_type, v.desired_instance_count) for v in variants],
            endpoint_name=endpoint_name,
        )

    async def plan(
        self,
        endpoint_name: str,
        config_name: str,
        generation: int,
        variants: tuple[DeployedVariant, ...],
        data_capture: Mapping[str, object] | None,
        *,
        failover: bool,
    ) -> DeploymentPlan:
        """The Deployer's plan for these variants; locations are resolved (and checked) again.

        Raises:
            ValidationException: a location no longer resolves to a permitted local path.
        """
        plans = []
        for variant in variants:
            model_data = None
            if variant.model_data_url is not None:
                model_data = await asyncio.to_thread(
                    self._resolver.resolve_model_data, variant.model_data_url, field="modelDataUrl"
                )
            plans.append(
                VariantPlan(
                    variant_name=variant.variant_name,
                    model_name=variant.model_name,
                    image=variant.image,
                    model_data=model_data,
                    environment=dict(variant.environment),
                    instance_type=variant.instance_type,
                    instance_count=variant.desired_instance_count,
                    weight=variant.desired_weight,
                    routing_strategy=variant.routing_strategy or self._default_routing_strategy,
                    container_startup_timeout_seconds=variant.container_startup_timeout_seconds,
                    shadow=variant.shadow,
                )
            )
        capture = None
        if data_capture is not None:
            capture = await self._data_capture(data_capture)
        return DeploymentPlan(
            endpoint_name=endpoint_name,
            endpoint_config_name=config_name,
            generation=generation,
            variants=tuple(plans),
            data_capture=capture,
            failover=failover,
        )

    async def _data_capture(self, document: Mapping[str, object]) -> DataCapture:
        uri = text(document, "DestinationS3Uri")
        destination = await asyncio.to_thread(
            self._resolver.resolve, uri, field="dataCaptureConfig.destinationS3Uri"
        )
        modes = {text(option, "CaptureMode") for option in mappings(document.get("CaptureOptions"))}
        header = optional_mapping(document.get("CaptureContentTypeHeader")) or {}
        kms_key_id = document.get("KmsKeyId")
        return DataCapture(
            enable_capture=document.get("EnableCapture") is not False,
            sampling_percentage=optional_int(document.get("InitialSamplingPercentage")) or 0,
            destination_s3_uri=uri,
            destination=destination,
            kms_key_id=kms_key_id if isinstance(kms_key_id, str) else None,
            capture_input=bool(modes & {"Input", "InputAndOutput"}),
            capture_output=bool(modes & {"Output", "InputAndOutput"}),
            csv_content_types=texts(header.get("CsvContentTypes")),
            json_content_types=texts(header.get("JsonContentTypes")),
        )


@dataclass(frozen=True)
class TrafficStep:
    """One step of a blue/green update's traffic shift (docs/sagemaker-api.md, "Deployment
    guardrails").

    Attributes:
        share: the new (green) fleet's share of the requests once the step is taken, above 0
            and at most 1; the old (blue) fleet takes the rest.
        instances: the green capacity the share stands for, in instances (what
            VariantStatus messages name).
    """

    share: float
    instances: int


def traffic_steps(
    deployment_config: Mapping[str, object] | None, instance_count: int
) -> tuple[TrafficStep, ...]:
    """The traffic shift a validated DeploymentConfig asks for, over a green fleet of
    `instance_count` production instances; the last step always has share 1.

    ALL_AT_ONCE (or no configuration): one step. CANARY: the canary's share, then the rest.
    LINEAR: steps of LinearStepSize each, the last one capped at the whole. A size is a share of
    capacity: CAPACITY_PERCENT is that percentage, INSTANCE_COUNT that many of `instance_count`.
    """
    whole = max(instance_count, 1)
    policy = optional_mapping((deployment_config or {}).get("BlueGreenUpdatePolicy")) or {}
    routing = optional_mapping(policy.get("TrafficRoutingConfiguration")) or {}
    routing_type = routing.get("Type")
    size = optional_mapping(routing.get("CanarySize") or routing.get("LinearStepSize"))
    if routing_type not in ("CANARY", "LINEAR") or size is None:
        return (TrafficStep(1.0, whole),)
    value = optional_int(size.get("Value")) or 1
    # Counted in hundredths of capacity (percent) or in instances, so steps add up exactly.
    total = 100 if size.get("Type") == "CAPACITY_PERCENT" else whole
    taken = [min(value, total)] if routing_type == "CANARY" else []
    while routing_type == "LINEAR" and (not taken or taken[-1] < total):
        taken.append(min(len(taken) * value + value, total))
    if taken[-1] < total:
        taken.append(total)
    return tuple(
        TrafficStep(part / total, max(1, math.ceil(part / total * whole - 1e-9))) for part in taken
    )


@dataclass(frozen=True)
class RollingBatch:
    """One batch of a rolling update (RollingUpdatePolicy), by production variant name.

    Attributes:
        green: the new fleet's instance count of each variant once the batch is provisioned.
        blue: the old fleet's instance count of each variant once the batch's old capacity is
            terminated (at least 1 until the last batch, which retires the old fleet whole).
        share: the new fleet's share of the requests during the batch (1 for the last).
    """

    green: Mapping[str, int]
    blue: Mapping[str, int]
    share: float


def rolling_batches(
    deployment_config: Mapping[str, object] | None,
    blue_counts: Mapping[str, int],
    green_counts: Mapping[str, int],
) -> tuple[RollingBatch, ...]:
    """The batches a validated RollingUpdatePolicy asks for, from the old fleet's production
    instance counts to the new one's (the variants by name; the last batch has share 1).

    Each variant's batch is MaximumBatchSize: that many instances (INSTANCE_COUNT, at most the
    variant's count) or that percentage of the new variant's count, rounded up (at least 1).
    Each batch provisions a batch of new capacity, turns traffic on it in proportion to the
    capacity each fleet then has, and terminates as much old capacity.
    """
    policy = optional_mapping((deployment_config or {}).get("RollingUpdatePolicy")) or {}
    size = optional_mapping(policy.get("MaximumBatchSize")) or {}
    value = optional_int(size.get("Value")) or 1
    percent = size.get("Type") == "CAPACITY_PERCENT"
    step = {
        name: max(1, math.ceil(value * count / 100 - 1e-9)) if percent else min(value, count)
        for name, count in green_counts.items()
    }
    green = {name: min(step[name], count) for name, count in green_counts.items()}
    batches: list[RollingBatch] = []
    while True:
        if green == dict(green_counts):
            batches.append(RollingBatch(dict(green), dict.fromkeys(blue_counts, 0), 1.0))
            return tuple(batches)
        blue = {name: max(1, count - green.get(name, 0)) for name, count in blue_counts.items()}
        new, old = sum(green.values()), sum(blue.values())
        batches.append(RollingBatch(dict(green), blue, new / (new + old)))
        green = {name: min(count, green[name] + step[name]) for name, count in green_counts.items()}
