"""Helpers shared by the router tests: routing tables built from a list of weights."""

from __future__ import annotations

from collections.abc import Sequence

from splitserve._router import Route, VariantSpec

LOR = "LEAST_OUTSTANDING_REQUESTS"
RANDOM = "RANDOM"

#: Every statistical test rejects "the router follows its weights" below this p-value. Seeds are
#: fixed, so each test is deterministic; the level only says how surprising a failure would be.
SIGNIFICANCE = 0.001


def names(route: Route) -> tuple[str, str]:
    """The (variant, instance) names of a pick."""
    return route.variant, route.instance.name


def make_specs(
    weights: Sequence[float], *, instances: int = 1, strategy: str = LOR, prefix: str = "v"
) -> list[VariantSpec]:
    """Variants `{prefix}-0`, `{prefix}-1`, ... with `instances` instances `{variant}-{i}` each."""
    return [
        VariantSpec(
            f"{prefix}-{index}",
            weight,
            [f"{prefix}-{index}-{slot}" for slot in range(instances)],
            strategy,
        )
        for index, weight in enumerate(weights)
    ]
