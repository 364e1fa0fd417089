"""The endpoint lifecycle: the background work that converges endpoints to what the API accepted.

Each endpoint has at most one background task at a time (`EndpointLifecycle.spawn`); the
operations (`endpoints.py`) write the new desired state, then start the task that deploys it.

- CreateEndpoint answers Creating; the task checks the model data exists, deploys, activates, and
  writes InService. A DeploymentError (or missing model data) gives Failed with FailureReason; any
  other exception gives Failed with a generic reason (the details go to the log).
- UpdateEndpoint is blue/green (`guardrails.GuardedUpdate`): Updating with a
  PendingDeploymentSummary while the new generation starts beside the live one, the traffic moved
  to it at once, in CANARY or LINEAR steps or in rolling batches, each bake watching the
  AutoRollbackConfiguration alarms; InService on the new generation, or on the old one with
  FailureReason when it failed or was rolled back.
- A new value of the endpoint tag `splitserve:ramp` (`tags.py`) ramps one variant's weight in
  steps (`ramp.RampRunner`), Updating meanwhile; an alarm in ALARM restores the weights from
  before it.
- UpdateEndpointWeightsAndCapacities changes the live generation in place: the new weights reach
  the router before the call answers (`apply_weights_now`); instance counts change in the
  background (`resize`), then Current = Desired and InService. If scaling fails the endpoint is
  RollingBack to its previous weights and counts, then InService with FailureReason (Failed if
  even that fails).
- DeleteEndpoint answers Deleting; the task removes the endpoint from the deployer and deletes the
  record, after which DescribeEndpoint says `Could not find endpoint`.
- `start()` brings back every endpoint that was serving or being created or updated, with the last
  weights and instance counts the API accepted (the Desired values; RollingBack ones return to their
  Current values). One that was Creating stays Creating; any other shows SystemUpdating ("undergoing
  maintenance", so it cannot be changed meanwhile) until it serves again. An interrupted blue/green
  update that had not switched yet is abandoned for the configuration that was live, and
  FailureReason says so. Failed stays Failed; Deleting finishes deleting. The instance limits are
  not checked again: what the API accepted is brought back even if the limits were lowered since.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from dataclasses import replace
from typing import Any

from splitserve.config import MAX_FAILURE_REASON, ControlSettings
from splitserve.control.background import internal_reason, retire_quietly
from splitserve.control.bakes import AlarmWatch
from splitserve.control.deployer import AlarmStates, Deployer, DeploymentPlan
from splitserve.control.guardrails import GuardedUpdate
from splitserve.control.models import (
    DeployedVariant,
    EndpointRecord,
    EndpointStatus,
    name_key,
)
from splitserve.control.planning import Planner
from splitserve.control.ramp import RampRunner, RampSpec
from splitserve.control.state import ControlState
from splitserve.control.variants import launching, restored, settled, weight_split
from splitserve.errors import DeploymentError, SplitserveError, ValidationException

log = logging.getLogger(__name__)

#: The states a new controller redeploys an endpoint from (the module docstring).
_RECOVERED = (
    EndpointStatus.IN_SERVICE,
    EndpointStatus.CREATING,
    EndpointStatus.UPDATING,
    EndpointStatus.SYSTEM_UPDATING,
    EndpointStatus.ROLLING_BACK,
)


class EndpointLifecycle:
    """Runs every endpoint's background work: deploy, switch, scale, roll back, delete, recover.

    Args:
        state: the store, its lock and the record changes.
        deployer: what runs the endpoints.
        planner: turns stored variants into deployment plans (for recoveries).
        alarms: the alarm states a stepped update's bakes watch (None: no alarm ever fires).
        alarm_poll_seconds: how often a bake reads them (`ControlSettings.alarm_poll_seconds`).
    """

    def __init__(
        self,
        state: ControlState,
        deployer: Deployer,
        planner: Planner,
        *,
        alarms: AlarmStates | None = None,
        alarm_poll_seconds: float = ControlSettings.alarm_poll_seconds,
    ) -> None:
        self._state = state
        self._deployer = deployer
        self._planner = planner
        watch = AlarmWatch(alarms, alarm_poll_seconds)
        self._updates = GuardedUpdate(state, deployer, planner, watch)
        self._ramps = RampRunner(state, deployer, watch)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Endpoints a takeover recovers without leaving InService (`busy`).
        self._kept_in_service: set[str] = set()

    async def start(self, *, takeover: bool = False) -> None:
        """Bring back the endpoints the store remembers (deployments continue in the background).

        `takeover`: this replica took control over from one that died (docs/architecture.md,
        "Replicas"): an endpoint that was InService stays InService while its instances start
        again, as it does while a crashed instance restarts; it cannot be changed until they
        serve (`busy`)."""
        records = await self._state.run(self._state.store.list_endpoints)
        # First tell the data plane which endpoints exist, so that while they are redeployed
        # their callers get a retryable 503 (or a Failed endpoint's reason), not "not found".
        # A takeover whose deployer adopts the running instances leaves InService endpoints
        # routed as the replicas route them now (to those very instances) until the adopted
        # generation is activated: no request is refused meanwhile.
        adopting = takeover and self._deployer.adopts_instances
        for record in records:
            if record.status is EndpointStatus.FAILED:
                self._deployer.failed(record.name, record.failure_reason or "")
            elif record.status is EndpointStatus.IN_SERVICE and adopting:
                continue
            elif record.status is not EndpointStatus.DELETING:
                self._deployer.pending(record.name)
        recovered = [record for record in records if record.status in _RECOVERED]
        if self._deployer.adopts_instances:
            # Instances outlive their controller (docs/architecture.md, "Placement"): each
            # endpoint is redeployed under its live generation, whose running instances the
            # deployer adopts; anything else a previous controller left running is stopped.
            await self._deployer.recovering(
                {record.name: record.generation for record in recovered}
            )
        for record in records:
            if record.status is EndpointStatus.DELETING:
                self.spawn(record.name, self.delete(record.name))
            elif record.status in _RECOVERED:
                await self._recover(record, keep_in_service=takeover)

    def busy(self, endpoint_name: str) -> bool:
        """True while an endpoint a takeover kept InService is still being brought back."""
        key = name_key(endpoint_name)
        task = self._tasks.get(key)
        return key in self._kept_in_service and task is not None and not task.done()

    async def cancel(self) -> None:
        """Cancel the background tasks and wait for them to end."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def settle(self) -> None:
        """Wait until no background task runs (tests; an orderly stop that lets deployments end)."""
        while pending := [task for task in self._tasks.values() if not task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def create(
        self,
        record: EndpointRecord,
        plan: DeploymentPlan,
        cause: str = "CreateEndpoint",
        *,
        keep_routing: bool = False,
    ) -> None:
        """Deploy and activate a new (or recovered) endpoint, then InService; Failed on failure.

        `cause` goes into the weight history with the weights the router was given: a recovery
        passes "GatewayRestart". `keep_routing`: the data plane keeps routing the endpoint as it
        does now until this deployment is activated (a takeover adopting running instances),
        rather than answering 503 meanwhile.
        """
        if not keep_routing:
            self._deployer.pending(record.name)
        try:
            await self._planner.check_model_data(record.variants, plan)
            await self._deployer.deploy(plan)
            try:
                await self._deployer.activate(plan)
            except Exception:
                await retire_quietly(self._deployer, plan.endpoint_name, plan.generation)
                raise
        except DeploymentError as error:
            await self._fail(record.name, error.message)
            return
        except Exception:
            await self._fail(record.name, internal_reason("deploying the endpoint"))
            return
        now = time.time()
        await self._state.record_weights(record.name, cause, weight_split(record.variants), now)

        def in_service(current: EndpointRecord) -> EndpointRecord:
            return replace(
                current,
                status=EndpointStatus.IN_SERVICE,
                last_modified_time=now,
                variants=tuple(settled(variant, deployed_time=now) for variant in current.variants),
            )

        await self._state.transition(record.name, in_service)

    async def update(
        self,
        endpoint_name: str,
        blue_generation: int,
        plan: DeploymentPlan,
        deployment_config: Mapping[str, object] | None,
    ) -> None:
        """Blue/green: deploy green beside blue and move the traffic to it as the
        DeploymentConfig says, baking and rolling back on alarms (`guardrails.GuardedUpdate`)."""
        await self._updates.run(endpoint_name, blue_generation, plan, deployment_config)

    async def ramp(self, endpoint_name: str, spec: RampSpec) -> None:
        """The A/B ramp of a `splitserve:ramp` tag (`ramp.RampRunner`)."""
        await self._ramps.run(endpoint_name, spec)

    async def resize(
        self, endpoint_name: str, before: tuple[DeployedVariant, ...], weights_changed: bool
    ) -> None:
        """Scale the variants whose DesiredInstanceCount changed, then Current = Desired."""
        record = await self._state.run(self._state.store.get_endpoint, endpoint_name)
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
            reason = internal_reason("changing instance counts")
        if reason is None:

            def scaled(current: EndpointRecord) -> EndpointRecord:
                return replace(
                    current,
                    status=EndpointStatus.IN_SERVICE,
                    last_modified_time=time.time(),
                    variants=tuple(settled(variant) for variant in current.variants),
                )

            await self._state.transition(endpoint_name, scaled)
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

        await self._state.transition(endpoint_name, rolling_back)
        failure = f"Failed to update the endpoint's weights and capacities: {reason}"
        try:
            if weights_changed:
                previous = {v.variant_name: v.current_weight for v in before}
                await self._deployer.set_weights(endpoint_name, previous)
                await self._state.record_weights(
                    endpoint_name, "RollBack", weight_split(before, current=True), time.time()
                )
            counts = {variant.variant_name: variant.current_instance_count for variant in before}
            for variant in scaled:
                await self._deployer.scale(
                    endpoint_name, variant.variant_name, counts[variant.variant_name]
                )
        except Exception as error:
            detail = error.message if isinstance(error, DeploymentError) else None
            if detail is None:
                detail = internal_reason("rolling back")
            await self._fail(endpoint_name, f"{failure} Rolling back failed too: {detail}")
            return

        def rolled_back(current: EndpointRecord) -> EndpointRecord:
            return replace(
                current,
                status=EndpointStatus.IN_SERVICE,
                last_modified_time=time.time(),
                failure_reason=failure[:MAX_FAILURE_REASON],
                variants=tuple(replace(variant, status=None) for variant in before),
            )

        await self._state.transition(endpoint_name, rolled_back)

    async def delete(self, endpoint_name: str) -> None:
        """Remove the endpoint from the deployer, then its record; Failed if removal fails."""
        try:
            await self._deployer.remove(endpoint_name)
        except DeploymentError as error:
            await self._fail(endpoint_name, f"Failed to delete the endpoint: {error.message}")
            return
        except Exception:
            reason = internal_reason("deleting the endpoint")
            await self._fail(endpoint_name, f"Failed to delete the endpoint: {reason}")
            return
        async with self._state.lock:
            await self._state.run(self._state.store.delete_endpoint, endpoint_name)

    async def _fail(self, endpoint_name: str, reason: str, *, locked: bool = False) -> None:
        """The endpoint is Failed with `reason`: in the store and, through the deployer, for the
        data plane (which answers its requests with the reason while nothing of it is live)."""
        if locked:
            stored = await self._state.set_failed_locked(endpoint_name, reason)
        else:
            stored = await self._state.set_failed(endpoint_name, reason)
        if stored is not None:
            self._deployer.failed(endpoint_name, stored)

    async def _recover(self, record: EndpointRecord, *, keep_in_service: bool = False) -> None:
        """Redeploy an endpoint that was serving or changing (see the module docstring)."""
        creating = record.status is EndpointStatus.CREATING
        status = EndpointStatus.CREATING if creating else EndpointStatus.SYSTEM_UPDATING
        if keep_in_service and record.status is EndpointStatus.IN_SERVICE:
            status = EndpointStatus.IN_SERVICE
            self._kept_in_service.add(name_key(record.name))
        rolling_back = record.status is EndpointStatus.ROLLING_BACK
        now = time.time()
        variants = tuple(restored(variant, use_current=rolling_back) for variant in record.variants)
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
        # A deployer whose instances outlived the last controller adopts the live generation's
        # (under the same number); otherwise a new generation starts afresh.
        adopted = self._deployer.adopts_instances
        recovered = replace(
            record,
            status=status,
            generation=record.generation if adopted else generation + 1,
            last_modified_time=now,
            variants=tuple(
                launching(variant, now) if creating else replace(variant, status=None)
                for variant in variants
            ),
            failure_reason=failure_reason,
            pending=None,
        )
        async with self._state.lock:
            try:
                plan = await self._planner.plan(
                    record.name,
                    record.endpoint_config_name,
                    recovered.generation,
                    variants,
                    record.data_capture,
                    failover=record.failover,
                )
            except SplitserveError as error:
                await self._state.run(self._state.store.put_endpoint, recovered)
                await self._fail(record.name, error.message, locked=True)
                return
            await self._state.run(self._state.store.put_endpoint, recovered)
            keep_routing = (
                keep_in_service and adopted and record.status is EndpointStatus.IN_SERVICE
            )
            self.spawn(
                record.name,
                self.create(recovered, plan, "GatewayRestart", keep_routing=keep_routing),
            )

    def spawn(self, endpoint_name: str, work: Coroutine[Any, Any, None]) -> None:
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

    async def apply_weights_now(
        self, before: EndpointRecord, updated: tuple[DeployedVariant, ...]
    ) -> None:
        """Hand the new weights to the router before answering; on failure, undo and refuse."""
        try:
            await self._deployer.set_weights(before.name, _weights(updated))
        except Exception as error:
            await self._state.run(self._state.store.put_endpoint, before)
            if isinstance(error, SplitserveError):
                raise ValidationException(
                    f"The new weights could not be applied: {error.message}"
                ) from error
            raise ValidationException(
                "The new weights could not be applied: " + internal_reason("changing the weights")
            ) from error
        await self._state.record_weights(
            before.name, "UpdateEndpointWeightsAndCapacities", weight_split(updated), time.time()
        )


def _weights(variants: tuple[DeployedVariant, ...]) -> dict[str, float]:
    """What the router is given for `variants`: each one's DesiredWeight (a shadow's sets the
    share of requests copied to it)."""
    return {variant.variant_name: variant.desired_weight for variant in variants}
