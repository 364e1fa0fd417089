"""The A/B ramp, beyond SageMaker: one production variant's share of the requests moved in steps
toward a target by the endpoint's `splitserve:ramp` tag, each step baked while alarms are
watched, and every weight restored when one of them is in ALARM (README, "Deployment
guardrails"; docs/architecture.md, "Deployment guardrails").

The tag's value is `<VariantName> <TargetPercent> <StepPercent> <WaitSeconds> [AlarmName ...]`,
separated by spaces (the characters a tag value may hold): e.g. `Variant2 50 10 300 errors-5xx`
moves Variant2 from its share now to 50 % of the requests, 10 points a step, baking 300 s after
each. The other production variants keep their weights' ratios among themselves. The parsing and
the shares are pure functions; `RampRunner` runs the steps (as the endpoint's background task,
started through `lifecycle.EndpointLifecycle.ramp`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from splitserve.config import MAX_FAILURE_REASON
from splitserve.control.background import internal_reason
from splitserve.control.bakes import AlarmWatch
from splitserve.control.deployer import Deployer
from splitserve.control.models import (
    RAMP_TAG,
    DeployedVariant,
    EndpointRecord,
    EndpointStatus,
    Tags,
    VariantStatusEntry,
)
from splitserve.control.state import ControlState
from splitserve.errors import DeploymentError, ValidationException

log = logging.getLogger(__name__)

#: The longest bake a ramp step may ask for: WaitIntervalInSeconds' bound (one hour).
MAX_RAMP_WAIT_SECONDS = 3600
#: The most alarms a ramp watches: AutoRollbackConfiguration's bound.
MAX_RAMP_ALARMS = 10


@dataclass(frozen=True)
class RampSpec:
    """What a `splitserve:ramp` tag asks for.

    Attributes:
        variant: the production variant whose share moves.
        target_percent: its share of the requests at the end, 0 to 100.
        step_percent: how many points of share one step moves, 1 to 100.
        wait_seconds: the bake after each step, 0 to 3600.
        alarms: the alarm names watched during every bake (none: nothing stops it).
    """

    variant: str
    target_percent: float
    step_percent: float
    wait_seconds: int
    alarms: tuple[str, ...]


def ramp_spec(tags: Tags) -> RampSpec | None:
    """The ramp the tags ask for (None without a `splitserve:ramp` tag).

    Raises:
        ValidationException: the tag's value is not `<VariantName> <TargetPercent>
            <StepPercent> <WaitSeconds> [AlarmName ...]` within the bounds; the message says
            which part is wrong.
    """
    value = next((tag_value for key, tag_value in tags if key == RAMP_TAG), None)
    if value is None:
        return None
    parts = value.split()
    usage = (
        f"The tag {RAMP_TAG} must have the value '<VariantName> <TargetPercent> <StepPercent> "
        "<WaitSeconds> [AlarmName ...]' (e.g. 'Variant2 50 10 300 errors'), not "
        f"'{value[:100]}': "
    )
    if len(parts) < 4:
        raise ValidationException(usage + "it has fewer than four parts.")
    variant, target, step, wait, *alarms = parts
    try:
        target_percent, step_percent = float(target), float(step)
        wait_seconds = int(wait)
    except ValueError:
        raise ValidationException(
            usage + "TargetPercent and StepPercent must be numbers, WaitSeconds a whole number."
        ) from None
    if not 0 <= target_percent <= 100:
        raise ValidationException(usage + "TargetPercent must be between 0 and 100.")
    if not 1 <= step_percent <= 100:
        raise ValidationException(usage + "StepPercent must be between 1 and 100.")
    if not 0 <= wait_seconds <= MAX_RAMP_WAIT_SECONDS:
        raise ValidationException(
            usage + f"WaitSeconds must be between 0 and {MAX_RAMP_WAIT_SECONDS}."
        )
    if len(alarms) > MAX_RAMP_ALARMS:
        raise ValidationException(usage + f"it names more than {MAX_RAMP_ALARMS} alarms.")
    return RampSpec(variant, target_percent, step_percent, wait_seconds, tuple(alarms))


def check_ramp(spec: RampSpec, variants: tuple[DeployedVariant, ...]) -> None:
    """The ramped variant is one of the endpoint's production variants, and there is another.

    Raises:
        ValidationException: naming the variant, or saying there is nothing to ramp against.
    """
    production = [variant.variant_name for variant in variants if not variant.shadow]
    if spec.variant not in production:
        names = ", ".join(production)
        raise ValidationException(
            f'The tag {RAMP_TAG} names variant "{spec.variant}", which is not a production '
            f"variant of the endpoint ({names})."
        )
    if len(production) < 2:
        raise ValidationException(
            f"The tag {RAMP_TAG} needs an endpoint with at least two production variants: the "
            "ramped variant's share comes from the others'."
        )


def ramp_shares(start: float, target: float, step: float) -> tuple[float, ...]:
    """The ramped variant's shares (0 to 1) after each step from `start` to `target` (percent
    points `step` at a time, the last step capped at `target`); none when it is there already."""
    shares: list[float] = []
    share = start * 100
    direction = 1 if target >= share else -1
    while not math.isclose(share, target, abs_tol=1e-9):
        share = share + direction * step
        if (share - target) * direction > 0:
            share = target
        shares.append(share / 100)
    return tuple(shares)


def ramp_weights(weights: Mapping[str, float], variant: str, share: float) -> dict[str, float]:
    """Weights with the same total in which `variant` has `share` of the requests and every
    other variant keeps its ratio to the others. Others that all weigh 0 share the rest evenly."""
    total = math.fsum(weights.values()) or 1.0
    others = {name: weight for name, weight in weights.items() if name != variant}
    others_total = math.fsum(others.values())
    ramped = {variant: share * total}
    for name, weight in others.items():
        ratio = weight / others_total if others_total > 0 else 1 / len(others)
        ramped[name] = (1 - share) * total * ratio
    return {name: ramped[name] for name in weights}


class RampRunner:
    """Runs the ramps of `splitserve:ramp` tags.

    Args:
        state: the store, its lock and the record changes.
        deployer: what runs the endpoints (each step is a change of the live weights).
        watch: the bakes, which read the tag's alarms.
    """

    def __init__(self, state: ControlState, deployer: Deployer, watch: AlarmWatch) -> None:
        self._state = state
        self._deployer = deployer
        self._watch = watch

    async def run(self, endpoint_name: str, spec: RampSpec) -> None:
        """The A/B ramp of a `splitserve:ramp` tag (this module): the variant's share
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
                fired = await self._watch.bake(spec.wait_seconds, spec.alarms)
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
