"""The SageMaker control plane: models, endpoint configurations and endpoints.

`ControlService.dispatch(operation, body)` serves the operations below with SageMaker's request and
response shapes (sagemaker-api.md, section 2) and its error messages (section 1.1). It validates,
writes every state to the `Store` before it answers, and drives a `Deployer` from background tasks
it owns, one per endpoint at a time.

Endpoint lifecycle, as implemented:
- CreateEndpoint answers Creating; the task checks the model data exists, deploys, activates, and
  writes InService. A DeploymentError (or missing model data) gives Failed with FailureReason; any
  other exception gives Failed with a generic reason (the details go to the log).
- UpdateEndpoint is blue/green, all at once: Updating with a PendingDeploymentSummary while the new
  generation starts beside the live one; then one atomic switch (`Deployer.activate`), after which
  the new generation is what DescribeEndpoint shows as ProductionVariants (VariantStatus Baking
  during TerminationWaitInSeconds), then the old generation is retired and the endpoint is
  InService. If the new generation fails, the old one keeps serving: the endpoint goes back to
  InService and FailureReason says why the update failed (as AWS documents FailureReason: "or the
  status is InService but update operation fails"). The reason is cleared by the next update.
- UpdateEndpointWeightsAndCapacities changes the live generation in place: Updating with the Desired
  values set; the new weights reach the router before the call answers (new requests see them at
  once); instance counts change in the background, then Current = Desired and InService. If scaling
  fails the endpoint is RollingBack to its previous weights and counts, then InService with
  FailureReason (Failed if even that fails). A change of weights only is done before the call
  answers: Updating is stored, the router takes the weights, then InService with Current =
  Desired, so the next update is accepted at once (a hundred a second and more).
- DeleteEndpoint answers Deleting; the task removes the endpoint from the deployer and deletes the
  record, after which DescribeEndpoint says `Could not find endpoint`.
- Update, weight changes and delete are refused while a task runs (Creating, Updating,
  SystemUpdating, RollingBack, Deleting): `Cannot update in-progress endpoint "<arn>".`
- `start()` brings back every endpoint that was serving or being created or updated, with the last
  weights and instance counts the API accepted (the Desired values; RollingBack ones return to their
  Current values). One that was Creating stays Creating; any other shows SystemUpdating ("undergoing
  maintenance", so it cannot be changed meanwhile) until it serves again. An interrupted blue/green
  update that had not switched yet is abandoned for the configuration that was live, and
  FailureReason says so. Failed stays Failed; Deleting finishes deleting.

Names are identified like their ARNs, case-insensitively (ARNs lower-case them); responses keep the
spelling the client created them with.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, ParamSpec, TypeVar

from splitserve.capture.spec import DataCapture
from splitserve.config import Settings
from splitserve.control.deployer import Deployer, DeploymentPlan, VariantPlan
from splitserve.control.limits import InstanceLimits
from splitserve.control.models import (
    FAILOVER_TAG,
    IN_PROGRESS_STATUSES,
    DeployedVariant,
    EndpointConfigRecord,
    EndpointRecord,
    EndpointStatus,
    ModelRecord,
    PendingDeployment,
    ResourceKind,
    VariantStatusEntry,
    failover_enabled,
    name_key,
)
from splitserve.control.paths import LocalPathResolver
from splitserve.control.store import Store
from splitserve.control.validation import (
    DEFAULT_MAX_RESULTS,
    check_deployment_config,
    check_environment,
    check_metrics_config,
    check_production_variants,
    check_unique_variant_names,
    check_weight_sum,
    member_path,
    validate_request,
)
from splitserve.errors import (
    DeploymentError,
    SerializationException,
    SplitserveError,
    UnknownOperationException,
    ValidationException,
)

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: FailureReason is at most 1024 characters (the service model's FailureReason max).
MAX_FAILURE_REASON = 1024

_Handler = Callable[[Mapping[str, object]], Awaitable[dict[str, object]]]


class ControlService:
    """Serves the SageMaker control-plane operations over a Store and a Deployer."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        deployer: Deployer,
        *,
        instance_vcpus: Mapping[str, int],
    ) -> None:
        """Build the service; nothing runs until `start()`.

        Args:
            settings: account (ARNs), model store (s3:// locations), default routing strategy,
                the instance limits (`settings.control`) and the host's CPUs.
            store: the open state store; the service closes it in `close()`.
            deployer: what runs the endpoints.
            instance_vcpus: the instance types the workers' catalog can run, with their vCPUs.
        """
        self._account = settings.account
        self._default_routing_strategy = settings.router.default_routing_strategy
        self._store = store
        self._deployer = deployer
        self._instance_types = frozenset(instance_vcpus)
        self._limits = InstanceLimits(
            instance_vcpus=dict(instance_vcpus),
            host_cpus=len(settings.workers.host_cpus()),
            max_instances_per_variant=settings.control.max_instances_per_variant,
            max_vcpu_overcommit=settings.control.max_vcpu_overcommit,
        )
        self._resolver = LocalPathResolver(settings.model_store, settings.allowed_artifact_paths)
        # One thread for every SQLite call: the connection is never used by two threads at once.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="splitserve-store")
        # Held by every read-check-write of an endpoint, so checks and writes do not interleave.
        self._lock = asyncio.Lock()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self._operations: dict[str, _Handler] = {
            "CreateModel": self.create_model,
            "DescribeModel": self.describe_model,
            "DeleteModel": self.delete_model,
            "ListModels": self.list_models,
            "CreateEndpointConfig": self.create_endpoint_config,
            "DescribeEndpointConfig": self.describe_endpoint_config,
            "DeleteEndpointConfig": self.delete_endpoint_config,
            "ListEndpointConfigs": self.list_endpoint_configs,
            "CreateEndpoint": self.create_endpoint,
            "DescribeEndpoint": self.describe_endpoint,
            "ListEndpoints": self.list_endpoints,
            "UpdateEndpoint": self.update_endpoint,
            "UpdateEndpointWeightsAndCapacities": self.update_endpoint_weights_and_capacities,
            "DeleteEndpoint": self.delete_endpoint,
        }

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bring back the endpoints the store remembers (deployments continue in the background)."""
        records = await self._db(self._store.list_endpoints)
        for record in records:
            if record.status is EndpointStatus.DELETING:
                self._spawn(record.name, self._delete(record.name))
            elif record.status in (
                EndpointStatus.IN_SERVICE,
                EndpointStatus.CREATING,
                EndpointStatus.UPDATING,
                EndpointStatus.SYSTEM_UPDATING,
                EndpointStatus.ROLLING_BACK,
            ):
                await self._recover(record)

    async def close(self) -> None:
        """Cancel the background tasks, wait for them, and close the store."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._db(self._store.close)
        self._executor.shutdown(wait=False)

    async def settle(self) -> None:
        """Wait until no background task runs (tests; an orderly stop that lets deployments end)."""
        while pending := [task for task in self._tasks.values() if not task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def dispatch(self, operation: str, body: dict[str, object]) -> dict[str, object]:
        """Serve one operation (the X-Amz-Target after `SageMaker.`) and return its output.

        Raises:
            UnknownOperationException: the operation is not one this gateway serves.
            SerializationException: the body is not a JSON object.
            ValidationException, ResourceLimitExceeded: as each operation documents.
        """
        handler = self._operations.get(operation)
        if handler is None:
            raise UnknownOperationException(f"Operation SageMaker.{operation} is not supported.")
        if not isinstance(body, dict):
            raise SerializationException("The request body must be a JSON object.")
        return await handler(body)

    # --- models -----------------------------------------------------------------------------------

    async def create_model(self, body: Mapping[str, object]) -> dict[str, object]:
        """CreateModel: store a model with one container -> {ModelArn}.

        Its model data location is checked (it must resolve inside the model store when it is an
        s3:// location) but need not exist yet: that is checked when an endpoint deploys it.
        """
        request = validate_request("CreateModel", body)
        name = _text(request, "ModelName")
        container, where = _single_container(request)
        _check_container(container, where)
        location, field = _model_data_location(container, where)
        if location is not None:
            await asyncio.to_thread(self._resolver.resolve_model_data, location, field=field)
        document = {
            key: value for key, value in request.items() if key not in ("ModelName", "Tags")
        }
        record = ModelRecord(name, time.time(), document)
        arn = ResourceKind.MODEL.arn(self._account, name)
        if not await self._db(self._store.insert_model, record):
            raise ValidationException(f'Cannot create already existing model "{arn}".')
        return {"ModelArn": arn}

    async def describe_model(self, body: Mapping[str, object]) -> dict[str, object]:
        """DescribeModel -> the model as created (name, ARN, creation time, container, ...)."""
        request = validate_request("DescribeModel", body)
        record = await self._model(_text(request, "ModelName"))
        return {
            "ModelName": record.name,
            "ModelArn": ResourceKind.MODEL.arn(self._account, record.name),
            "CreationTime": record.creation_time,
            **record.document,
        }

    async def delete_model(self, body: Mapping[str, object]) -> dict[str, object]:
        """DeleteModel -> {}. Allowed while endpoints use the model (they keep running)."""
        request = validate_request("DeleteModel", body)
        name = _text(request, "ModelName")
        if not await self._db(self._store.delete_model, name):
            raise _not_found(ResourceKind.MODEL, self._arn_of(ResourceKind.MODEL, name))
        return {}

    async def list_models(self, body: Mapping[str, object]) -> dict[str, object]:
        """ListModels -> {Models: [{ModelName, ModelArn, CreationTime}], NextToken?}."""
        request = validate_request("ListModels", body)
        records = await self._db(self._store.list_models)
        rows = [
            _Listed(
                record.name,
                record.creation_time,
                record.creation_time,
                "",
                {
                    "ModelName": record.name,
                    "ModelArn": ResourceKind.MODEL.arn(self._account, record.name),
                    "CreationTime": record.creation_time,
                },
            )
            for record in records
        ]
        return _paginate(rows, request, "Models")

    # --- endpoint configurations ------------------------------------------------------------------

    async def create_endpoint_config(self, body: Mapping[str, object]) -> dict[str, object]:
        """CreateEndpointConfig -> {EndpointConfigArn}.

        Accepts everything DescribeEndpointConfig echoes. Shadow variants are validated (one
        production and one shadow variant) and then refused: splitserve does not run them yet.
        """
        request = validate_request("CreateEndpointConfig", body)
        name = _text(request, "EndpointConfigName")
        variants = _mappings(request.get("ProductionVariants"))
        check_production_variants(
            variants, path="productionVariants", instance_types=self._instance_types
        )
        shadows = request.get("ShadowProductionVariants")
        if shadows is not None:
            shadow_variants = _mappings(shadows)
            check_production_variants(
                shadow_variants,
                path="shadowProductionVariants",
                instance_types=self._instance_types,
            )
            check_unique_variant_names(
                variant.get("VariantName") for variant in [*variants, *shadow_variants]
            )
            if len(variants) != 1 or len(shadow_variants) != 1:
                raise ValidationException(
                    "With ShadowProductionVariants, ProductionVariants and "
                    "ShadowProductionVariants must each hold exactly one variant."
                )
            raise ValidationException(
                "splitserve does not implement ShadowProductionVariants (at "
                "'shadowProductionVariants') yet: shadow variants are not run. Deploy the shadow "
                "model as a production variant with InitialVariantWeight 0 and call it with "
                "TargetVariant instead."
            )
        check_metrics_config(_optional_mapping(request.get("MetricsConfig")))
        capture = _optional_mapping(request.get("DataCaptureConfig"))
        if capture is not None:
            await asyncio.to_thread(
                self._resolver.resolve,
                _text(capture, "DestinationS3Uri"),
                field="dataCaptureConfig.destinationS3Uri",
            )
        for variant in variants:
            variant.setdefault("InitialVariantWeight", 1.0)
        arn = ResourceKind.ENDPOINT_CONFIG.arn(self._account, name)
        if await self._db(self._store.get_endpoint_config, name) is not None:
            raise ValidationException(
                f'Cannot create already existing endpoint configuration "{arn}".'
            )
        for variant in variants:
            await self._model(_text(variant, "ModelName"))
        document = {
            key: value
            for key, value in request.items()
            if key not in ("EndpointConfigName", "Tags")
        }
        record = EndpointConfigRecord(name, time.time(), document)
        if not await self._db(self._store.insert_endpoint_config, record):
            raise ValidationException(
                f'Cannot create already existing endpoint configuration "{arn}".'
            )
        return {"EndpointConfigArn": arn}

    async def describe_endpoint_config(self, body: Mapping[str, object]) -> dict[str, object]:
        """DescribeEndpointConfig -> the configuration as created (with InitialVariantWeight)."""
        request = validate_request("DescribeEndpointConfig", body)
        record = await self._endpoint_config(_text(request, "EndpointConfigName"))
        return {
            "EndpointConfigName": record.name,
            "EndpointConfigArn": ResourceKind.ENDPOINT_CONFIG.arn(self._account, record.name),
            "CreationTime": record.creation_time,
            **record.document,
        }

    async def delete_endpoint_config(self, body: Mapping[str, object]) -> dict[str, object]:
        """DeleteEndpointConfig -> {}. Allowed while endpoints use it (they keep their copy)."""
        request = validate_request("DeleteEndpointConfig", body)
        name = _text(request, "EndpointConfigName")
        if not await self._db(self._store.delete_endpoint_config, name):
            raise _not_found(
                ResourceKind.ENDPOINT_CONFIG, self._arn_of(ResourceKind.ENDPOINT_CONFIG, name)
            )
        return {}

    async def list_endpoint_configs(self, body: Mapping[str, object]) -> dict[str, object]:
        """ListEndpointConfigs -> {EndpointConfigs: [{Name, Arn, CreationTime}], NextToken?}."""
        request = validate_request("ListEndpointConfigs", body)
        records = await self._db(self._store.list_endpoint_configs)
        rows = [
            _Listed(
                record.name,
                record.creation_time,
                record.creation_time,
                "",
                {
                    "EndpointConfigName": record.name,
                    "EndpointConfigArn": ResourceKind.ENDPOINT_CONFIG.arn(
                        self._account, record.name
                    ),
                    "CreationTime": record.creation_time,
                },
            )
            for record in records
        ]
        return _paginate(rows, request, "EndpointConfigs")

    # --- endpoints --------------------------------------------------------------------------------

    async def create_endpoint(self, body: Mapping[str, object]) -> dict[str, object]:
        """CreateEndpoint -> {EndpointArn}; the endpoint is Creating, then InService or Failed."""
        request = validate_request("CreateEndpoint", body)
        deployment_config = _optional_mapping(request.get("DeploymentConfig"))
        check_deployment_config(deployment_config)
        name = _text(request, "EndpointName")
        arn = ResourceKind.ENDPOINT.arn(self._account, name)
        tags = _endpoint_tags(request.get("Tags"))
        async with self._lock:
            if await self._db(self._store.get_endpoint, name) is not None:
                raise ValidationException(f'Cannot create already existing endpoint "{arn}".')
            config = await self._endpoint_config(_text(request, "EndpointConfigName"))
            variants = await self._variants_for(name, config, retained=None)
            plan = await self._plan(
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
                variants=tuple(_launching(variant, now) for variant in variants),
                data_capture=config.data_capture(),
                deployment_config=deployment_config,
                tags=tags,
            )
            if not await self._db(self._store.insert_endpoint, record):
                raise ValidationException(f'Cannot create already existing endpoint "{arn}".')
            self._spawn(name, self._create(record, plan))
        return {"EndpointArn": arn}

    async def describe_endpoint(self, body: Mapping[str, object]) -> dict[str, object]:
        """DescribeEndpoint -> status, variants (with a splitserve `Instances` list), and so on."""
        request = validate_request("DescribeEndpoint", body)
        record = await self._endpoint(_text(request, "EndpointName"))
        return self._describe(record)

    async def list_endpoints(self, body: Mapping[str, object]) -> dict[str, object]:
        """ListEndpoints -> {Endpoints: [{EndpointName, EndpointArn, times, EndpointStatus}]}."""
        request = validate_request("ListEndpoints", body)
        records = await self._db(self._store.list_endpoints)
        rows = [
            _Listed(
                record.name,
                record.creation_time,
                record.last_modified_time,
                record.status.value,
                {
                    "EndpointName": record.name,
                    "EndpointArn": ResourceKind.ENDPOINT.arn(self._account, record.name),
                    "CreationTime": record.creation_time,
                    "LastModifiedTime": record.last_modified_time,
                    "EndpointStatus": record.status.value,
                },
            )
            for record in records
        ]
        return _paginate(rows, request, "Endpoints")

    async def update_endpoint(self, body: Mapping[str, object]) -> dict[str, object]:
        """UpdateEndpoint -> {EndpointArn}: a blue/green deployment of another configuration.

        RetainAllVariantProperties keeps the live DesiredWeight and DesiredInstanceCount of every
        variant that is in both configurations, except the properties that
        ExcludeRetainedVariantProperties names (those come from the new configuration, as do new
        variants). DataCaptureConfig always follows the new configuration: AWS documents retaining
        it as not supported.
        """
        request = validate_request("UpdateEndpoint", body)
        deployment_config = _optional_mapping(request.get("DeploymentConfig"))
        check_deployment_config(deployment_config)
        async with self._lock:
            current = await self._endpoint(_text(request, "EndpointName"))
            self._require_updatable(current)
            config = await self._endpoint_config(_text(request, "EndpointConfigName"))
            retained: dict[str, DeployedVariant] | None = None
            excluded: set[str] = set()
            if request.get("RetainAllVariantProperties") is True:
                retained = {variant.variant_name: variant for variant in current.variants}
                excluded = {
                    _text(item, "VariantPropertyType")
                    for item in _mappings(request.get("ExcludeRetainedVariantProperties"))
                }
            variants = await self._variants_for(
                current.name, config, retained=retained, excluded=excluded
            )
            if deployment_config is None and request.get("RetainDeploymentConfig") is True:
                deployment_config = _optional_mapping(current.deployment_config)
            generation = current.generation + 1
            plan = await self._plan(
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
                variants=tuple(_launching(variant, now, weight=0.0) for variant in variants),
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
            await self._db(self._store.put_endpoint, record)
            self._spawn(
                current.name,
                self._update(current.name, current.generation, plan, deployment_config),
            )
        return {"EndpointArn": ResourceKind.ENDPOINT.arn(self._account, current.name)}

    async def update_endpoint_weights_and_capacities(
        self, body: Mapping[str, object]
    ) -> dict[str, object]:
        """UpdateEndpointWeightsAndCapacities -> {EndpointArn}: change the live variants in place.

        Only the listed variants change; an instance count changes only when DesiredInstanceCount
        is given. DesiredInstanceCount must be at least 1 (a classic variant cannot scale to 0).
        """
        request = validate_request("UpdateEndpointWeightsAndCapacities", body)
        items = _mappings(request.get("DesiredWeightsAndCapacities"))
        async with self._lock:
            current = await self._endpoint(_text(request, "EndpointName"))
            self._require_updatable(current)
            names = [_text(item, "VariantName") for item in items]
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
            changes = {_text(item, "VariantName"): item for item in items}
            for name, item in changes.items():
                if item.get("DesiredWeight") is None and item.get("DesiredInstanceCount") is None:
                    raise ValidationException(
                        f'Give DesiredWeight, DesiredInstanceCount or both for variant "{name}".'
                    )
            updated = tuple(
                _desired(variant, changes.get(variant.variant_name), now)
                for variant in current.variants
            )
            check_weight_sum(variant.desired_weight for variant in updated)
            self._limits.check(
                [(v.variant_name, v.instance_type, v.desired_instance_count) for v in updated],
                endpoint_name=current.name,
            )
            record = replace(
                current, status=EndpointStatus.UPDATING, last_modified_time=now, variants=updated
            )
            await self._db(self._store.put_endpoint, record)
            weights_changed = any(
                variant.desired_weight != variant.current_weight for variant in updated
            )
            if weights_changed:
                await self._apply_weights_now(current, updated)
            if any(v.desired_instance_count != v.current_instance_count for v in updated):
                self._spawn(
                    current.name, self._resize(current.name, current.variants, weights_changed)
                )
            else:
                # Nothing is left to do once the router has the weights: the endpoint is back
                # InService before the call answers (its Updating state was stored above, and a
                # DescribeEndpoint in between may see it), so the next update is accepted at once.
                await self._db(
                    self._store.put_endpoint,
                    replace(
                        record,
                        status=EndpointStatus.IN_SERVICE,
                        last_modified_time=time.time(),
                        variants=tuple(_settled(variant) for variant in updated),
                    ),
                )
        return {"EndpointArn": ResourceKind.ENDPOINT.arn(self._account, current.name)}

    async def delete_endpoint(self, body: Mapping[str, object]) -> dict[str, object]:
        """DeleteEndpoint -> {}; the endpoint is Deleting, then gone. Its config and models stay."""
        request = validate_request("DeleteEndpoint", body)
        async with self._lock:
            current = await self._endpoint(_text(request, "EndpointName"))
            if current.status in IN_PROGRESS_STATUSES:
                raise self._in_progress(current)
            record = replace(
                current, status=EndpointStatus.DELETING, last_modified_time=time.time()
            )
            await self._db(self._store.put_endpoint, record)
            self._spawn(current.name, self._delete(current.name))
        return {}

    # --- background work --------------------------------------------------------------------------

    async def _create(self, record: EndpointRecord, plan: DeploymentPlan) -> None:
        """Deploy and activate a new (or recovered) endpoint, then InService; Failed on failure."""
        try:
            await self._check_model_data(record.variants, plan)
            await self._deployer.deploy(plan)
            try:
                await self._deployer.activate(plan)
            except Exception:
                await self._retire_quietly(plan.endpoint_name, plan.generation)
                raise
        except DeploymentError as error:
            await self._set_failed(record.name, error.message)
            return
        except Exception:
            await self._set_failed(record.name, _internal_reason("deploying the endpoint"))
            return
        now = time.time()

        def in_service(current: EndpointRecord) -> EndpointRecord:
            return replace(
                current,
                status=EndpointStatus.IN_SERVICE,
                last_modified_time=now,
                variants=tuple(
                    _settled(variant, deployed_time=now) for variant in current.variants
                ),
            )

        await self._transition(record.name, in_service)

    async def _update(
        self,
        endpoint_name: str,
        blue_generation: int,
        plan: DeploymentPlan,
        deployment_config: Mapping[str, object] | None,
    ) -> None:
        """Blue/green: deploy green beside blue, switch, bake, retire blue, InService."""
        policy = _optional_mapping((deployment_config or {}).get("BlueGreenUpdatePolicy")) or {}
        bake = _optional_int(policy.get("TerminationWaitInSeconds")) or 0
        limit = _optional_int(policy.get("MaximumExecutionTimeoutInSeconds"))
        current = await self._db(self._store.get_endpoint, endpoint_name)
        if current is None or current.pending is None:
            return
        green_variants = current.pending.variants
        reason: str | None = None
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                await self._check_model_data(green_variants, plan)
                await self._deployer.deploy(plan)
                try:
                    await self._deployer.activate(plan)
                except Exception:
                    await self._retire_quietly(endpoint_name, plan.generation)
                    raise
        except TimeoutError:
            await self._retire_quietly(endpoint_name, plan.generation)
            if deadline.expired():
                reason = (
                    "The update did not finish within MaximumExecutionTimeoutInSeconds "
                    f"({limit} s)."
                )
            else:
                reason = _internal_reason("deploying the new endpoint configuration")
        except DeploymentError as error:
            reason = error.message
        except Exception:
            reason = _internal_reason("deploying the new endpoint configuration")
        if reason is not None:
            failure = (
                "Failed to update endpoint to endpoint configuration "
                f'"{plan.endpoint_config_name}"; the endpoint still serves its previous '
                f"configuration. {reason}"
            )

            def back_on_blue(record: EndpointRecord) -> EndpointRecord:
                return replace(
                    record,
                    status=EndpointStatus.IN_SERVICE,
                    last_modified_time=time.time(),
                    failure_reason=failure[:MAX_FAILURE_REASON],
                    pending=None,
                )

            await self._transition(endpoint_name, back_on_blue)
            return
        switched = time.time()
        baking = (
            VariantStatusEntry(
                "Baking",
                f"Baking for {bake} seconds (TerminationWaitInSeconds) with traffic enabled on "
                "full capacity.",
                switched,
            )
            if bake
            else None
        )

        def green_is_live(record: EndpointRecord) -> EndpointRecord:
            pending = record.pending
            if pending is None:
                return record
            return replace(
                record,
                endpoint_config_name=pending.endpoint_config_name,
                generation=pending.generation,
                variants=tuple(
                    replace(_settled(variant, deployed_time=switched), status=baking)
                    for variant in pending.variants
                ),
                data_capture=pending.data_capture,
                pending=None,
                last_modified_time=switched,
            )

        await self._transition(endpoint_name, green_is_live)
        if bake:
            await asyncio.sleep(bake)
        await self._retire_quietly(endpoint_name, blue_generation)

        def in_service(record: EndpointRecord) -> EndpointRecord:
            return replace(
                record,
                status=EndpointStatus.IN_SERVICE,
                last_modified_time=time.time(),
                variants=tuple(replace(variant, status=None) for variant in record.variants),
            )

        await self._transition(endpoint_name, in_service)

    async def _resize(
        self, endpoint_name: str, before: tuple[DeployedVariant, ...], weights_changed: bool
    ) -> None:
        """Scale the variants whose DesiredInstanceCount changed, then Current = Desired."""
        record = await self._db(self._store.get_endpoint, endpoint_name)
        if record is None:
            return
        resized = [
            variant
            for variant in record.variants
            if variant.desired_instance_count != variant.current_instance_count
        ]
        done: list[DeployedVariant] = []
        reason: str | None = None
        try:
            for variant in resized:
                done.append(variant)
                await self._deployer.scale(
                    endpoint_name, variant.variant_name, variant.desired_instance_count
                )
        except DeploymentError as error:
            reason = error.message
        except Exception:
            reason = _internal_reason("changing instance counts")
        if reason is None:

            def settled(current: EndpointRecord) -> EndpointRecord:
                return replace(
                    current,
                    status=EndpointStatus.IN_SERVICE,
                    last_modified_time=time.time(),
                    variants=tuple(_settled(variant) for variant in current.variants),
                )

            await self._transition(endpoint_name, settled)
            return
        await self._roll_back(endpoint_name, before, done, weights_changed, reason)

    async def _roll_back(
        self,
        endpoint_name: str,
        before: tuple[DeployedVariant, ...],
        scaled: list[DeployedVariant],
        weights_changed: bool,
        reason: str,
    ) -> None:
        """RollingBack to the weights and counts of `before`, then InService (or Failed)."""

        def rolling_back(current: EndpointRecord) -> EndpointRecord:
            return replace(
                current, status=EndpointStatus.ROLLING_BACK, last_modified_time=time.time()
            )

        await self._transition(endpoint_name, rolling_back)
        failure = f"Failed to update the endpoint's weights and capacities: {reason}"
        try:
            if weights_changed:
                await self._deployer.set_weights(
                    endpoint_name, {v.variant_name: v.current_weight for v in before}
                )
            counts = {variant.variant_name: variant.current_instance_count for variant in before}
            for variant in scaled:
                await self._deployer.scale(
                    endpoint_name, variant.variant_name, counts[variant.variant_name]
                )
        except Exception as error:
            detail = error.message if isinstance(error, DeploymentError) else None
            if detail is None:
                detail = _internal_reason("rolling back")
            await self._set_failed(endpoint_name, f"{failure} Rolling back failed too: {detail}")
            return

        def restored(current: EndpointRecord) -> EndpointRecord:
            return replace(
                current,
                status=EndpointStatus.IN_SERVICE,
                last_modified_time=time.time(),
                failure_reason=failure[:MAX_FAILURE_REASON],
                variants=tuple(replace(variant, status=None) for variant in before),
            )

        await self._transition(endpoint_name, restored)

    async def _delete(self, endpoint_name: str) -> None:
        """Remove the endpoint from the deployer, then its record; Failed if removal fails."""
        try:
            await self._deployer.remove(endpoint_name)
        except DeploymentError as error:
            await self._set_failed(endpoint_name, f"Failed to delete the endpoint: {error.message}")
            return
        except Exception:
            reason = _internal_reason("deleting the endpoint")
            await self._set_failed(endpoint_name, f"Failed to delete the endpoint: {reason}")
            return
        async with self._lock:
            await self._db(self._store.delete_endpoint, endpoint_name)

    async def _recover(self, record: EndpointRecord) -> None:
        """Redeploy an endpoint that was serving or changing (see the module docstring)."""
        creating = record.status is EndpointStatus.CREATING
        rolling_back = record.status is EndpointStatus.ROLLING_BACK
        now = time.time()
        variants = tuple(
            _restored(variant, use_current=rolling_back) for variant in record.variants
        )
        failure_reason = record.failure_reason
        if record.pending is not None:
            failure_reason = (
                "The update to endpoint configuration "
                f'"{record.pending.endpoint_config_name}" was interrupted by a restart of the '
                f'gateway; the endpoint was restored on "{record.endpoint_config_name}".'
            )
        generation = max(
            record.generation, 0 if record.pending is None else record.pending.generation
        )
        recovered = replace(
            record,
            status=EndpointStatus.CREATING if creating else EndpointStatus.SYSTEM_UPDATING,
            generation=generation + 1,
            last_modified_time=now,
            variants=tuple(
                _launching(variant, now) if creating else replace(variant, status=None)
                for variant in variants
            ),
            failure_reason=failure_reason,
            pending=None,
        )
        async with self._lock:
            try:
                plan = await self._plan(
                    record.name,
                    record.endpoint_config_name,
                    recovered.generation,
                    variants,
                    record.data_capture,
                    failover=record.failover,
                )
            except SplitserveError as error:
                await self._db(self._store.put_endpoint, recovered)
                await self._set_failed_locked(record.name, error.message)
                return
            await self._db(self._store.put_endpoint, recovered)
            self._spawn(record.name, self._create(recovered, plan))

    # --- helpers: state ---------------------------------------------------------------------------

    async def _db(self, function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run a blocking store call on the store's own thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(function, *args, **kwargs)
        )

    def _spawn(self, endpoint_name: str, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as the endpoint's background task; it is logged, never raised, if it fails."""
        key = name_key(endpoint_name)
        task = asyncio.create_task(self._guarded(endpoint_name, work), name=f"endpoint {key}")
        self._tasks[key] = task

        def forget(finished: asyncio.Task[None]) -> None:
            if self._tasks.get(key) is finished:
                del self._tasks[key]

        task.add_done_callback(forget)

    async def _guarded(self, endpoint_name: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background work on endpoint %s failed", endpoint_name)

    async def _transition(
        self, endpoint_name: str, change: Callable[[EndpointRecord], EndpointRecord]
    ) -> None:
        """Apply `change` to the stored endpoint and write it back (under the lock)."""
        async with self._lock:
            current = await self._db(self._store.get_endpoint, endpoint_name)
            if current is not None:
                await self._db(self._store.put_endpoint, change(current))

    async def _set_failed(self, endpoint_name: str, reason: str) -> None:
        async with self._lock:
            await self._set_failed_locked(endpoint_name, reason)

    async def _set_failed_locked(self, endpoint_name: str, reason: str) -> None:
        current = await self._db(self._store.get_endpoint, endpoint_name)
        if current is None:
            return
        failed = replace(
            current,
            status=EndpointStatus.FAILED,
            failure_reason=reason[:MAX_FAILURE_REASON],
            last_modified_time=time.time(),
            pending=None,
            variants=tuple(
                replace(variant, status=None, current_instance_count=0)
                for variant in current.variants
            ),
        )
        await self._db(self._store.put_endpoint, failed)

    async def _retire_quietly(self, endpoint_name: str, generation: int) -> None:
        try:
            await self._deployer.retire(endpoint_name, generation)
        except Exception:
            log.exception("retiring generation %d of endpoint %s failed", generation, endpoint_name)

    async def _apply_weights_now(
        self, before: EndpointRecord, updated: tuple[DeployedVariant, ...]
    ) -> None:
        """Hand the new weights to the router before answering; on failure, undo and refuse."""
        try:
            await self._deployer.set_weights(
                before.name, {variant.variant_name: variant.desired_weight for variant in updated}
            )
        except Exception as error:
            await self._db(self._store.put_endpoint, before)
            if isinstance(error, SplitserveError):
                raise ValidationException(
                    f"The new weights could not be applied: {error.message}"
                ) from error
            raise ValidationException(
                "The new weights could not be applied: " + _internal_reason("changing the weights")
            ) from error

    # --- helpers: lookups and plans ---------------------------------------------------------------

    def _arn_of(self, kind: ResourceKind, name: str) -> str:
        return kind.arn(self._account, name)

    async def _model(self, name: str) -> ModelRecord:
        record = await self._db(self._store.get_model, name)
        if record is None:
            raise _not_found(ResourceKind.MODEL, self._arn_of(ResourceKind.MODEL, name))
        return record

    async def _endpoint_config(self, name: str) -> EndpointConfigRecord:
        record = await self._db(self._store.get_endpoint_config, name)
        if record is None:
            raise _not_found(
                ResourceKind.ENDPOINT_CONFIG, self._arn_of(ResourceKind.ENDPOINT_CONFIG, name)
            )
        return record

    async def _endpoint(self, name: str) -> EndpointRecord:
        record = await self._db(self._store.get_endpoint, name)
        if record is None:
            raise _not_found(ResourceKind.ENDPOINT, self._arn_of(ResourceKind.ENDPOINT, name))
        return record

    def _in_progress(self, record: EndpointRecord) -> ValidationException:
        arn = self._arn_of(ResourceKind.ENDPOINT, record.name)
        return ValidationException(f'Cannot update in-progress endpoint "{arn}".')

    def _require_updatable(self, record: EndpointRecord) -> None:
        if record.status in IN_PROGRESS_STATUSES:
            raise self._in_progress(record)
        if record.status is not EndpointStatus.IN_SERVICE:
            arn = self._arn_of(ResourceKind.ENDPOINT, record.name)
            raise ValidationException(
                f'Cannot update endpoint "{arn}" in status {record.status.value}: DeleteEndpoint '
                "is the only operation it allows."
            )

    async def _variants_for(
        self,
        endpoint_name: str,
        config: EndpointConfigRecord,
        *,
        retained: Mapping[str, DeployedVariant] | None,
        excluded: set[str] | None = None,
    ) -> tuple[DeployedVariant, ...]:
        """The variants a deployment of `config` runs: weights and counts from the configuration,
        or from `retained` live variants of the same name (except `excluded` properties)."""
        variants: list[DeployedVariant] = []
        for variant in config.production_variants():
            variant_name = _text(variant, "VariantName")
            model = await self._model(_text(variant, "ModelName"))
            instance_type = _text(variant, "InstanceType")
            if instance_type not in self._instance_types:
                raise ValidationException(
                    f'The instance type "{instance_type}" of variant "{variant_name}" in endpoint '
                    f'configuration "{config.name}" is not available on this gateway (available: '
                    f"{', '.join(sorted(self._instance_types))})."
                )
            weight = _optional_float(variant.get("InitialVariantWeight"))
            weight = 1.0 if weight is None else weight
            count = _optional_int(variant.get("InitialInstanceCount")) or 1
            live = None if retained is None else retained.get(variant_name)
            if live is not None:
                if "DesiredWeight" not in (excluded or set()):
                    weight = live.desired_weight
                if "DesiredInstanceCount" not in (excluded or set()):
                    count = live.desired_instance_count
            container = model.container()
            environment = _optional_mapping(container.get("Environment")) or {}
            check_environment(environment, where=f'of model "{model.name}"')
            routing = _optional_mapping(variant.get("RoutingConfig")) or {}
            strategy = routing.get("RoutingStrategy")
            location, _ = _model_data_location(container, "")
            variants.append(
                DeployedVariant(
                    variant_name=variant_name,
                    model_name=model.name,
                    image=_text(container, "Image"),
                    model_data_url=location,
                    environment={str(k): str(v) for k, v in environment.items()},
                    instance_type=instance_type,
                    routing_strategy=strategy if isinstance(strategy, str) else None,
                    container_startup_timeout_seconds=_optional_int(
                        variant.get("ContainerStartupHealthCheckTimeoutInSeconds")
                    ),
                    current_weight=weight,
                    desired_weight=weight,
                    current_instance_count=count,
                    desired_instance_count=count,
                )
            )
        self._limits.check(
            [(v.variant_name, v.instance_type, v.desired_instance_count) for v in variants],
            endpoint_name=endpoint_name,
        )
        return tuple(variants)

    async def _plan(
        self,
        endpoint_name: str,
        config_name: str,
        generation: int,
        variants: tuple[DeployedVariant, ...],
        data_capture: Mapping[str, object] | None,
        *,
        failover: bool,
    ) -> DeploymentPlan:
        """The Deployer's plan for these variants; locations are resolved (and checked) again."""
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
        uri = _text(document, "DestinationS3Uri")
        destination = await asyncio.to_thread(
            self._resolver.resolve, uri, field="dataCaptureConfig.destinationS3Uri"
        )
        modes = {
            _text(option, "CaptureMode") for option in _mappings(document.get("CaptureOptions"))
        }
        header = _optional_mapping(document.get("CaptureContentTypeHeader")) or {}
        kms_key_id = document.get("KmsKeyId")
        return DataCapture(
            enable_capture=document.get("EnableCapture") is not False,
            sampling_percentage=_optional_int(document.get("InitialSamplingPercentage")) or 0,
            destination_s3_uri=uri,
            destination=destination,
            kms_key_id=kms_key_id if isinstance(kms_key_id, str) else None,
            capture_input=bool(modes & {"Input", "InputAndOutput"}),
            capture_output=bool(modes & {"Output", "InputAndOutput"}),
            csv_content_types=_texts(header.get("CsvContentTypes")),
            json_content_types=_texts(header.get("JsonContentTypes")),
        )

    async def _check_model_data(
        self, variants: tuple[DeployedVariant, ...], plan: DeploymentPlan
    ) -> None:
        """SageMaker checks the model data when it deploys: a missing one fails the deployment."""
        urls = {variant.variant_name: variant for variant in variants}
        for variant_plan in plan.variants:
            path = variant_plan.model_data
            if path is None or await asyncio.to_thread(path.exists):
                continue
            variant = urls.get(variant_plan.variant_name)
            url = variant.model_data_url if variant is not None else str(path)
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

    # --- helpers: responses -----------------------------------------------------------------------

    def _describe(self, record: EndpointRecord) -> dict[str, object]:
        try:
            instances = self._deployer.instance_details(record.name)
        except Exception:
            log.exception("instance details of endpoint %s failed", record.name)
            instances = {}
        response: dict[str, object] = {
            "EndpointName": record.name,
            "EndpointArn": self._arn_of(ResourceKind.ENDPOINT, record.name),
            "EndpointConfigName": record.endpoint_config_name,
            "ProductionVariants": [
                _variant_summary(variant, instances.get(variant.variant_name))
                for variant in record.variants
            ],
            "EndpointStatus": record.status.value,
            "CreationTime": record.creation_time,
            "LastModifiedTime": record.last_modified_time,
        }
        if record.data_capture is not None:
            response["DataCaptureConfig"] = _data_capture_summary(record.data_capture)
        if record.failure_reason:
            response["FailureReason"] = record.failure_reason
        if record.deployment_config is not None:
            response["LastDeploymentConfig"] = dict(record.deployment_config)
        if record.pending is not None:
            response["PendingDeploymentSummary"] = {
                "EndpointConfigName": record.pending.endpoint_config_name,
                "ProductionVariants": [
                    {**_variant_summary(variant, None), "InstanceType": variant.instance_type}
                    for variant in record.pending.variants
                ],
                "StartTime": record.pending.start_time,
            }
        return response


# --- module helpers -------------------------------------------------------------------------------


def _endpoint_tags(value: object) -> tuple[tuple[str, str], ...]:
    """CreateEndpoint's validated Tags as (Key, Value) pairs; refuses a `splitserve:failover`
    tag whose value is neither `true` nor `false`, so a typo does not silently leave it off."""
    tags = tuple((str(tag.get("Key")), str(tag.get("Value", ""))) for tag in _mappings(value))
    for key, tag_value in tags:
        if key == FAILOVER_TAG and tag_value.lower() not in ("true", "false"):
            raise ValidationException(
                f"The tag {FAILOVER_TAG} must have the value true or false, not "
                f"'{tag_value[:100]}'."
            )
    return tags


def _not_found(kind: ResourceKind, arn: str) -> ValidationException:
    return ValidationException(f'Could not find {kind.description} "{arn}".')


def _internal_reason(doing: str) -> str:
    """A FailureReason for an unexpected exception (logged here with the same incident id)."""
    incident = uuid.uuid4()
    log.exception("internal error while %s (incident %s)", doing, incident)
    return f"An internal error occurred while {doing} (incident {incident}); see the gateway log."


def _single_container(request: Mapping[str, object]) -> tuple[Mapping[str, object], str]:
    """The model's one container and its Coral path; splitserve runs one container per model."""
    primary = _optional_mapping(request.get("PrimaryContainer"))
    containers = request.get("Containers")
    if primary is not None and containers is not None:
        raise ValidationException("Give PrimaryContainer or Containers, not both.")
    if primary is not None:
        return primary, "primaryContainer"
    listed = _mappings(containers)
    if not listed:
        raise ValidationException(
            "A model needs a container: give PrimaryContainer (or one entry in Containers)."
        )
    if len(listed) > 1:
        raise ValidationException(
            f"splitserve runs one container per model; Containers has {len(listed)} entries."
        )
    return listed[0], "containers.1.member"


def _check_container(container: Mapping[str, object], where: str) -> None:
    if container.get("Mode") == "MultiModel":
        raise ValidationException(
            f"splitserve does not implement Mode MultiModel (at '{member_path(where, 'Mode')}'): "
            "multi-model endpoints are not implemented."
        )
    if container.get("ModelDataUrl") is not None and container.get("ModelDataSource") is not None:
        raise ValidationException(f"Give ModelDataUrl or ModelDataSource (at '{where}'), not both.")
    check_environment(
        _optional_mapping(container.get("Environment")),
        where=f"at '{member_path(where, 'Environment')}'",
    )


def _model_data_location(container: Mapping[str, object], where: str) -> tuple[str | None, str]:
    """The container's model data location (ModelDataUrl or ModelDataSource's S3Uri), and path."""
    url = container.get("ModelDataUrl")
    if isinstance(url, str):
        return url, member_path(where, "ModelDataUrl")
    source = _optional_mapping(container.get("ModelDataSource")) or {}
    s3 = _optional_mapping(source.get("S3DataSource")) or {}
    uri = s3.get("S3Uri")
    if isinstance(uri, str):
        path = member_path(
            member_path(member_path(where, "ModelDataSource"), "S3DataSource"), "S3Uri"
        )
        return uri, path
    return None, where


def _launching(
    variant: DeployedVariant, now: float, *, weight: float | None = None
) -> DeployedVariant:
    """A variant whose instances are being started: none running yet."""
    count = variant.desired_instance_count
    return replace(
        variant,
        current_instance_count=0,
        current_weight=variant.desired_weight if weight is None else weight,
        deployed_time=None,
        status=VariantStatusEntry("Creating", f"Launching {count} instance(s).", now),
    )


def _settled(variant: DeployedVariant, *, deployed_time: float | None = None) -> DeployedVariant:
    """A variant whose change is done: Current = Desired, no VariantStatus."""
    return replace(
        variant,
        current_weight=variant.desired_weight,
        current_instance_count=variant.desired_instance_count,
        deployed_time=deployed_time if deployed_time is not None else variant.deployed_time,
        status=None,
    )


def _restored(variant: DeployedVariant, *, use_current: bool) -> DeployedVariant:
    """The values a restart brings a variant back with (Desired, or Current when rolling back)."""
    weight = variant.current_weight if use_current else variant.desired_weight
    count = variant.current_instance_count if use_current else variant.desired_instance_count
    return replace(
        variant,
        current_weight=weight,
        desired_weight=weight,
        current_instance_count=count,
        desired_instance_count=count,
    )


def _desired(
    variant: DeployedVariant, change: Mapping[str, object] | None, now: float
) -> DeployedVariant:
    """The variant with the Desired values of one DesiredWeightAndCapacity applied."""
    if change is None:
        return variant
    weight = _optional_float(change.get("DesiredWeight"))
    count = _optional_int(change.get("DesiredInstanceCount"))
    desired_weight = variant.desired_weight if weight is None else weight
    desired_count = variant.desired_instance_count if count is None else count
    if desired_count > variant.current_instance_count:
        message = f"Scaling out desired instance count to {desired_count}."
    elif desired_count < variant.current_instance_count:
        message = f"Scaling in desired instance count to {desired_count}."
    else:
        message = f"Updating variant weight to {desired_weight}."
    return replace(
        variant,
        desired_weight=desired_weight,
        desired_instance_count=desired_count,
        status=VariantStatusEntry("Updating", message, now),
    )


def _variant_summary(
    variant: DeployedVariant, instances: list[dict[str, object]] | None
) -> dict[str, object]:
    """A ProductionVariantSummary plus splitserve's `Instances` (botocore ignores extras)."""
    summary: dict[str, object] = {"VariantName": variant.variant_name}
    if variant.deployed_time is not None:
        # No registry to resolve a digest from: the resolved image is the image as specified.
        summary["DeployedImages"] = [
            {
                "SpecifiedImage": variant.image,
                "ResolvedImage": variant.image,
                "ResolutionTime": variant.deployed_time,
            }
        ]
    summary["CurrentWeight"] = variant.current_weight
    summary["DesiredWeight"] = variant.desired_weight
    summary["CurrentInstanceCount"] = variant.current_instance_count
    summary["DesiredInstanceCount"] = variant.desired_instance_count
    if variant.status is not None:
        summary["VariantStatus"] = [
            {
                "Status": variant.status.status,
                "StatusMessage": variant.status.message,
                "StartTime": variant.status.start_time,
            }
        ]
    if variant.routing_strategy is not None:
        summary["RoutingConfig"] = {"RoutingStrategy": variant.routing_strategy}
    if instances is not None:
        summary["Instances"] = instances
    return summary


def _data_capture_summary(document: Mapping[str, object]) -> dict[str, object]:
    """DescribeEndpoint's DataCaptureConfigSummary. KmsKeyId appears only when configured, as in
    AWS's own responses (the model marks it required, but AWS omits it when there is none)."""
    enabled = document.get("EnableCapture") is not False
    summary: dict[str, object] = {
        "EnableCapture": enabled,
        "CaptureStatus": "Started" if enabled else "Stopped",
        "CurrentSamplingPercentage": document.get("InitialSamplingPercentage"),
        "DestinationS3Uri": document.get("DestinationS3Uri"),
    }
    if isinstance(document.get("KmsKeyId"), str):
        summary["KmsKeyId"] = document["KmsKeyId"]
    return summary


# --- lists ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Listed:
    """One resource as a List operation filters, sorts and returns it."""

    name: str
    creation_time: float
    last_modified_time: float
    status: str
    summary: dict[str, object]


def _sort_value(row: _Listed, sort_by: str) -> str | float:
    if sort_by == "Name":
        return name_key(row.name)  # names are case-insensitive, so is their order
    if sort_by == "Status":
        return row.status
    return row.creation_time


def _paginate(rows: list[_Listed], request: Mapping[str, object], key: str) -> dict[str, object]:
    """Filter, sort and cut one page of `rows`, as every List operation does.

    NextToken is opaque to clients: base64 of the sort settings and the last row's sort position
    (sort value, then the name's key), so a page starts right after the previous one even when
    resources were created or deleted in between. A token that does not decode to that, or that
    was made for another SortBy/SortOrder, is refused with "Invalid pagination token".
    """
    contains = request.get("NameContains")
    if isinstance(contains, str):
        rows = [row for row in rows if contains.lower() in row.name.lower()]
    for member, attribute, before in (
        ("CreationTimeBefore", "creation_time", True),
        ("CreationTimeAfter", "creation_time", False),
        ("LastModifiedTimeBefore", "last_modified_time", True),
        ("LastModifiedTimeAfter", "last_modified_time", False),
    ):
        bound = request.get(member)
        if isinstance(bound, float | int):
            rows = [
                row
                for row in rows
                if (getattr(row, attribute) < bound if before else getattr(row, attribute) > bound)
            ]
    status = request.get("StatusEquals")
    if isinstance(status, str):
        rows = [row for row in rows if row.status == status]
    sort_by = str(request.get("SortBy", "CreationTime"))
    order = str(request.get("SortOrder", "Descending"))
    descending = order == "Descending"

    def position(row: _Listed) -> tuple[str | float, str]:
        return (_sort_value(row, sort_by), name_key(row.name))

    rows = sorted(rows, key=position, reverse=descending)
    token = request.get("NextToken")
    if isinstance(token, str) and token:
        after = _decode_token(token, sort_by, order)
        rows = [row for row in rows if _is_after(position(row), after, descending)]
    limit = request.get("MaxResults")
    limit = limit if isinstance(limit, int) else DEFAULT_MAX_RESULTS
    page = rows[:limit]
    response: dict[str, object] = {key: [row.summary for row in page]}
    if len(rows) > limit:
        response["NextToken"] = _encode_token(sort_by, order, position(page[-1]))
    return response


def _is_after(
    candidate: tuple[str | float, str], after: tuple[str | float, str], descending: bool
) -> bool:
    # Both tuples hold the same types: the token was checked against SortBy.
    if descending:
        return candidate < after
    return candidate > after


def _encode_token(sort_by: str, order: str, after: tuple[str | float, str]) -> str:
    payload = json.dumps({"SortBy": sort_by, "SortOrder": order, "After": list(after)})
    return base64.urlsafe_b64encode(payload.encode()).decode()


def _decode_token(token: str, sort_by: str, order: str) -> tuple[str | float, str]:
    invalid = ValidationException("Invalid pagination token")
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error, RecursionError):
        raise invalid from None
    if not isinstance(payload, dict):
        raise invalid
    if payload.get("SortBy") != sort_by or payload.get("SortOrder") != order:
        raise invalid
    after = payload.get("After")
    if not isinstance(after, list) or len(after) != 2 or not isinstance(after[1], str):
        raise invalid
    value = after[0]
    if sort_by == "CreationTime":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise invalid
        return (float(value), after[1])
    if not isinstance(value, str):
        raise invalid
    return (value, after[1])


# --- reading validated documents ------------------------------------------------------------------


def _text(document: Mapping[str, object], key: str) -> str:
    value = document.get(key)
    if not isinstance(value, str):
        raise ValidationException(f"{key} is missing.")
    return value


def _texts(value: object) -> tuple[str, ...]:
    return tuple(item for item in value if isinstance(item, str)) if isinstance(value, list) else ()


def _optional_mapping(value: object) -> dict[str, object] | None:
    return value if isinstance(value, dict) else None


def _mappings(value: object) -> list[dict[str, object]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _optional_float(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None
