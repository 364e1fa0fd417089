"""The endpoint lifecycle: the background work that converges endpoints to what the API accepted.

Each endpoint has at most one background task at a time (`EndpointLifecycle.spawn`); the
operations (`endpoints.py`) write the new desired state, then start the task that deploys it.

- CreateEndpoint answers Creating; the task checks the model data exists, deploys, activates, and
  writes InService. A DeploymentError (or missing model data) gives Failed with FailureReason; any
  other exception gives Failed with a generic reason (the details go to the log).
- UpdateEndpoint is blue/green, all at once by default: Updating with a PendingDeploymentSummary
  while the new generation starts beside the live one; then one atomic switch (`Deployer.activate`),
  after which the new generation is what DescribeEndpoint shows as ProductionVariants (VariantStatus
  Baking during TerminationWaitInSeconds), then the old generation is retired and the endpoint is
  InService. If the new generation fails, the old one keeps serving: the endpoint goes back to
  InService and FailureReason says why the update failed (as AWS documents FailureReason: "or the
  status is InService but update operation fails"). The reason is cleared by the next update.
  A DeploymentConfig of CANARY or LINEAR shifts the traffic in steps instead (`traffic_steps`):
  both generations serve, split by the step's share (`Deployer.shift`), each step baked
  WaitIntervalInSeconds while the AutoRollbackConfiguration alarms are read (`AlarmStates`), the
  last step being the switch above. An alarm in ALARM during any bake (TerminationWaitInSeconds
  included) is RollingBack: every request to blue at once, green retired, InService on blue with
  FailureReason saying so (docs/architecture.md, "Deployment guardrails").
- A RollingUpdatePolicy replaces the fleet batch by batch (`_rolling_update`): green grows and
  blue shrinks (`Deployer.scale_generation`) while each batch takes its share and bakes; a
  rollback restores blue's counts at once, then all the traffic.
- A new value of the endpoint tag `splitserve:ramp` (`tags.py`) ramps one variant's weight in
  steps (`ramp`), Updating meanwhile; an alarm in ALARM restores the weights from before it.
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
import math
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from typing import Any

from splitserve.config import MAX_FAILURE_REASON, ControlSettings
from splitserve.control.deployer import AlarmStates, Deployer, DeploymentPlan
from splitserve.control.documents import mappings, optional_int, optional_mapping, text
from splitserve.control.models import (
    RAMP_TAG,
    DeployedVariant,
    EndpointRecord,
    EndpointStatus,
    VariantStatusEntry,
    name_key,
)
from splitserve.control.planning import (
    Planner,
    RollingBatch,
    TrafficStep,
    rolling_batches,
    traffic_steps,
)
from splitserve.control.ramp import RampSpec, ramp_shares, ramp_weights
from splitserve.control.state import ControlState
from splitserve.control.variants import launching, restored, settled
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
        self._alarms = alarms
        self._alarm_poll_seconds = alarm_poll_seconds
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
                await self._retire_quietly(plan.endpoint_name, plan.generation)
                raise
        except DeploymentError as error:
            await self._fail(record.name, error.message)
            return
        except Exception:
            await self._fail(record.name, internal_reason("deploying the endpoint"))
            return
        now = time.time()
        await self._state.record_weights(record.name, cause, _split(record.variants), now)

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
        """Blue/green: deploy green beside blue, shift the traffic in the configuration's steps
        (one for ALL_AT_ONCE; each CANARY or LINEAR step baked WaitIntervalInSeconds while the
        AutoRollbackConfiguration alarms are watched), bake TerminationWaitInSeconds, retire
        blue, InService. An alarm in ALARM during a bake rolls everything back to blue.
        A RollingUpdatePolicy goes batch by batch instead (`_rolling_update`)."""
        if optional_mapping((deployment_config or {}).get("RollingUpdatePolicy")) is not None:
            await self._rolling_update(endpoint_name, blue_generation, plan, deployment_config)
            return
        policy = optional_mapping((deployment_config or {}).get("BlueGreenUpdatePolicy")) or {}
        routing = optional_mapping(policy.get("TrafficRoutingConfiguration")) or {}
        bake = optional_int(policy.get("TerminationWaitInSeconds")) or 0
        interval = optional_int(routing.get("WaitIntervalInSeconds")) or 0
        limit = optional_int(policy.get("MaximumExecutionTimeoutInSeconds"))
        alarms = alarm_names(deployment_config)
        blue = await self._state.run(self._state.store.get_endpoint, endpoint_name)
        if blue is None or blue.pending is None:
            return
        green_variants = blue.pending.variants
        canary = routing.get("Type") == "CANARY"
        steps = traffic_steps(
            deployment_config,
            sum(v.desired_instance_count for v in green_variants if not v.shadow),
        )
        reason: str | None = None
        fired: list[str] = []
        shifted = False
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                await self._planner.check_model_data(green_variants, plan)
                await self._deployer.deploy(plan)
                try:
                    for index, step in enumerate(steps[:-1]):
                        await self._state.transition(
                            endpoint_name,
                            _pending_status(
                                step, "ActivatingTraffic", canary=index == 0 and canary
                            ),
                        )
                        shifted = True
                        await self._deployer.shift(
                            endpoint_name, blue_generation, plan.generation, step.share
                        )
                        await self._state.transition(
                            endpoint_name,
                            _pending_status(
                                step, "Baking", canary=index == 0 and canary, interval=interval
                            ),
                        )
                        fired = await self._bake(interval, alarms)
                        if fired:
                            break
                    if not fired:
                        await self._deployer.activate(plan)
                except Exception:
                    await self._back_to_blue(endpoint_name, blue_generation, plan, shifted)
                    raise
        except TimeoutError:
            await self._back_to_blue(endpoint_name, blue_generation, plan, shifted)
            if deadline.expired():
                reason = (
                    "The update did not finish within MaximumExecutionTimeoutInSeconds "
                    f"({limit} s)."
                )
            else:
                reason = internal_reason("deploying the new endpoint configuration")
        except DeploymentError as error:
            reason = error.message
        except Exception:
            reason = internal_reason("deploying the new endpoint configuration")
        if fired:
            await self._roll_back_update(endpoint_name, blue, blue_generation, plan, fired)
            return
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

            await self._state.transition(endpoint_name, back_on_blue)
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
                    replace(settled(variant, deployed_time=switched), status=baking)
                    for variant in pending.variants
                ),
                data_capture=pending.data_capture,
                pending=None,
                last_modified_time=switched,
            )

        await self._state.record_weights(
            endpoint_name, "UpdateEndpoint", _split(green_variants), switched
        )
        await self._state.transition(endpoint_name, green_is_live)
        # The last bake is watched too: blue still runs, so an alarm can still send it back.
        fired = await self._bake(bake, alarms)
        if fired:
            await self._roll_back_update(
                endpoint_name, blue, blue_generation, plan, fired, switched=True
            )
            return
        await self._retire_quietly(endpoint_name, blue_generation)

        def in_service(record: EndpointRecord) -> EndpointRecord:
            return replace(
                record,
                status=EndpointStatus.IN_SERVICE,
                last_modified_time=time.time(),
                variants=tuple(replace(variant, status=None) for variant in record.variants),
            )

        await self._state.transition(endpoint_name, in_service)

    async def _rolling_update(
        self,
        endpoint_name: str,
        blue_generation: int,
        plan: DeploymentPlan,
        deployment_config: Mapping[str, object] | None,
    ) -> None:
        """RollingUpdatePolicy: the new fleet starts with one batch per variant; each batch
        takes its share of the requests (`Deployer.shift`), as much old capacity is terminated
        (`Deployer.scale_generation`), and the batch bakes WaitIntervalInSeconds while the
        alarms are watched; the last batch switches to the new fleet (`activate`), bakes, and
        the old fleet is retired. An alarm in ALARM, an error or the timeout brings the old
        fleet back to its counts at once, routes everything to it and retires the new one."""
        policy = optional_mapping((deployment_config or {}).get("RollingUpdatePolicy")) or {}
        interval = optional_int(policy.get("WaitIntervalInSeconds")) or 0
        limit = optional_int(policy.get("MaximumExecutionTimeoutInSeconds"))
        alarms = alarm_names(deployment_config)
        blue = await self._state.run(self._state.store.get_endpoint, endpoint_name)
        if blue is None or blue.pending is None:
            return
        blue_counts = {
            v.variant_name: v.current_instance_count for v in blue.variants if not v.shadow
        }
        targets = {v.variant_name: v.instance_count for v in plan.variants if not v.shadow}
        batches = rolling_batches(deployment_config, blue_counts, targets)
        first = batches[0].green
        reason: str | None = None
        fired: list[str] = []
        shifted = False
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                await self._planner.check_model_data(blue.pending.variants, plan)
                await self._deployer.deploy(
                    replace(
                        plan,
                        variants=tuple(
                            replace(v, instance_count=first[v.variant_name])
                            if v.variant_name in first
                            else v
                            for v in plan.variants
                        ),
                    )
                )
                try:
                    for index, batch in enumerate(batches):
                        if index > 0:
                            for name, count in batch.green.items():
                                if count != batches[index - 1].green[name]:
                                    await self._deployer.scale_generation(
                                        endpoint_name, plan.generation, name, count
                                    )
                        if batch.share >= 1:
                            break
                        await self._state.transition(
                            endpoint_name, _rolling_status(batch, "ActivatingTraffic", index)
                        )
                        shifted = True
                        await self._deployer.shift(
                            endpoint_name, blue_generation, plan.generation, batch.share
                        )
                        for name, count in batch.blue.items():
                            before = blue_counts if index == 0 else batches[index - 1].blue
                            if count < before[name]:
                                await self._deployer.scale_generation(
                                    endpoint_name, blue_generation, name, count
                                )
                        await self._state.transition(
                            endpoint_name, _rolling_status(batch, "Baking", index, interval)
                        )
                        fired = await self._bake(interval, alarms)
                        if fired:
                            break
                    if not fired:
                        await self._deployer.activate(plan)
                except Exception:
                    await self._back_to_blue(
                        endpoint_name, blue_generation, plan, shifted, blue_counts
                    )
                    raise
        except TimeoutError:
            await self._back_to_blue(endpoint_name, blue_generation, plan, shifted, blue_counts)
            reason = (
                f"The update did not finish within MaximumExecutionTimeoutInSeconds ({limit} s)."
                if deadline.expired()
                else internal_reason("deploying the new endpoint configuration")
            )
        except DeploymentError as error:
            reason = error.message
        except Exception:
            reason = internal_reason("deploying the new endpoint configuration")
        if fired:
            await self._roll_back_update(
                endpoint_name, blue, blue_generation, plan, fired, blue_counts=blue_counts
            )
            return
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
                    variants=tuple(replace(v, status=None) for v in blue.variants),
                    pending=None,
                )

            await self._state.transition(endpoint_name, back_on_blue)
            return
        switched = time.time()
        baking = VariantStatusEntry(
            "Baking",
            f"Baking for {interval} seconds (WaitIntervalInSeconds) with traffic enabled on full "
            "capacity.",
            switched,
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
                    replace(settled(variant, deployed_time=switched), status=baking)
                    for variant in pending.variants
                ),
                data_capture=pending.data_capture,
                pending=None,
                last_modified_time=switched,
            )

        await self._state.record_weights(
            endpoint_name, "UpdateEndpoint", _split(blue.pending.variants), switched
        )
        await self._state.transition(endpoint_name, green_is_live)
        # The last batch bakes too: the old fleet (one instance a variant) can still take over.
        fired = await self._bake(interval, alarms)
        if fired:
            await self._roll_back_update(
                endpoint_name,
                blue,
                blue_generation,
                plan,
                fired,
                switched=True,
                blue_counts=blue_counts,
            )
            return
        await self._retire_quietly(endpoint_name, blue_generation)

        def in_service(record: EndpointRecord) -> EndpointRecord:
            return replace(
                record,
                status=EndpointStatus.IN_SERVICE,
                last_modified_time=time.time(),
                variants=tuple(replace(variant, status=None) for variant in record.variants),
            )

        await self._state.transition(endpoint_name, in_service)

    async def _bake(self, seconds: int, alarms: Sequence[str]) -> list[str]:
        """Wait `seconds` while watching `alarms`; the names found in ALARM (then at once), or
        none once the time is up. Without alarms (or a way to read them) it only waits."""
        if not alarms or self._alarms is None:
            if seconds:
                await asyncio.sleep(seconds)
            return []
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while True:
            try:
                fired = await self._alarms.in_alarm(alarms)
            except Exception:
                # An unreadable alarm store must not roll back (nor fail) a healthy update.
                log.exception("reading the states of alarms %s failed", ", ".join(alarms))
                fired = []
            if fired:
                return fired
            left = end - loop.time()
            if left <= 0:
                return []
            await asyncio.sleep(min(left, self._alarm_poll_seconds))

    async def _back_to_blue(
        self,
        endpoint_name: str,
        blue_generation: int,
        plan: DeploymentPlan,
        shifted: bool,
        blue_counts: Mapping[str, int] | None = None,
    ) -> None:
        """All the traffic to blue again (if some went to green), then green retired.
        `blue_counts`: a rolling update's old fleet is first brought back to these counts
        (all at once: RollbackMaximumBatchSize's default, the whole old capacity)."""
        for variant_name, count in (blue_counts or {}).items():
            try:
                await self._deployer.scale_generation(
                    endpoint_name, blue_generation, variant_name, count
                )
            except Exception:
                log.exception("bringing back the old fleet of endpoint %s failed", endpoint_name)
        if shifted:
            try:
                await self._deployer.shift(endpoint_name, blue_generation, plan.generation, 0.0)
            except Exception:
                log.exception("routing endpoint %s back to its old fleet failed", endpoint_name)
        await self._retire_quietly(endpoint_name, plan.generation)

    async def _roll_back_update(
        self,
        endpoint_name: str,
        blue: EndpointRecord,
        blue_generation: int,
        plan: DeploymentPlan,
        fired: list[str],
        *,
        switched: bool = False,
        blue_counts: Mapping[str, int] | None = None,
    ) -> None:
        """An AutoRollbackConfiguration alarm fired: RollingBack, every request to blue at once,
        green torn down, then InService on blue with FailureReason saying so (a rolling
        update's old fleet first grows back to `blue_counts`)."""

        def rolling_back(record: EndpointRecord) -> EndpointRecord:
            return replace(
                record, status=EndpointStatus.ROLLING_BACK, last_modified_time=time.time()
            )

        await self._state.transition(endpoint_name, rolling_back)
        await self._back_to_blue(
            endpoint_name, blue_generation, plan, shifted=True, blue_counts=blue_counts
        )
        if switched:  # the weight history had green's weights: blue's hold again
            await self._state.record_weights(
                endpoint_name, "RollBack", _split(blue.variants, current=True), time.time()
            )
        names = ", ".join(f'"{name}"' for name in fired)
        failure = (
            f"Update rolled back: the alarm(s) {names} of AutoRollbackConfiguration went into "
            f'ALARM state during the deployment of endpoint configuration "'
            f'{plan.endpoint_config_name}"; all traffic was shifted back and the endpoint '
            f'serves endpoint configuration "{blue.endpoint_config_name}" again.'
        )
        log.warning("endpoint %s: %s", endpoint_name, failure)

        def rolled_back(record: EndpointRecord) -> EndpointRecord:
            # The record as it was before the update (green may have become what it showed),
            # keeping what changed meanwhile that is not the deployment's (tags).
            return replace(
                record,
                status=EndpointStatus.IN_SERVICE,
                endpoint_config_name=blue.endpoint_config_name,
                generation=blue.generation,
                variants=tuple(replace(variant, status=None) for variant in blue.variants),
                data_capture=blue.data_capture,
                last_modified_time=time.time(),
                failure_reason=failure[:MAX_FAILURE_REASON],
                pending=None,
            )

        await self._state.transition(endpoint_name, rolled_back)

    async def ramp(self, endpoint_name: str, spec: RampSpec) -> None:
        """The A/B ramp of a `splitserve:ramp` tag (`control/ramp.py`): the variant's share
        moved step by step toward the target, each step published like a weight change and
        baked while the tag's alarms are watched; one in ALARM restores the weights from before
        the ramp. Updating meanwhile, then InService (with FailureReason when stopped)."""
        record = await self._state.run(self._state.store.get_endpoint, endpoint_name)
        if record is None:
            return
        before = record.variants
        weights = {v.variant_name: v.desired_weight for v in before if not v.shadow}
        total = math.fsum(weights.values())
        start = weights[spec.variant] / total if total > 0 else 0.0
        shares = ramp_shares(start, spec.target_percent, spec.step_percent)
        reason: str | None = None
        try:
            for index, share in enumerate(shares):
                ramped = ramp_weights(weights, spec.variant, share)
                await self._deployer.set_weights(endpoint_name, ramped)
                now = time.time()
                await self._state.record_weights(endpoint_name, "Ramp", ramped, now)
                await self._state.transition(
                    endpoint_name,
                    _ramp_step(spec, ramped, f"step {index + 1} of {len(shares)}", share, now),
                )
                fired = await self._bake(spec.wait_seconds, spec.alarms)
                if fired:
                    names = ", ".join(f'"{name}"' for name in fired)
                    reason = (
                        f'The ramp of variant "{spec.variant}" ({RAMP_TAG}) was stopped at '
                        f"{share:.0%} of the requests: the alarm(s) {names} went into ALARM "
                        "state; the weights from before the ramp were restored."
                    )
                    break
        except DeploymentError as error:
            reason = f'The ramp of variant "{spec.variant}" failed: {error.message}'
        except Exception:
            reason = f'The ramp of variant "{spec.variant}" failed: ' + internal_reason(
                "ramping the weights"
            )
        if reason is not None:
            try:
                await self._deployer.set_weights(endpoint_name, weights)
                await self._state.record_weights(
                    endpoint_name, "RampRollBack", weights, time.time()
                )
            except Exception:
                log.exception("restoring the weights of endpoint %s failed", endpoint_name)
            log.warning("endpoint %s: %s", endpoint_name, reason)

        def done(current: EndpointRecord) -> EndpointRecord:
            variants = before if reason is not None else current.variants
            return replace(
                current,
                status=EndpointStatus.IN_SERVICE,
                last_modified_time=time.time(),
                failure_reason=None if reason is None else reason[:MAX_FAILURE_REASON],
                variants=tuple(replace(variant, status=None) for variant in variants),
            )

        await self._state.transition(endpoint_name, done)

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
                    endpoint_name, "RollBack", _split(before, current=True), time.time()
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

    async def _retire_quietly(self, endpoint_name: str, generation: int) -> None:
        try:
            await self._deployer.retire(endpoint_name, generation)
        except Exception:
            log.exception("retiring generation %d of endpoint %s failed", generation, endpoint_name)

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
            before.name, "UpdateEndpointWeightsAndCapacities", _split(updated), time.time()
        )


def alarm_names(deployment_config: Mapping[str, object] | None) -> list[str]:
    """The AlarmNames of a validated DeploymentConfig's AutoRollbackConfiguration, in order."""
    rollback = optional_mapping((deployment_config or {}).get("AutoRollbackConfiguration")) or {}
    return [text(alarm, "AlarmName") for alarm in mappings(rollback.get("Alarms"))]


def _pending_status(
    step: TrafficStep, status: str, *, canary: bool, interval: int = 0
) -> Callable[[EndpointRecord], EndpointRecord]:
    """The change of the stored endpoint when a traffic step starts (ActivatingTraffic) or
    bakes (Baking): the green variants' VariantStatus and CurrentWeight (their share of the
    requests), in PendingDeploymentSummary; the blue variants stay as they are."""
    now = time.time()
    capacity = "canary capacity" if canary else "capacity"
    if status == "ActivatingTraffic":
        message = (
            f"Activating traffic on {capacity} of {step.instances} instance(s) "
            f"({step.share:.0%} of the requests)."
        )
    else:
        message = (
            f"Baking for {interval} seconds (WaitIntervalInSeconds) with traffic enabled on "
            f"{capacity} of {step.instances} instance(s)."
        )
    entry = VariantStatusEntry(status, message, now)

    def change(record: EndpointRecord) -> EndpointRecord:
        pending = record.pending
        if pending is None:
            return record
        variants = tuple(
            replace(
                variant,
                current_weight=variant.desired_weight * step.share,
                current_instance_count=variant.desired_instance_count,
                deployed_time=variant.deployed_time or now,
                status=entry,
            )
            if not variant.shadow
            else replace(
                variant,
                current_instance_count=variant.desired_instance_count,
                deployed_time=variant.deployed_time or now,
                status=None,
            )
            for variant in pending.variants
        )
        return replace(record, last_modified_time=now, pending=replace(pending, variants=variants))

    return change


def _rolling_status(
    batch: RollingBatch, status: str, index: int, interval: int = 0
) -> Callable[[EndpointRecord], EndpointRecord]:
    """The stored endpoint during a rolling batch: each fleet's instance counts (blue's in
    ProductionVariants, green's in PendingDeploymentSummary), green's share as its variants'
    CurrentWeight, and their VariantStatus."""
    now = time.time()
    new = sum(batch.green.values())
    if status == "ActivatingTraffic":
        message = (
            f"Activating traffic on batch {index + 1}: {new} new instance(s) take "
            f"{batch.share:.0%} of the requests; old capacity is terminated to "
            f"{sum(batch.blue.values())} instance(s)."
        )
    else:
        message = (
            f"Baking for {interval} seconds (WaitIntervalInSeconds) with traffic enabled on "
            f"{new} new instance(s)."
        )
    entry = VariantStatusEntry(status, message, now)

    def change(record: EndpointRecord) -> EndpointRecord:
        pending = record.pending
        if pending is None:
            return record
        green = tuple(
            replace(
                variant,
                current_weight=variant.desired_weight * batch.share,
                current_instance_count=batch.green[variant.variant_name],
                deployed_time=variant.deployed_time or now,
                status=entry,
            )
            if variant.variant_name in batch.green
            else replace(variant, deployed_time=variant.deployed_time or now, status=None)
            for variant in pending.variants
        )
        blue = tuple(
            replace(variant, current_instance_count=batch.blue[variant.variant_name])
            if variant.variant_name in batch.blue and status == "Baking"
            else variant
            for variant in record.variants
        )
        return replace(
            record, last_modified_time=now, variants=blue, pending=replace(pending, variants=green)
        )

    return change


def _ramp_step(
    spec: RampSpec, weights: Mapping[str, float], step: str, share: float, now: float
) -> Callable[[EndpointRecord], EndpointRecord]:
    """The stored endpoint after one ramp step: the new weights (Current = Desired) and the
    ramped variant's VariantStatus."""
    entry = VariantStatusEntry(
        "Updating",
        f"Ramping variant weight to {share:.0%} of the requests ({step}); baking for "
        f"{spec.wait_seconds} seconds.",
        now,
    )

    def change(record: EndpointRecord) -> EndpointRecord:
        return replace(
            record,
            last_modified_time=now,
            variants=tuple(
                replace(
                    variant,
                    current_weight=weights[variant.variant_name],
                    desired_weight=weights[variant.variant_name],
                    status=entry if variant.variant_name == spec.variant else None,
                )
                if variant.variant_name in weights
                else variant
                for variant in record.variants
            ),
        )

    return change


def _weights(variants: tuple[DeployedVariant, ...]) -> dict[str, float]:
    """What the router is given for `variants`: each one's DesiredWeight (a shadow's sets the
    share of requests copied to it)."""
    return {variant.variant_name: variant.desired_weight for variant in variants}


def _split(variants: tuple[DeployedVariant, ...], *, current: bool = False) -> dict[str, float]:
    """The weight history's entry for `variants`: the production variants' Desired (or Current)
    weights. Shadows take no share of the callers' traffic, so the split `splitserve evaluate`
    checks leaves them out."""
    return {
        variant.variant_name: variant.current_weight if current else variant.desired_weight
        for variant in variants
        if not variant.shadow
    }


def internal_reason(doing: str) -> str:
    """A FailureReason for an unexpected exception (logged here with the same incident id)."""
    incident = uuid.uuid4()
    log.exception("internal error while %s (incident %s)", doing, incident)
    return f"An internal error occurred while {doing} (incident {incident}); see the gateway log."
