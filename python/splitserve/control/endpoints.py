"""The endpoint operations: CreateEndpoint, DescribeEndpoint, ListEndpoints, UpdateEndpoint,
UpdateEndpointWeightsAndCapacities and DeleteEndpoint.

Each validates its request, checks and writes the endpoint's new desired state in one step under
the state lock, then hands the work to the lifecycle (`lifecycle.py`, where the states an endpoint
goes through are described). Update, weight changes and delete are refused while a task runs
(Creating, Updating, SystemUpdating, RollingBack, Deleting): `Cannot update in-progress endpoint
"<arn>".`
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace

from splitserve.control.deployer import Deployer
from splitserve.control.documents import (
    endpoint_tags,
    mappings,
    optional_mapping,
    text,
)
from splitserve.control.lifecycle import EndpointLifecycle
from splitserve.control.listing import Listed, paginate
from splitserve.control.models import (
    IN_PROGRESS_STATUSES,
    DeployedVariant,
    EndpointRecord,
    EndpointStatus,
    PendingDeployment,
    ResourceKind,
    failover_enabled,
)
from splitserve.control.planning import Planner
from splitserve.control.ramp import ramp_spec
from splitserve.control.responses import describe_endpoint
from splitserve.control.state import ControlState
from splitserve.control.validation import (
    check_capacity_sizes,
    check_deployment_config,
    check_unique_variant_names,
    check_weight_sum,
    validate_request,
)
from splitserve.control.variants import desired, launching, settled
from splitserve.errors import ValidationException

log = logging.getLogger(__name__)


class EndpointOperations:
    """Serves the endpoint operations.

    Args:
        state: the store, its lock and lookups.
        deployer: asked for DescribeEndpoint's instance details.
        planner: the variants and plans of deployments, and the instance limits.
        lifecycle: runs the background work each operation starts.
    """

    def __init__(
        self,
        state: ControlState,
        deployer: Deployer,
        planner: Planner,
        lifecycle: EndpointLifecycle,
    ) -> None:
        self._state = state
        self._deployer = deployer
        self._planner = planner
        self._lifecycle = lifecycle

    async def create_endpoint(self, body: Mapping[str, object]) -> dict[str, object]:
        """CreateEndpoint -> {EndpointArn}; the endpoint is Creating, then InService or Failed."""
        request = validate_request("CreateEndpoint", body)
        deployment_config = optional_mapping(request.get("DeploymentConfig"))
        check_deployment_config(deployment_config)
        name = text(request, "EndpointName")
        arn = self._state.arn(ResourceKind.ENDPOINT, name)
        tags = endpoint_tags(request.get("Tags"))
        ramp_spec(tags)  # checked here; only AddTags starts a ramp (control/ramp.py)
        async with self._state.lock:
            if await self._state.run(self._state.store.get_endpoint, name) is not None:
                raise ValidationException(f'Cannot create already existing endpoint "{arn}".')
            config = await self._state.endpoint_config(text(request, "EndpointConfigName"))
            variants = await self._planner.variants_for(name, config, retained=None)
            plan = await self._planner.plan(
                name,
                config.name,
                1,
                variants,
                config.data_capture(),
                failover=failover_enabled(tags),
            )
            now = time.time()
            record = EndpointRecord(
                name=name,
                status=EndpointStatus.CREATING,
                endpoint_config_name=config.name,
                generation=1,
                creation_time=now,
                last_modified_time=now,
                variants=tuple(launching(variant, now) for variant in variants),
                data_capture=config.data_capture(),
                deployment_config=deployment_config,
                tags=tags,
            )
            if not await self._state.run(self._state.store.insert_endpoint, record):
                raise ValidationException(f'Cannot create already existing endpoint "{arn}".')
            self._lifecycle.spawn(name, self._lifecycle.create(record, plan))
        return {"EndpointArn": arn}

    async def describe_endpoint(self, body: Mapping[str, object]) -> dict[str, object]:
        """DescribeEndpoint -> status, variants (with a splitserve `Instances` list), and so on."""
        request = validate_request("DescribeEndpoint", body)
        record = await self._state.endpoint(text(request, "EndpointName"))
        return self._describe(record)

    async def list_endpoints(self, body: Mapping[str, object]) -> dict[str, object]:
        """ListEndpoints -> {Endpoints: [{EndpointName, EndpointArn, times, EndpointStatus}]}."""
        request = validate_request("ListEndpoints", body)
        records = await self._state.run(self._state.store.list_endpoints)
        rows = [
            Listed(
                record.name,
                record.creation_time,
                record.last_modified_time,
                record.status.value,
                {
                    "EndpointName": record.name,
                    "EndpointArn": self._state.arn(ResourceKind.ENDPOINT, record.name),
                    "CreationTime": record.creation_time,
                    "LastModifiedTime": record.last_modified_time,
                    "EndpointStatus": record.status.value,
                },
            )
            for record in records
        ]
        return paginate(rows, request, "Endpoints")

    async def update_endpoint(self, body: Mapping[str, object]) -> dict[str, object]:
        """UpdateEndpoint -> {EndpointArn}: a blue/green deployment of another configuration,
        its traffic shifted all at once or in DeploymentConfig's CANARY or LINEAR steps, rolled
        back when an AutoRollbackConfiguration alarm fires (`guardrails.GuardedUpdate`).

        RetainAllVariantProperties keeps the live DesiredWeight and DesiredInstanceCount of every
        variant that is in both configurations, except the properties that
        ExcludeRetainedVariantProperties names (those come from the new configuration, as do new
        variants). DataCaptureConfig always follows the new configuration: AWS documents retaining
        it as not supported.
        """
        request = validate_request("UpdateEndpoint", body)
        deployment_config = optional_mapping(request.get("DeploymentConfig"))
        check_deployment_config(deployment_config)
        async with self._state.lock:
            current = await self._state.endpoint(text(request, "EndpointName"))
            self._require_updatable(current)
            config = await self._state.endpoint_config(text(request, "EndpointConfigName"))
            retained: dict[str, DeployedVariant] | None = None
            excluded: set[str] = set()
            if request.get("RetainAllVariantProperties") is True:
                retained = {variant.variant_name: variant for variant in current.variants}
                excluded = {
                    text(item, "VariantPropertyType")
                    for item in mappings(request.get("ExcludeRetainedVariantProperties"))
                }
            variants = await self._planner.variants_for(
                current.name, config, retained=retained, excluded=excluded
            )
            if deployment_config is None and request.get("RetainDeploymentConfig") is True:
                deployment_config = optional_mapping(current.deployment_config)
            check_capacity_sizes(
                deployment_config,
                sum(v.desired_instance_count for v in variants if not v.shadow),
            )
            if optional_mapping((deployment_config or {}).get("RollingUpdatePolicy")):
                _check_rolling_variants(current, variants)
            generation = current.generation + 1
            plan = await self._planner.plan(
                current.name,
                config.name,
                generation,
                variants,
                config.data_capture(),
                failover=current.failover,
            )
            now = time.time()
            pending = PendingDeployment(
                endpoint_config_name=config.name,
                generation=generation,
                start_time=now,
                variants=tuple(launching(variant, now, weight=0.0) for variant in variants),
                data_capture=config.data_capture(),
            )
            record = replace(
                current,
                status=EndpointStatus.UPDATING,
                last_modified_time=now,
                failure_reason=None,
                deployment_config=deployment_config,
                pending=pending,
            )
            await self._state.run(self._state.store.put_endpoint, record)
            self._lifecycle.spawn(
                current.name,
                self._lifecycle.update(current.name, current.generation, plan, deployment_config),
            )
        return {"EndpointArn": self._state.arn(ResourceKind.ENDPOINT, current.name)}

    async def update_endpoint_weights_and_capacities(
        self, body: Mapping[str, object]
    ) -> dict[str, object]:
        """UpdateEndpointWeightsAndCapacities -> {EndpointArn}: change the live variants in place.

        Only the listed variants change; an instance count changes only when DesiredInstanceCount
        is given. DesiredInstanceCount must be at least 1 (a classic variant cannot scale to 0).
        """
        request = validate_request("UpdateEndpointWeightsAndCapacities", body)
        items = mappings(request.get("DesiredWeightsAndCapacities"))
        async with self._state.lock:
            current = await self._state.endpoint(text(request, "EndpointName"))
            self._require_updatable(current)
            names = [text(item, "VariantName") for item in items]
            check_unique_variant_names(names)
            live = {variant.variant_name for variant in current.variants}
            unknown = [name for name in names if name not in live]
            if unknown:
                quoted = ", ".join(f'"{name}"' for name in unknown)
                raise ValidationException(
                    f"The variant name(s) {quoted} is/are not present within endpoint "
                    f'configuration "{current.endpoint_config_name}".'
                )
            now = time.time()
            changes = {text(item, "VariantName"): item for item in items}
            for name, item in changes.items():
                if item.get("DesiredWeight") is None and item.get("DesiredInstanceCount") is None:
                    raise ValidationException(
                        f'Give DesiredWeight, DesiredInstanceCount or both for variant "{name}".'
                    )
            updated = tuple(
                desired(variant, changes.get(variant.variant_name), now)
                for variant in current.variants
            )
            check_weight_sum(variant.desired_weight for variant in updated)
            self._planner.check_limits(current.name, updated)
            record = replace(
                current, status=EndpointStatus.UPDATING, last_modified_time=now, variants=updated
            )
            await self._state.run(self._state.store.put_endpoint, record)
            weights_changed = any(
                variant.desired_weight != variant.current_weight for variant in updated
            )
            if weights_changed:
                await self._lifecycle.apply_weights_now(current, updated)
            if any(v.desired_instance_count != v.current_instance_count for v in updated):
                self._lifecycle.spawn(
                    current.name,
                    self._lifecycle.resize(current.name, current.variants, weights_changed),
                )
            else:
                # Nothing is left to do once the router has the weights: the endpoint is back
                # InService before the call answers (its Updating state was stored above, and a
                # DescribeEndpoint in between may see it), so the next update is accepted at once.
                await self._state.run(
                    self._state.store.put_endpoint,
                    replace(
                        record,
                        status=EndpointStatus.IN_SERVICE,
                        last_modified_time=time.time(),
                        variants=tuple(settled(variant) for variant in updated),
                    ),
                )
        return {"EndpointArn": self._state.arn(ResourceKind.ENDPOINT, current.name)}

    async def delete_endpoint(self, body: Mapping[str, object]) -> dict[str, object]:
        """DeleteEndpoint -> {}; the endpoint is Deleting, then gone. Its config and models stay."""
        request = validate_request("DeleteEndpoint", body)
        async with self._state.lock:
            current = await self._state.endpoint(text(request, "EndpointName"))
            if current.status in IN_PROGRESS_STATUSES:
                raise self._in_progress(current)
            record = replace(
                current, status=EndpointStatus.DELETING, last_modified_time=time.time()
            )
            await self._state.run(self._state.store.put_endpoint, record)
            self._lifecycle.spawn(current.name, self._lifecycle.delete(current.name))
        return {}

    async def weight_history(self, endpoint_name: str) -> dict[str, object]:
        """The endpoint's weight changes, oldest first (GET /splitserve/endpoints/<name>/weights):
        {EndpointName, EndpointArn, CreationTime, WeightChanges: [{Time, Cause, Weights:
        [{VariantName, Weight}]}]}. Each change held from its Time until the next one's.

        Raises:
            ValidationException: `Could not find endpoint` when there is no such endpoint.
        """
        record = await self._state.endpoint(endpoint_name)
        changes = await self._state.run(self._state.store.weight_history, record.name)
        return {
            "EndpointName": record.name,
            "EndpointArn": self._state.arn(ResourceKind.ENDPOINT, record.name),
            "CreationTime": record.creation_time,
            "WeightChanges": [
                {
                    "Time": change.time,
                    "Cause": change.cause,
                    "Weights": [
                        {"VariantName": variant, "Weight": weight}
                        for variant, weight in change.weights
                    ],
                }
                for change in changes
            ],
        }

    def _describe(self, record: EndpointRecord) -> dict[str, object]:
        try:
            instances = self._deployer.instance_details(record.name)
        except Exception:
            log.exception("instance details of endpoint %s failed", record.name)
            instances = {}
        return describe_endpoint(
            record, self._state.arn(ResourceKind.ENDPOINT, record.name), instances
        )

    def _in_progress(self, record: EndpointRecord) -> ValidationException:
        arn = self._state.arn(ResourceKind.ENDPOINT, record.name)
        return ValidationException(f'Cannot update in-progress endpoint "{arn}".')

    def _require_updatable(self, record: EndpointRecord) -> None:
        if record.status in IN_PROGRESS_STATUSES or self._lifecycle.busy(record.name):
            raise self._in_progress(record)
        if record.status is not EndpointStatus.IN_SERVICE:
            arn = self._state.arn(ResourceKind.ENDPOINT, record.name)
            raise ValidationException(
                f'Cannot update endpoint "{arn}" in status {record.status.value}: DeleteEndpoint '
                "is the only operation it allows."
            )


def _check_rolling_variants(current: EndpointRecord, variants: tuple[DeployedVariant, ...]) -> None:
    """A rolling update replaces each production variant's capacity batch by batch: the new
    configuration must have the live production variants, by name (splitserve's rule).

    Raises:
        ValidationException: naming both lists of variants.
    """
    live = [v.variant_name for v in current.variants if not v.shadow]
    new = [v.variant_name for v in variants if not v.shadow]
    if sorted(live) != sorted(new):
        raise ValidationException(
            "RollingUpdatePolicy replaces each production variant's instances batch by batch: "
            f"the new endpoint configuration's production variants ({', '.join(new)}) must be "
            f"the endpoint's ({', '.join(live)}). Use BlueGreenUpdatePolicy to change them."
        )
