"""How a deployed variant's record changes: launched, settled, restored after a restart, or given
new Desired values. Pure functions of the record (and the time), used by the lifecycle."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from splitserve.control.documents import optional_float, optional_int
from splitserve.control.models import DeployedVariant, VariantStatusEntry


def launching(
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


def settled(variant: DeployedVariant, *, deployed_time: float | None = None) -> DeployedVariant:
    """A variant whose change is done: Current = Desired, no VariantStatus."""
    return replace(
        variant,
        current_weight=variant.desired_weight,
        current_instance_count=variant.desired_instance_count,
        deployed_time=deployed_time if deployed_time is not None else variant.deployed_time,
        status=None,
    )


def restored(variant: DeployedVariant, *, use_current: bool) -> DeployedVariant:
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


def desired(
    variant: DeployedVariant, change: Mapping[str, object] | None, now: float
) -> DeployedVariant:
    """The variant with the Desired values of one DesiredWeightAndCapacity applied."""
    if change is None:
        return variant
    weight = optional_float(change.get("DesiredWeight"))
    count = optional_int(change.get("DesiredInstanceCount"))
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


def weight_split(
    variants: tuple[DeployedVariant, ...], *, current: bool = False
) -> dict[str, float]:
    """The weight history's entry for `variants`: the production variants' Desired (or Current)
    weights. Shadows take no share of the callers' traffic, so the split `splitserve evaluate`
    checks leaves them out."""
    return {
        variant.variant_name: variant.current_weight if current else variant.desired_weight
        for variant in variants
        if not variant.shadow
    }
