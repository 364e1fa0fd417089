"""Every router error: its class, its place under RouterError, and its message."""

from __future__ import annotations

import math

import pytest

from splitserve._router import (
    InvalidRoutingTableError,
    NoHealthyInstanceError,
    NoRoutableVariantError,
    Router,
    RouterError,
    UnknownInstanceError,
    UnknownVariantError,
    VariantSpec,
)
from splitserve.config import MAX_PRODUCTION_VARIANTS
from tests.support.router import LOR, make_specs


@pytest.mark.parametrize(
    "error",
    [
        InvalidRoutingTableError,
        UnknownVariantError,
        NoHealthyInstanceError,
        NoRoutableVariantError,
        UnknownInstanceError,
    ],
)
def test_every_error_derives_from_router_error(error: type[RouterError]) -> None:
    assert issubclass(error, RouterError)
    assert issubclass(RouterError, Exception)
    assert error.__module__ == "splitserve._router"


def _spec(name: str = "v", weight: float = 1.0, instances: list[str] | None = None) -> VariantSpec:
    return VariantSpec(name, weight, ["i"] if instances is None else instances, LOR)


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([], "the routing table has no production variant"),
        ([_spec("")], "a production variant has an empty name"),
        (
            [_spec("v", instances=["i"]), _spec("v", instances=["j"])],
            "production variant 'v' appears more than once",
        ),
        (
            [_spec(weight=-0.5)],
            "production variant 'v' has weight -0.5; a weight must be a finite number >= 0",
        ),
        (
            [_spec(weight=math.nan)],
            "production variant 'v' has weight NaN; a weight must be a finite number >= 0",
        ),
        (
            [_spec(weight=math.inf)],
            "production variant 'v' has weight inf; a weight must be a finite number >= 0",
        ),
        (
            [_spec("a", 1e308, ["a-0"]), _spec("b", 1e308, ["b-0"])],
            "the sum of the production variants' weights is not a finite number",
        ),
        (
            [_spec(instances=["i", ""])],
            "production variant 'v' lists an instance with an empty name",
        ),
        (
            [_spec("a", instances=["x"]), _spec("b", instances=["x"])],
            "instance 'x' appears more than once in the routing table",
        ),
        ([_spec(instances=["x", "x"])], "instance 'x' appears more than once in the routing table"),
    ],
    ids=[
        "empty",
        "empty-variant-name",
        "duplicate-variant",
        "negative-weight",
        "nan-weight",
        "infinite-weight",
        "weight-sum-overflows",
        "empty-instance-name",
        "instance-in-two-variants",
        "instance-twice-in-one-variant",
    ],
)
def test_invalid_tables_are_refused(variants: list[VariantSpec], message: str) -> None:
    with pytest.raises(InvalidRoutingTableError) as raised:
        Router(variants, salt="s", seed=1, failover=False)
    assert str(raised.value) == f"invalid routing table: {message}"
    router = Router(make_specs([1.0]), salt="s", seed=1, failover=False)
    with pytest.raises(InvalidRoutingTableError):
        router.replace(variants)
    assert router.variants() == make_specs([1.0])


def test_any_number_of_variants_and_all_zero_weights_are_allowed() -> None:
    # How many variants an endpoint may have is the control plane's check (config's
    # MAX_PRODUCTION_VARIANTS, in control/shapes.py); the router keeps no copy of the limit.
    many = Router(
        make_specs([1.0] * (MAX_PRODUCTION_VARIANTS + 2)), salt="s", seed=1, failover=False
    )
    assert len(many.variants()) == MAX_PRODUCTION_VARIANTS + 2
    last = f"v-{MAX_PRODUCTION_VARIANTS + 1}"
    many.set_weights({f"v-{index}": 0.0 for index in range(MAX_PRODUCTION_VARIANTS + 1)})
    assert {many.route(None, None).variant for _ in range(50)} == {last}
    Router(make_specs([0.0, 0.0]), salt="s", seed=1, failover=False)


def test_an_unknown_routing_strategy_is_refused_when_the_spec_is_made() -> None:
    with pytest.raises(InvalidRoutingTableError) as raised:
        VariantSpec("v", 1.0, ["i"], "ROUND_ROBIN")
    assert str(raised.value) == (
        "invalid routing table: unknown routing strategy 'ROUND_ROBIN'; "
        "expected LEAST_OUTSTANDING_REQUESTS or RANDOM"
    )


def test_set_weights_refuses_unknown_variants_and_bad_weights() -> None:
    router = Router(make_specs([1.0, 2.0]), salt="s", seed=1, failover=False)
    with pytest.raises(UnknownVariantError) as raised:
        router.set_weights({"v-0": 5.0, "v-7": 1.0})
    assert str(raised.value) == (
        "production variant 'v-7' does not exist; the endpoint's variants are 'v-0', 'v-1'"
    )
    with pytest.raises(InvalidRoutingTableError, match="'v-1' has weight -1"):
        router.set_weights({"v-1": -1.0})
    assert router.weights() == {"v-0": 1.0, "v-1": 2.0}


def test_no_routable_variant_message() -> None:
    router = Router(make_specs([0.0, 0.0]), salt="s", seed=1, failover=False)
    with pytest.raises(NoRoutableVariantError) as raised:
        router.route()
    assert str(raised.value) == (
        "every production variant ('v-0', 'v-1') has weight 0, so a request must name its "
        "TargetVariant"
    )


def test_unknown_instances_are_refused() -> None:
    router = Router(make_specs([1.0]), salt="s", seed=1, failover=False)
    for call in (
        lambda: router.set_healthy("nope", False),
        lambda: router.in_flight("nope"),
    ):
        with pytest.raises(UnknownInstanceError) as raised:
            call()
        assert str(raised.value) == "instance 'nope' is not in the routing table"


def test_healthy_instances_of_an_unknown_variant() -> None:
    router = Router(make_specs([1.0]), salt="s", seed=1, failover=False)
    with pytest.raises(UnknownVariantError, match="'missing'"):
        router.healthy_instances("missing")


def test_bad_argument_types_raise_type_errors() -> None:
    with pytest.raises(TypeError):
        VariantSpec("v", 1.0, "not-a-list", LOR)
    with pytest.raises(TypeError):
        Router(make_specs([1.0]), salt="s")  # type: ignore[call-arg]
    with pytest.raises(OverflowError):
        Router(make_specs([1.0]), salt="s", seed=-1, failover=False)
    router = Router(make_specs([1.0]), salt="s", seed=1, failover=False)
    with pytest.raises(TypeError):
        router.set_weights([("v-0", 1.0)])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        router.release("v-0-0")  # type: ignore[arg-type]  # a name is not a handle
