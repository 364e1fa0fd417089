"""The inference experiments' controller: it moves each experiment through its statuses and
gives its endpoint what the status asks (docs/sagemaker-api.md, "Shadow tests").

The operations (`experiments.py`) only write desired state: a new experiment is Created, Start
makes it Starting, Update writes the new sampling and makes a Running one Updating, Stop writes a
`StopRequest` and makes it Stopping. This runner converges the endpoint to it, through the
control plane's own public operations, never around them:

- Starting: an endpoint configuration (`<experiment>-start-<8 hex>`) with the endpoint's
  production variants (the source variant on the experiment's model and instances) and the
  experiment's shadow variant, then UpdateEndpoint to it (the blue/green path); Running once the
  endpoint is InService on it.
- Running or Updating: the shadow's weight is set to SamplingPercentage of the production weights
  (and instance counts to the experiment's) with UpdateEndpointWeightsAndCapacities, which the
  shadow copier applies live; a Schedule EndTime that passed stops it (shadow removed, Completed).
- Stopping: a configuration of what the variant actions ask (Promote: the production variant
  runs the shadow's model; Remove: the shadow goes; Retain: it stays), UpdateEndpoint to it, then
  the requested Completed or Cancelled.

Each step is idempotent and its progress is in the record (`deploy_config` is named and stored
before the configuration is created, `deploy_issued` once UpdateEndpoint accepted it), so a
restart or a new controller resumes where the record says. One experiment's failure (its endpoint
was deleted, its update failed) cancels it with the reason in StatusReason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Literal

from splitserve.control.experiment_store import (
    FINISHED_STATUSES,
    ExperimentRecord,
    ExperimentStatus,
    ExperimentStore,
    StopRequest,
)
from splitserve.control.models import (
    IN_PROGRESS_STATUSES,
    DeployedVariant,
    EndpointRecord,
    EndpointStatus,
)
from splitserve.control.state import ControlState
from splitserve.errors import ResourceLimitExceeded, ValidationException

log = logging.getLogger(__name__)

#: A control-plane operation the runner calls: a request body in, the response out.
Operation = Callable[[Mapping[str, object]], Awaitable[dict[str, object]]]

#: What one convergence step found: keep waiting, the endpoint has it, or it cannot (why).
_Outcome = tuple[Literal["wait", "done", "failed"], str]

#: Weights closer than this are the same weight (they went through JSON and floats).
_WEIGHT_TOLERANCE = 1e-9


def shadow_weight(production_weights: list[float], sampling_percentage: int) -> float:
    """The shadow weight that copies `sampling_percentage` % of requests: that share of the sum
    of the production weights (the shadow copier's share is its weight over that sum)."""
    total = sum(production_weights)
    return sampling_percentage / 100 * (total if total > 0 else 1.0)


def variant_entry(variant: DeployedVariant) -> dict[str, object]:
    """A ProductionVariant (CreateEndpointConfig) that deploys `variant` as it is desired now."""
    entry: dict[str, object] = {
        "VariantName": variant.variant_name,
        "ModelName": variant.model_name,
        "InstanceType": variant.instance_type,
        "InitialInstanceCount": variant.desired_instance_count,
        "InitialVariantWeight": variant.desired_weight,
    }
    if variant.routing_strategy is not None:
        entry["RoutingConfig"] = {"RoutingStrategy": variant.routing_strategy}
    if variant.container_startup_timeout_seconds is not None:
        entry["ContainerStartupHealthCheckTimeoutInSeconds"] = (
            variant.container_startup_timeout_seconds
        )
    return entry


def with_infrastructure(
    entry: dict[str, object], model_variant: Mapping[str, object] | None
) -> dict[str, object]:
    """`entry` on the instances a ModelVariantConfig names (unchanged for None)."""
    if model_variant is None:
        return entry
    infrastructure = model_variant["InfrastructureConfig"]
    assert isinstance(infrastructure, dict)
    real_time = infrastructure["RealTimeInferenceConfig"]
    assert isinstance(real_time, dict)
    return {
        **entry,
        "InstanceType": real_time["InstanceType"],
        "InitialInstanceCount": real_time["InstanceCount"],
    }


def capture_config(
    record: ExperimentRecord, endpoint: EndpointRecord
) -> Mapping[str, object] | None:
    """The DataCaptureConfig an experiment's configuration carries: its DataStorageConfig as
    capture of every request's input and output (Destination, KmsKey, ContentType), else the
    endpoint's own."""
    storage = record.data_storage_config
    if storage is None:
        return endpoint.data_capture
    capture: dict[str, object] = {
        "EnableCapture": True,
        "InitialSamplingPercentage": 100,
        "DestinationS3Uri": storage["Destination"],
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
    }
    if storage.get("KmsKey") is not None:
        capture["KmsKeyId"] = storage["KmsKey"]
    if storage.get("ContentType") is not None:
        capture["CaptureContentTypeHeader"] = storage["ContentType"]
    return capture


def start_configuration(record: ExperimentRecord, endpoint: EndpointRecord) -> dict[str, object]:
    """The CreateEndpointConfig body (without its name) that starts `record` on `endpoint`."""
    production: list[dict[str, object]] = []
    for variant in endpoint.variants:
        if variant.shadow:
            continue
        entry = variant_entry(variant)
        if variant.variant_name == record.source_variant:
            source = record.model_variant(record.source_variant)
            entry = with_infrastructure({**entry, "ModelName": source["ModelName"]}, source)
        production.append(entry)
    shadow_model = record.model_variant(record.shadow_variant)
    weight = shadow_weight(
        [float(entry["InitialVariantWeight"]) for entry in production],  # type: ignore[arg-type]
        record.sampling_percentage,
    )
    shadow = with_infrastructure(
        {
            "VariantName": record.shadow_variant,
            "ModelName": shadow_model["ModelName"],
            "InitialVariantWeight": weight,
        },
        shadow_model,
    )
    return _configuration(production, [shadow], capture_config(record, endpoint))


def stop_configuration(
    record: ExperimentRecord, endpoint: EndpointRecord, stop: StopRequest
) -> dict[str, object] | None:
    """The CreateEndpointConfig body (without its name) that does what `stop` asks of
    `endpoint`, or None when it asks for no change (the shadow retained, no new instances)."""
    desired = {str(entry["VariantName"]): entry for entry in stop.desired_variants}
    shadow_action = stop.actions.get(record.shadow_variant, "Remove")
    if shadow_action == "Retain" and not desired:
        return None
    live_shadow = next(
        (v for v in endpoint.variants if v.shadow and v.variant_name == record.shadow_variant),
        None,
    )
    production: list[dict[str, object]] = []
    for variant in endpoint.variants:
        if variant.shadow:
            continue
        entry = variant_entry(variant)
        if variant.variant_name == record.source_variant:
            if shadow_action == "Promote":
                # The production variant keeps its name (callers' TargetVariant, metrics) and
                # runs the shadow's model on the shadow's instances, unless DesiredModelVariants
                # names others for either of the two.
                shadow_model = record.model_variant(record.shadow_variant)
                promoted = {**entry, "ModelName": shadow_model["ModelName"]}
                if live_shadow is not None:
                    promoted["InstanceType"] = live_shadow.instance_type
                    promoted["InitialInstanceCount"] = live_shadow.desired_instance_count
                entry = with_infrastructure(
                    promoted,
                    desired.get(record.shadow_variant) or desired.get(record.source_variant),
                )
            else:
                entry = with_infrastructure(entry, desired.get(record.source_variant))
        production.append(entry)
    shadows: list[dict[str, object]] = []
    for variant in endpoint.variants:
        if not variant.shadow:
            continue
        if variant.variant_name == record.shadow_variant:
            if shadow_action != "Retain":
                continue
            shadows.append(
                with_infrastructure(variant_entry(variant), desired.get(variant.variant_name))
            )
        else:
            shadows.append(variant_entry(variant))
    capture = endpoint.data_capture
    if record.data_storage_config is not None:
        # The start made the endpoint capture into the experiment's destination: the endpoint
        # goes back to its own capture.
        capture = record.capture_before
    return _configuration(production, shadows, capture)


def _configuration(
    production: list[dict[str, object]],
    shadows: list[dict[str, object]],
    capture: Mapping[str, object] | None,
) -> dict[str, object]:
    body: dict[str, object] = {"ProductionVariants": production}
    if shadows:
        body["ShadowProductionVariants"] = shadows
    if capture is not None:
        body["DataCaptureConfig"] = dict(capture)
    return body


def configuration_name(experiment_name: str, step: str) -> str:
    """A new endpoint configuration's name for `step` ("start" or "stop") of an experiment:
    within EndpointConfigName's 63 characters and pattern, unique by its random suffix."""
    return f"{experiment_name[:44].rstrip('-')}-{step}-{secrets.token_hex(4)}"


class ExperimentRunner:
    """Converges every experiment that is not over (see the module's docstring).

    Args:
        state: the control plane's store thread and lookups.
        store: the experiments' table.
        create_endpoint_config, update_endpoint, update_weights: the control plane's
            CreateEndpointConfig, UpdateEndpoint and UpdateEndpointWeightsAndCapacities.
        check_seconds: how often it looks when nothing wakes it.
    """

    def __init__(
        self,
        state: ControlState,
        store: ExperimentStore,
        *,
        create_endpoint_config: Operation,
        update_endpoint: Operation,
        update_weights: Operation,
        check_seconds: float,
    ) -> None:
        self.state = state
        self.store = store
        #: Held by every read-check-write of an experiment (operations and runner alike).
        self.lock = asyncio.Lock()
        self._create_endpoint_config = create_endpoint_config
        self._update_endpoint = update_endpoint
        self._update_weights = update_weights
        self._check_seconds = check_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: How many steps changed a record (the background loop's and `reconcile`'s alike).
        self.steps = 0

    async def start(self) -> None:
        """Create the experiments' table if needed and start converging in the background
        (a step whose endpoint update a restart interrupted is taken again)."""
        await self.state.run(self.store.prepare)
        # An update this step issued before a restart was rolled back by the restart (or goes
        # on): issue it again if the endpoint is not on its configuration once it settles.
        async with self.lock:
            for record in await self.state.run(self.store.list):
                if record.deploy_issued and record.status not in FINISHED_STATUSES:
                    await self.state.run(self.store.put, replace(record, deploy_issued=False))
        self._task = asyncio.create_task(self._run(), name="inference-experiments")

    async def cancel(self) -> None:
        """Stop the background loop (an experiment mid-step resumes at the next start)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def wake(self) -> None:
        """Look at the experiments now rather than at the next check."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.reconcile_all()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the inference experiments' check failed; it runs again")
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can turn a cancellation that
            # lands as its timeout expires into TimeoutError, and the loop would never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._check_seconds):
                    await self._wake.wait()

    async def reconcile_all(self) -> bool:
        """One step of every experiment that is not over; whether any record changed."""
        records = await self.state.run(self.store.list)
        changed = False
        for record in records:
            if record.status in FINISHED_STATUSES:
                continue
            try:
                changed = await self.reconcile(record.name) or changed
            except Exception:
                log.exception(
                    "inference experiment %s: the step failed; it is tried again", record.name
                )
        return changed

    async def reconcile(self, name: str) -> bool:
        """One idempotent step of the experiment `name`; whether its record changed."""
        async with self.lock:
            record = await self.state.run(self.store.get, name)
            if record is None or record.status in FINISHED_STATUSES:
                return False
            updated = await self._step(record, time.time())
            if updated == record:
                return False
            await self.state.run(self.store.put, replace(updated, last_modified_time=time.time()))
            self.steps += 1
            return True

    async def _step(self, record: ExperimentRecord, now: float) -> ExperimentRecord:
        status = record.status
        if status is ExperimentStatus.CREATED:
            if record.schedule_end <= now:
                return _finished(
                    record,
                    ExperimentStatus.COMPLETED,
                    "The scheduled end time passed before the experiment started.",
                    now,
                )
            if record.schedule_start <= now:
                return replace(record, status=ExperimentStatus.STARTING, status_reason=None)
            return record
        if status is ExperimentStatus.STARTING:
            if record.deploy_config is None:
                endpoint = await self.state.run(self.state.store.get_endpoint, record.endpoint_name)
                if endpoint is not None:
                    record = replace(record, capture_before=endpoint.data_capture)
            outcome, detail = await self._converge(record, start_configuration, "start")
            if outcome == "done":
                return replace(
                    record, status=ExperimentStatus.RUNNING, deploy_config=None, deploy_issued=False
                )
            if outcome == "failed":
                return _finished(record, ExperimentStatus.CANCELLED, detail, now)
            return _progress(record, detail)
        if status in (ExperimentStatus.RUNNING, ExperimentStatus.UPDATING):
            if record.schedule_end <= now:
                ending = StopRequest(
                    actions={record.source_variant: "Retain", record.shadow_variant: "Remove"},
                    desired_variants=(),
                    final_status=ExperimentStatus.COMPLETED,
                    reason="The inference experiment reached its scheduled end time.",
                )
                return replace(record, status=ExperimentStatus.STOPPING, stop=ending)
            outcome, detail = await self._sample(record)
            if outcome == "done":
                return replace(record, status=ExperimentStatus.RUNNING)
            if outcome == "failed":
                return _finished(record, ExperimentStatus.CANCELLED, detail, now)
            return record
        if status is ExperimentStatus.STOPPING:
            stop: StopRequest | None = record.stop
            assert stop is not None  # Stopping is written with its StopRequest
            outcome, detail = await self._converge(
                record,
                lambda experiment, endpoint: stop_configuration(experiment, endpoint, stop),
                "stop",
            )
            if outcome == "failed":
                return _finished(record, ExperimentStatus.CANCELLED, detail, now)
            if outcome == "done":
                return _finished(record, stop.final_status, stop.reason, now)
            return _progress(record, detail)
        return record

    async def _converge(
        self,
        record: ExperimentRecord,
        build: Callable[[ExperimentRecord, EndpointRecord], dict[str, object] | None],
        step: str,
    ) -> _Outcome:
        """Bring the endpoint onto the configuration `build` makes for this step."""
        endpoint = await self.state.run(self.state.store.get_endpoint, record.endpoint_name)
        if endpoint is None:
            return "failed", f'The endpoint "{record.endpoint_name}" was deleted.'
        target = record.deploy_config
        if target is None:
            if build(record, endpoint) is None:
                return "done", ""
            # Named and stored first (the caller writes the record): a restart finds it again.
            return "wait", configuration_name(record.name, step)
        busy = endpoint.status in IN_PROGRESS_STATUSES or endpoint.pending is not None
        if endpoint.endpoint_config_name.lower() == target.lower():
            if busy:
                return "wait", target
            if endpoint.status is EndpointStatus.IN_SERVICE:
                return "done", ""
            return "failed", _endpoint_failure(endpoint)
        if record.deploy_issued:
            if busy:
                return "wait", target
            return "failed", _endpoint_failure(endpoint)
        if busy:
            return "wait", target
        body = build(record, endpoint)
        if body is None:
            return "done", ""
        try:
            if await self.state.run(self.state.store.get_endpoint_config, target) is None:
                await self._create_endpoint_config({"EndpointConfigName": target, **body})
            await self._update_endpoint(
                {"EndpointName": record.endpoint_name, "EndpointConfigName": target}
            )
        except (ValidationException, ResourceLimitExceeded) as error:
            if "in-progress" in error.message:
                return "wait", target
            return "failed", error.message
        return "wait", "issued"

    async def _sample(self, record: ExperimentRecord) -> _Outcome:
        """Give the endpoint's shadow the experiment's share and both variants its counts."""
        endpoint = await self.state.run(self.state.store.get_endpoint, record.endpoint_name)
        if endpoint is None:
            return "failed", f'The endpoint "{record.endpoint_name}" was deleted.'
        by_name = {variant.variant_name: variant for variant in endpoint.variants}
        shadow = by_name.get(record.shadow_variant)
        if shadow is None or not shadow.shadow:
            return "failed", (
                f'The endpoint "{record.endpoint_name}" no longer has the shadow variant '
                f'"{record.shadow_variant}".'
            )
        weight = shadow_weight(
            [v.desired_weight for v in endpoint.variants if not v.shadow],
            record.sampling_percentage,
        )
        changes: list[dict[str, object]] = []
        if abs(shadow.desired_weight - weight) > _WEIGHT_TOLERANCE:
            changes.append({"VariantName": shadow.variant_name, "DesiredWeight": weight})
        for name in (record.source_variant, record.shadow_variant):
            variant = by_name.get(name)
            count = _instance_count(record.model_variant(name))
            if variant is None or variant.desired_instance_count == count:
                continue
            existing = next((c for c in changes if c["VariantName"] == name), None)
            if existing is None:
                changes.append({"VariantName": name, "DesiredInstanceCount": count})
            else:
                existing["DesiredInstanceCount"] = count
        if not changes:
            return "done", ""
        if endpoint.status in IN_PROGRESS_STATUSES or endpoint.pending is not None:
            return "wait", ""
        try:
            await self._update_weights(
                {"EndpointName": record.endpoint_name, "DesiredWeightsAndCapacities": changes}
            )
        except (ValidationException, ResourceLimitExceeded) as error:
            if "in-progress" in error.message:
                return "wait", ""
            return "failed", error.message
        self.steps += 1  # the endpoint moved though the record did not
        return "wait", ""


def _instance_count(model_variant: Mapping[str, object]) -> int:
    infrastructure = model_variant["InfrastructureConfig"]
    assert isinstance(infrastructure, dict)
    real_time = infrastructure["RealTimeInferenceConfig"]
    assert isinstance(real_time, dict)
    count = real_time["InstanceCount"]
    assert isinstance(count, int)
    return count


def _progress(record: ExperimentRecord, detail: str) -> ExperimentRecord:
    """The record after a step that waits: the configuration it named, or that its update was
    issued (`detail` "issued")."""
    if detail == "issued":
        return replace(record, deploy_issued=True)
    if detail and record.deploy_config is None:
        return replace(record, deploy_config=detail, deploy_issued=False)
    return record


def _finished(
    record: ExperimentRecord, status: ExperimentStatus, reason: str | None, now: float
) -> ExperimentRecord:
    return replace(
        record,
        status=status,
        status_reason=reason,
        completion_time=now,
        deploy_config=None,
        deploy_issued=False,
    )


def _endpoint_failure(endpoint: EndpointRecord) -> str:
    reason = endpoint.failure_reason or "the update did not complete"
    return f'The endpoint "{endpoint.name}" did not take the experiment\'s configuration: {reason}'
