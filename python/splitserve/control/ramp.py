"""The A/B ramp, beyond SageMaker: one production variant's share of the requests moved in steps
toward a target by the endpoint's `splitserve:ramp` tag, each step baked while alarms are
watched, and every weight restored when one of them is in ALARM (README, "Deployment
guardrails"; docs/architecture.md, "Deployment guardrails").

The tag's value is `<VariantName> <TargetPercent> <StepPercent> <WaitSeconds> [AlarmName ...]`,
separated by spaces (the characters a tag value may hold): e.g. `Variant2 50 10 300 errors-5xx`
moves Variant2 from its share now to 50 % of the requests, 10 points a step, baking 300 s after
each. The other production variants keep their weights' ratios among themselves. Pure functions
here; `lifecycle.EndpointLifecycle.ramp` runs it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from splitserve.control.models import RAMP_TAG, DeployedVariant, Tags
from splitserve.errors import ValidationException

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
