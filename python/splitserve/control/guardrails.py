"""The guarded UpdateEndpoint: blue/green with its DeploymentConfig's guardrails.

`GuardedUpdate.run` deploys the new (green) generation beside the live (blue) one and moves the
traffic to it:

- all at once by default: one atomic switch (`Deployer.activate`), after which green is what
  DescribeEndpoint shows as ProductionVariants (VariantStatus Baking during
  TerminationWaitInSeconds), then blue is retired and the endpoint is InService. If green fails,
  blue keeps serving: the endpoint goes back to InService and FailureReason says why the update
  failed (as AWS documents FailureReason: "or the status is InService but update operation
  fails"). The reason is cleared by the next update.
- CANARY or LINEAR: in steps (`planning.traffic_steps`): both generations serve, split by the
  step's share (`Deployer.shift`), each step baked WaitIntervalInSeconds while the
  AutoRollbackConfiguration alarms are read (`bakes.AlarmWatch`), the last step being the switch
  above. An alarm in ALARM during any bake (TerminationWaitInSeconds included) is RollingBack:
  every request to blue at once, green retired, InService on blue with FailureReason saying so.
- RollingUpdatePolicy: batch by batch (`planning.rolling_batches`): green grows and blue shrinks
  (`Deployer.scale_generation`) while each batch takes its share and bakes; a rollback restores
  blue's counts at once, then all the traffic.

MaximumExecutionTimeoutInSeconds bounds the whole deployment: past it, blue takes everything back.
The lifecycle (`lifecycle.py`) runs it as the endpoint's background task
(docs/architecture.md, "Deployment guardrails").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from splitserve.config import MAX_FAILURE_REASON
from splitserve.control.background import internal_reason, retire_quietly
from splitserve.control.bakes import AlarmWatch, alarm_names
from splitserve.control.deployer import Deployer, DeploymentPlan
from splitserve.control.documents import optional_int, optional_mapping
from splitserve.control.models import EndpointRecord, EndpointStatus, VariantStatusEntry
from splitserve.control.planning import (
    Planner,
    RollingBatch,
    TrafficStep,
    rolling_batches,
    traffic_steps,
)
from splitserve.control.state import ControlState
from splitserve.control.variants import settled, weight_split
from splitserve.errors import DeploymentError

log = logging.getLogger(__name__)


class GuardedUpdate:
    """Carries out UpdateEndpoint's blue/green deployments (see the module docstring).

    Args:
        state: the store, its lock and the record changes.
        deployer: what runs the endpoints.
        planner: checks the new configuration's model data.
        watch: the bakes, which read the AutoRollbackConfiguration alarms.
    """

    def __init__(
        self, state: ControlState, deployer: Deployer, planner: Planner, watch: AlarmWatch
    ) -> None:
        self._state = state
        self._deployer = deployer
        self._planner = planner
        self._watch = watch

    async def run(
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
        A RollingUpdatePolicy goes batch by batch instead (`_rolling`)."""
        if optional_mapping((deployment_config or {}).get("RollingUpdatePolicy")) is not None:
            await self._rolling(endpoint_name, blue_generation, plan, deployment_config)
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
                        fired = await self._watch.bake(interval, alarms)
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

        await self._state.record_weights(
            endpoint_name, "UpdateEndpoint", weight_split(green_variants), switched
        )
        await self._state.transition(endpoint_name, _green_is_live(switched, baking))
        # The last bake is watched too: blue still runs, so an alarm can still send it back.
        fired = await self._watch.bake(bake, alarms)
        if fired:
            await self._roll_back_update(
                endpoint_name, blue, blue_generation, plan, fired, switched=True
            )
            return
        await retire_quietly(self._deployer, endpoint_name, blue_generation)

        await self._state.transition(endpoint_name, _in_service)

    async def _rolling(
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
                        fired = await self._watch.bake(interval, alarms)
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

        await self._state.record_weights(
            endpoint_name, "UpdateEndpoint", weight_split(blue.pending.variants), switched
        )
        await self._state.transition(endpoint_name, _green_is_live(switched, baking))
        # The last batch bakes too: the old fleet (one instance a variant) can still take over.
        fired = await self._watch.bake(interval, alarms)
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
        await retire_quietly(self._deployer, endpoint_name, blue_generation)

        await self._state.transition(endpoint_name, _in_service)

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
        await retire_quietly(self._deployer, endpoint_name, plan.generation)

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
                endpoint_name, "RollBack", weight_split(blue.variants, current=True), time.time()
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


def _green_is_live(
    switched: float, baking: VariantStatusEntry | None
) -> Callable[[EndpointRecord], EndpointRecord]:
    """The stored endpoint once all the traffic went to green at `switched`: green's
    configuration and variants (VariantStatus `baking`) are the endpoint's, nothing pending."""

    def change(record: EndpointRecord) -> EndpointRecord:
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

    return change


def _in_service(record: EndpointRecord) -> EndpointRecord:
    """The stored endpoint once an update is over: InService, no VariantStatus left."""
    return replace(
        record,
        status=EndpointStatus.IN_SERVICE,
        last_modified_time=time.time(),
        variants=tuple(replace(variant, status=None) for variant in record.variants),
    )
