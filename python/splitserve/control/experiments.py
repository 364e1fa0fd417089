"""The inference experiment operations (shadow tests): CreateInferenceExperiment,
DescribeInferenceExperiment, ListInferenceExperiments, UpdateInferenceExperiment,
StartInferenceExperiment, StopInferenceExperiment and DeleteInferenceExperiment.

Each validates its request (SageMaker's shapes in `shapes.py`, the checks that need no state in
`experiment_checks.py`, then what needs the endpoint and the models), checks the experiment's
status and writes its desired state in one step under the experiments' lock;
`experiment_runner.ExperimentRunner` does the rest on the endpoint. What splitserve chose where
SageMaker's documentation is silent is in docs/sagemaker-api.md, "Shadow tests" (messages,
defaults of the variant actions, what an update may change while Running).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

from splitserve.config import AccountSettings
from splitserve.control.documents import mappings, optional_mapping, tag_pairs, text
from splitserve.control.experiment_checks import (
    check_desired,
    check_running_variants,
    check_same_names,
    member_mapping,
    merged_variants,
    optional_text,
    schedule_span,
    stop_actions,
)
from splitserve.control.experiment_runner import ExperimentRunner
from splitserve.control.experiment_store import (
    FINISHED_STATUSES,
    ExperimentRecord,
    ExperimentStatus,
    StopRequest,
)
from splitserve.control.listing import Listed, paginate
from splitserve.control.models import EndpointRecord, EndpointStatus, ResourceKind
from splitserve.control.paths import LocalPathResolver
from splitserve.control.state import ControlState
from splitserve.control.validation import (
    Violation,
    item_path,
    member_path,
    raise_violations,
    validate_request,
)
from splitserve.errors import (
    ConflictException,
    InferenceExperimentNotFound,
    ResourceInUse,
    ValidationException,
)


class ExperimentOperations:
    """Serves the inference experiment operations.

    Args:
        state: the control plane's store and lookups (endpoints, models).
        runner: the experiments' controller (its store and lock; woken after every write).
        resolver: checks DataStorageConfig.Destination as capture destinations are checked.
        instance_types: the instance types a variant may name.
        account: names the ARNs.
    """

    def __init__(
        self,
        state: ControlState,
        runner: ExperimentRunner,
        resolver: LocalPathResolver,
        instance_types: frozenset[str],
        account: AccountSettings,
    ) -> None:
        self._state = state
        self._runner = runner
        self._store = runner.store
        self._resolver = resolver
        self._instance_types = instance_types
        self._account = account

    def arn(self, name: str) -> str:
        """`arn:aws:sagemaker:<region>:<account>:inference-experiment/<name>`, lower-cased."""
        return (
            f"arn:aws:sagemaker:{self._account.region}:{self._account.account_id}:"
            f"inference-experiment/{name.lower()}"
        )

    async def create_inference_experiment(self, body: Mapping[str, object]) -> dict[str, object]:
        """CreateInferenceExperiment -> {InferenceExperimentArn}; the experiment is Created and
        starts at its Schedule's StartTime (at once without a Schedule).

        Raises:
            ValidationException: a bad value, a variant that does not fit the endpoint, an
                unknown model or endpoint, a bad schedule.
            ResourceInUse: the name exists, or the endpoint has an experiment that is not over.
        """
        request = validate_request("CreateInferenceExperiment", body)
        name = text(request, "Name")
        now = time.time()
        start, end = schedule_span(optional_mapping(request.get("Schedule")), None, now)
        record = ExperimentRecord(
            name=name,
            endpoint_name=text(request, "EndpointName"),
            role_arn=text(request, "RoleArn"),
            status=ExperimentStatus.CREATED,
            creation_time=now,
            last_modified_time=now,
            schedule_start=start,
            schedule_end=end,
            model_variants=tuple(mappings(request.get("ModelVariants"))),
            shadow_mode_config=dict(member_mapping(request, "ShadowModeConfig")),
            description=optional_text(request, "Description"),
            data_storage_config=optional_mapping(request.get("DataStorageConfig")),
            kms_key=optional_text(request, "KmsKey"),
            tags=tag_pairs(request.get("Tags")),
        )
        self._check_variants(record)
        await self._check_destination(record)
        async with self._runner.lock:
            endpoint = await self._state.endpoint(record.endpoint_name)
            record = replace(record, endpoint_name=endpoint.name)
            await self._check_endpoint(record, endpoint)
            if await self._state.run(self._store.get, name) is not None:
                raise ResourceInUse(
                    f'Cannot create already existing inference experiment "{self.arn(name)}".'
                )
            for other in await self._state.run(self._store.list):
                if (
                    other.endpoint_name.lower() == endpoint.name.lower()
                    and other.status not in FINISHED_STATUSES
                ):
                    raise ResourceInUse(
                        f'Endpoint "{self._state.arn(ResourceKind.ENDPOINT, endpoint.name)}" '
                        f'already has an inference experiment that is not over: "{other.name}".'
                    )
            if not await self._state.run(self._store.insert, record):
                raise ResourceInUse(
                    f'Cannot create already existing inference experiment "{self.arn(name)}".'
                )
        self._runner.wake()
        return {"InferenceExperimentArn": self.arn(name)}

    async def describe_inference_experiment(self, body: Mapping[str, object]) -> dict[str, object]:
        """DescribeInferenceExperiment -> the experiment, its endpoint and its variants' status.

        Raises:
            InferenceExperimentNotFound: there is no such experiment.
        """
        request = validate_request("DescribeInferenceExperiment", body)
        record = await self._experiment(text(request, "Name"))
        endpoint = await self._state.run(self._state.store.get_endpoint, record.endpoint_name)
        return self._describe(record, endpoint)

    async def list_inference_experiments(self, body: Mapping[str, object]) -> dict[str, object]:
        """ListInferenceExperiments -> {InferenceExperiments: [summary], NextToken?}."""
        request = validate_request("ListInferenceExperiments", body)
        records = await self._state.run(self._store.list)
        wanted_type = request.get("Type")
        rows = [
            Listed(
                record.name,
                record.creation_time,
                record.last_modified_time,
                record.status.value,
                self._summary(record),
            )
            for record in records
            if wanted_type is None or record.experiment_type == wanted_type
        ]
        return paginate(rows, request, "InferenceExperiments")

    async def start_inference_experiment(self, body: Mapping[str, object]) -> dict[str, object]:
        """StartInferenceExperiment -> {InferenceExperimentArn}: a Created experiment starts now
        (Starting, then Running once its endpoint serves the shadow).

        Raises:
            InferenceExperimentNotFound: there is no such experiment.
            ConflictException: it is not Created.
        """
        request = validate_request("StartInferenceExperiment", body)
        async with self._runner.lock:
            record = await self._experiment(text(request, "Name"))
            self._require(record, "start", ExperimentStatus.CREATED)
            now = time.time()
            started = replace(
                record,
                status=ExperimentStatus.STARTING,
                schedule_start=min(record.schedule_start, now),
                last_modified_time=now,
            )
            await self._state.run(self._store.put, started)
        self._runner.wake()
        return {"InferenceExperimentArn": self.arn(record.name)}

    async def update_inference_experiment(self, body: Mapping[str, object]) -> dict[str, object]:
        """UpdateInferenceExperiment -> {InferenceExperimentArn}.

        A Created experiment may change anything it was created with. A Running one may change
        its Description, its Schedule's EndTime, the shadow's SamplingPercentage and the
        variants' InstanceCount (it is Updating until the endpoint has them); its StartTime,
        variants, models, instance types and DataStorageConfig are fixed once it runs.

        Raises:
            InferenceExperimentNotFound: there is no such experiment.
            ConflictException: it is neither Created nor Running.
            ValidationException: a change it cannot take, or a bad value.
        """
        request = validate_request("UpdateInferenceExperiment", body)
        async with self._runner.lock:
            record = await self._experiment(text(request, "Name"))
            self._require(record, "update", ExperimentStatus.CREATED, ExperimentStatus.RUNNING)
            now = time.time()
            running = record.status is ExperimentStatus.RUNNING
            updated = replace(record, last_modified_time=now)
            if "Description" in request:
                updated = replace(updated, description=optional_text(request, "Description"))
            schedule = optional_mapping(request.get("Schedule"))
            if schedule is not None:
                if (
                    running
                    and "StartTime" in schedule
                    and schedule["StartTime"] != record.schedule_start
                ):
                    raise ValidationException(
                        "The StartTime of a running inference experiment cannot change; give "
                        "EndTime only."
                    )
                start, end = schedule_span(schedule, record, now, running=running)
                updated = replace(updated, schedule_start=start, schedule_end=end)
            if "ShadowModeConfig" in request:
                config = dict(member_mapping(request, "ShadowModeConfig"))
                if running:
                    check_same_names(record, config)
                updated = replace(updated, shadow_mode_config=config)
            if "ModelVariants" in request:
                variants = tuple(mappings(request.get("ModelVariants")))
                if running:
                    check_running_variants(record, variants)
                names = {str(variant.get("VariantName")) for variant in variants}
                if names == {updated.source_variant, updated.shadow_variant}:
                    # Both variants given (a Created experiment's variants may be renamed).
                    updated = replace(updated, model_variants=variants)
                else:
                    merged = merged_variants(record.model_variants, variants)
                    updated = replace(updated, model_variants=merged)
            if "DataStorageConfig" in request:
                if running:
                    raise ValidationException(
                        "The DataStorageConfig of a running inference experiment cannot change; "
                        "stop it and create another."
                    )
                updated = replace(
                    updated, data_storage_config=optional_mapping(request.get("DataStorageConfig"))
                )
            self._check_variants(updated)
            await self._check_destination(updated)
            if not running:
                endpoint = await self._state.endpoint(updated.endpoint_name)
                await self._check_endpoint(updated, endpoint)
            elif (
                updated.sampling_percentage != record.sampling_percentage
                or updated.model_variants != record.model_variants
            ):
                updated = replace(updated, status=ExperimentStatus.UPDATING)
            await self._state.run(self._store.put, updated)
        self._runner.wake()
        return {"InferenceExperimentArn": self.arn(record.name)}

    async def stop_inference_experiment(self, body: Mapping[str, object]) -> dict[str, object]:
        """StopInferenceExperiment -> {InferenceExperimentArn}.

        ModelVariantActions: the shadow Promote (the production variant runs the shadow's model
        from then on), Remove or Retain (it keeps copying); the production variant Retain, or
        Remove when the shadow is promoted in its place. A variant left out: the production
        variant is retained, the shadow removed. A Running experiment is Stopping until the
        endpoint has that, then DesiredState (Completed by default); a Created one ends at once.

        Raises:
            InferenceExperimentNotFound: there is no such experiment.
            ConflictException: it is not Created or Running.
            ValidationException: actions or variants that do not fit the experiment.
        """
        request = validate_request("StopInferenceExperiment", body)
        async with self._runner.lock:
            record = await self._experiment(text(request, "Name"))
            self._require(record, "stop", ExperimentStatus.CREATED, ExperimentStatus.RUNNING)
            actions = stop_actions(record, member_mapping(request, "ModelVariantActions"))
            desired = tuple(mappings(request.get("DesiredModelVariants")))
            check_desired(record, desired)
            self._check_instance_types(desired, "desiredModelVariants")
            final = ExperimentStatus(str(request.get("DesiredState", "Completed")))
            reason = optional_text(request, "Reason")
            now = time.time()
            if record.status is ExperimentStatus.CREATED:
                stopped = replace(
                    record,
                    status=final,
                    status_reason=reason,
                    completion_time=now,
                    last_modified_time=now,
                )
            else:
                stopped = replace(
                    record,
                    status=ExperimentStatus.STOPPING,
                    stop=StopRequest(actions, desired, final, reason),
                    last_modified_time=now,
                )
            await self._state.run(self._store.put, stopped)
        self._runner.wake()
        return {"InferenceExperimentArn": self.arn(record.name)}

    async def delete_inference_experiment(self, body: Mapping[str, object]) -> dict[str, object]:
        """DeleteInferenceExperiment -> {InferenceExperimentArn}: forget a Created, Completed or
        Cancelled experiment (its endpoint, variants and configurations stay).

        Raises:
            InferenceExperimentNotFound: there is no such experiment.
            ConflictException: it is starting, running, updating or stopping.
        """
        request = validate_request("DeleteInferenceExperiment", body)
        async with self._runner.lock:
            record = await self._experiment(text(request, "Name"))
            self._require(
                record,
                "delete",
                ExperimentStatus.CREATED,
                ExperimentStatus.COMPLETED,
                ExperimentStatus.CANCELLED,
            )
            await self._state.run(self._store.delete, record.name)
        return {"InferenceExperimentArn": self.arn(record.name)}

    # --- checks -----------------------------------------------------------------------------------

    async def _experiment(self, name: str) -> ExperimentRecord:
        record = await self._state.run(self._store.get, name)
        if record is None:
            raise InferenceExperimentNotFound(
                f'Could not find inference experiment "{self.arn(name)}".'
            )
        return record

    def _require(self, record: ExperimentRecord, verb: str, *statuses: ExperimentStatus) -> None:
        if record.status not in statuses:
            allowed = " or ".join(status.value for status in statuses)
            raise ConflictException(
                f'Cannot {verb} inference experiment "{self.arn(record.name)}" in status '
                f"{record.status.value}: it must be {allowed}."
            )

    def _check_variants(self, record: ExperimentRecord) -> None:
        """ModelVariants name exactly the source and the shadow variant, once each."""
        names = [str(variant.get("VariantName")) for variant in record.model_variants]
        seen: set[str] = set()
        for variant_name in names:
            if variant_name in seen:
                raise ValidationException(
                    f'The variant name "{variant_name}" was non-unique within the request.'
                )
            seen.add(variant_name)
        source, shadow = record.source_variant, record.shadow_variant
        if source == shadow:
            raise ValidationException(
                f'ShadowModeConfig names "{source}" as both the source and the shadow variant.'
            )
        missing = [name for name in (source, shadow) if name not in seen]
        if missing:
            raise ValidationException(
                f'ModelVariants has no variant "{missing[0]}", which ShadowModeConfig names; give '
                "one entry for the source variant and one for the shadow variant."
            )
        extra = sorted(seen - {source, shadow})
        if extra:
            raise ValidationException(
                f'ModelVariants has variant "{extra[0]}", which ShadowModeConfig does not name.'
            )
        self._check_instance_types(record.model_variants, "modelVariants")

    def _check_instance_types(self, variants: Sequence[Mapping[str, object]], path: str) -> None:
        allowed = ", ".join(sorted(self._instance_types))
        violations: list[Violation] = []
        for index, variant in enumerate(variants):
            infrastructure = member_mapping(variant, "InfrastructureConfig")
            real_time = member_mapping(infrastructure, "RealTimeInferenceConfig")
            instance_type = real_time.get("InstanceType")
            if instance_type not in self._instance_types:
                where = member_path(
                    member_path(
                        member_path(item_path(path, index), "InfrastructureConfig"),
                        "RealTimeInferenceConfig",
                    ),
                    "InstanceType",
                )
                violations.append(
                    Violation(
                        where, instance_type, f"Member must satisfy enum value set: [{allowed}]"
                    )
                )
        raise_violations(violations)

    async def _check_destination(self, record: ExperimentRecord) -> None:
        storage = record.data_storage_config
        if storage is not None:
            await asyncio.to_thread(
                self._resolver.resolve,
                text(storage, "Destination"),
                field="dataStorageConfig.destination",
            )

    async def _check_endpoint(self, record: ExperimentRecord, endpoint: EndpointRecord) -> None:
        """The source is one of the endpoint's production variants, the shadow none of them, the
        endpoint has no other shadow, and the models exist."""
        arn = self._state.arn(ResourceKind.ENDPOINT, endpoint.name)
        production = {v.variant_name for v in endpoint.variants if not v.shadow}
        shadows = {v.variant_name for v in endpoint.variants if v.shadow}
        if record.source_variant not in production:
            raise ValidationException(
                f'The source variant "{record.source_variant}" is not a production variant of '
                f'endpoint "{arn}".'
            )
        if record.shadow_variant in production:
            raise ValidationException(
                f'The shadow variant "{record.shadow_variant}" is a production variant of endpoint '
                f'"{arn}"; give the shadow a name of its own.'
            )
        others = sorted(shadows - {record.shadow_variant})
        if others:
            raise ValidationException(
                f'Endpoint "{arn}" already has shadow variant "{others[0]}"; an inference '
                "experiment runs on an endpoint without other shadows."
            )
        for variant in record.model_variants:
            await self._state.model(text(variant, "ModelName"))

    # --- responses --------------------------------------------------------------------------------

    def _summary(self, record: ExperimentRecord) -> dict[str, object]:
        summary: dict[str, object] = {
            "Name": record.name,
            "Type": record.experiment_type,
            "Schedule": {"StartTime": record.schedule_start, "EndTime": record.schedule_end},
            "Status": record.status.value,
            "CreationTime": record.creation_time,
            "LastModifiedTime": record.last_modified_time,
            "RoleArn": record.role_arn,
        }
        if record.status_reason is not None:
            summary["StatusReason"] = record.status_reason
        if record.description is not None:
            summary["Description"] = record.description
        if record.completion_time is not None:
            summary["CompletionTime"] = record.completion_time
        return summary

    def _describe(
        self, record: ExperimentRecord, endpoint: EndpointRecord | None
    ) -> dict[str, object]:
        metadata: dict[str, object] = {"EndpointName": record.endpoint_name}
        if endpoint is not None:
            metadata["EndpointConfigName"] = endpoint.endpoint_config_name
            metadata["EndpointStatus"] = endpoint.status.value
            if endpoint.failure_reason is not None:
                metadata["FailureReason"] = endpoint.failure_reason
        described: dict[str, object] = {
            "Arn": self.arn(record.name),
            **self._summary(record),
            "EndpointMetadata": metadata,
            "ModelVariants": [
                {
                    "ModelName": variant["ModelName"],
                    "VariantName": variant["VariantName"],
                    "InfrastructureConfig": variant["InfrastructureConfig"],
                    "Status": _variant_status(record, endpoint, str(variant["VariantName"])),
                }
                for variant in record.model_variants
            ],
            "ShadowModeConfig": record.shadow_mode_config,
        }
        if record.data_storage_config is not None:
            described["DataStorageConfig"] = record.data_storage_config
        if record.kms_key is not None:
            described["KmsKey"] = record.kms_key
        return described


def _variant_status(
    record: ExperimentRecord, endpoint: EndpointRecord | None, variant_name: str
) -> str:
    """ModelVariantStatus: InService when the endpoint runs the variant as the experiment has it
    (Updating while the endpoint changes), Creating before it does, Deleted once it is gone."""
    live = None
    if endpoint is not None:
        live = next((v for v in endpoint.variants if v.variant_name == variant_name), None)
    finished = record.status in FINISHED_STATUSES or record.status is ExperimentStatus.STOPPING
    if live is None:
        return "Deleted" if finished else "Creating"
    if variant_name == record.shadow_variant and not live.shadow:
        return "Deleted" if finished else "Creating"
    if record.status is ExperimentStatus.STARTING:
        return "Creating" if variant_name == record.shadow_variant else "Updating"
    if endpoint is not None and endpoint.status is EndpointStatus.UPDATING:
        return "Updating"
    return "InService"
