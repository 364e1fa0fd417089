"""Variant picks: the weighted split follows the weights, a target wins whatever its weight, and
sticky assignment is deterministic per salt, proportional to the weights, and monotone when one
variant's weight grows (every key that moves, moves into the grown variant)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from splitserve._router import (
    Instance,
    NoHealthyInstanceError,
    NoRoutableVariantError,
    Route,
    Router,
    UnknownVariantError,
    VariantSpec,
)
from tests.support.router import SIGNIFICANCE, make_specs, names


def count_variants(router: Router, picks: int) -> Counter[str]:
    """How often each variant is picked in `picks` untargeted route+release calls."""
    counts: Counter[str] = Counter()
    for _ in range(picks):
        route = router.route()
        router.release(route.instance)
        counts[route.variant] += 1
    return counts


def sticky_assignment(router: Router, keys: int) -> list[str]:
    """The variant of each of the keys user-0 ... user-{keys-1}, released again."""
    variants = []
    for index in range(keys):
        route = router.route(key=f"user-{index}")
        router.release(route.instance)
        variants.append(route.variant)
    return variants


# --- weighted and targeted --------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights",
    [[1.0, 1.0], [1.0, 3.0, 6.0], [0.5, 0.0, 2.5, 7.0], [float(w) for w in range(1, 11)]],
    ids=["even", "10-30-60", "with-zero", "ten"],
)
def test_split_passes_a_chi_square_test(weights: list[float]) -> None:
    router = Router(make_specs(weights), salt="split", seed=20240601, failover=False)
    picks = 50_000
    counts = count_variants(router, picks)

    total = sum(weights)
    positive = [(f"v-{index}", w) for index, w in enumerate(weights) if w > 0]
    zero = [f"v-{index}" for index, w in enumerate(weights) if w == 0]
    assert all(counts[name] == 0 for name in zero)
    observed = [counts[name] for name, _ in positive]
    expected = [picks * w / total for _, w in positive]
    assert chisquare(observed, expected).pvalue > SIGNIFICANCE


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(
        st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1e6)), min_size=1, max_size=10
    ),
    seed=st.integers(min_value=0, max_value=2**64 - 1),
)
def test_any_valid_weights_give_only_positive_weight_variants(
    weights: list[float], seed: int
) -> None:
    router = Router(make_specs(weights), salt="any", seed=seed, failover=False)
    allowed = {f"v-{index}" for index, weight in enumerate(weights) if weight > 0}
    if not allowed:
        with pytest.raises(NoRoutableVariantError):
            router.route()
        return
    assert set(count_variants(router, 200)) <= allowed


def test_the_same_seed_repeats_the_picks() -> None:
    first = Router(make_specs([1.0, 2.0, 3.0]), salt="a", seed=5, failover=False)
    second = Router(make_specs([1.0, 2.0, 3.0]), salt="b", seed=5, failover=False)
    assert [names(first.route()) for _ in range(500)] == [names(second.route()) for _ in range(500)]


def test_target_variant_wins_whatever_its_weight() -> None:
    router = Router(make_specs([0.0, 1.0]), salt="t", seed=1, failover=False)
    for _ in range(100):
        assert names(router.route("v-0")) == ("v-0", "v-0-0")
        assert names(router.route(target_variant="v-1")) == ("v-1", "v-1-0")
    assert router.in_flight("v-0-0") == 100


def test_target_beats_a_sticky_key() -> None:
    router = Router(make_specs([1.0, 1.0]), salt="t", seed=1, failover=False)
    sticky_variant = router.route(key="user-7").variant
    other = "v-1" if sticky_variant == "v-0" else "v-0"
    assert router.route(target_variant=other, key="user-7").variant == other


def test_all_weights_zero_allows_only_targeted_picks() -> None:
    router = Router(make_specs([0.0, 0.0]), salt="z", seed=1, failover=False)
    with pytest.raises(NoRoutableVariantError, match="TargetVariant"):
        router.route()
    with pytest.raises(NoRoutableVariantError, match="'v-0', 'v-1'"):
        router.route(key="user-1")
    assert names(router.route("v-1")) == ("v-1", "v-1-0")


def test_an_unknown_target_names_it_and_the_variants() -> None:
    router = Router(make_specs([1.0, 1.0]), salt="u", seed=1, failover=False)
    with pytest.raises(UnknownVariantError) as raised:
        router.route("v-9")
    assert str(raised.value) == (
        "production variant 'v-9' does not exist; the endpoint's variants are 'v-0', 'v-1'"
    )


def test_route_returns_what_the_request_needs() -> None:
    router = Router(make_specs([1.0]), salt="r", seed=None, failover=False)
    route = router.route()
    assert type(route) is Route
    assert type(route.variant) is str
    assert type(route.instance) is Instance
    assert (route.instance.variant, route.instance.name) == ("v-0", "v-0-0")
    assert (route.variant, route.healthy_instances, route.failed_over) == ("v-0", 1, False)
    # One Instance object per instance and table: every pick of it hands back the same one.
    assert router.route().instance is route.instance
    assert repr(route) == (
        "Route(variant='v-0', instance='v-0-0', healthy_instances=1, failed_over=False)"
    )


# --- sticky -----------------------------------------------------------------------------------

KEYS = 2_000


def test_routers_with_one_salt_assign_keys_alike() -> None:
    specs = make_specs([1.0, 2.0, 3.0])
    first = Router(specs, salt="endpoint-a", seed=1, failover=False)
    second = Router(specs, salt="endpoint-a", seed=2, failover=False)
    assert sticky_assignment(first, KEYS) == sticky_assignment(second, KEYS)
    assert sticky_assignment(first, KEYS) == sticky_assignment(first, KEYS)


def test_a_different_salt_gives_a_different_assignment() -> None:
    specs = make_specs([1.0, 1.0, 1.0])
    first = sticky_assignment(Router(specs, salt="endpoint-a", seed=1, failover=False), KEYS)
    second = sticky_assignment(Router(specs, salt="endpoint-b", seed=1, failover=False), KEYS)
    differing = sum(a != b for a, b in zip(first, second, strict=True))
    # Independent assignments over three equal variants differ for about 2/3 of the keys.
    assert differing > KEYS / 2


def test_sticky_shares_match_the_weights() -> None:
    weights = [1.0, 3.0, 6.0]
    keys = 30_000
    counts = Counter(
        sticky_assignment(Router(make_specs(weights), salt="s", seed=1, failover=False), keys)
    )
    observed = [counts[f"v-{index}"] for index in range(len(weights))]
    expected = [keys * weight / sum(weights) for weight in weights]
    assert chisquare(observed, expected).pvalue > SIGNIFICANCE


@settings(max_examples=40, deadline=None)
@given(
    weights=st.lists(st.floats(min_value=0.01, max_value=100.0), min_size=2, max_size=10),
    grown=st.integers(min_value=0, max_value=9),
    factor=st.floats(min_value=1.01, max_value=20.0),
    salt=st.text(max_size=8),
)
def test_growing_one_weight_only_moves_keys_into_it(
    weights: list[float], grown: int, factor: float, salt: str
) -> None:
    grown %= len(weights)
    router = Router(make_specs(weights), salt=salt, seed=1, failover=False)
    before = sticky_assignment(router, 500)
    router.set_weights({f"v-{grown}": weights[grown] * factor})
    after = sticky_assignment(router, 500)
    moved = [now for was, now in zip(before, after, strict=True) if was != now]
    assert all(now == f"v-{grown}" for now in moved)


def test_a_canary_raised_from_10_to_20_percent_keeps_its_users() -> None:
    router = Router(make_specs([1.0, 4.5, 4.5]), salt="canary", seed=1, failover=False)
    before = sticky_assignment(router, 10_000)
    router.set_weights({"v-0": 2.25})
    after = sticky_assignment(router, 10_000)
    assert all(now == "v-0" for was, now in zip(before, after, strict=True) if was == "v-0")
    assert all(now in (was, "v-0") for was, now in zip(before, after, strict=True))
    # Shares went from 10% to 20%: about 1/9 of the others' keys move into the canary.
    assert 0.09 < sum(now == "v-0" for now in after) / 10_000 - 0.1 < 0.11


def test_adding_a_variant_only_moves_keys_into_it() -> None:
    router = Router(make_specs([1.0, 1.0]), salt="grow", seed=1, failover=False)
    before = sticky_assignment(router, KEYS)
    router.replace([*make_specs([1.0, 1.0]), VariantSpec("new", 1.0, ["new-0"], "RANDOM")])
    after = sticky_assignment(router, KEYS)
    assert all(now in (was, "new") for was, now in zip(before, after, strict=True))


def test_the_assignment_ignores_the_variants_order() -> None:
    specs = make_specs([1.0, 2.0, 3.0])
    router = Router(specs, salt="order", seed=1, failover=False)
    before = sticky_assignment(router, KEYS)
    router.replace(list(reversed(specs)))
    assert sticky_assignment(router, KEYS) == before


# --- failover ---------------------------------------------------------------------------------


def _failover_router(seed: int, *, failover: bool = True) -> Router:
    """v-0 (weight 2, two instances), v-1 (weight 1, unhealthy), v-2 (weight 1), v-3 (weight 0)."""
    router = Router(
        make_specs([2.0, 1.0, 1.0, 0.0], instances=2), salt="f", seed=seed, failover=failover
    )
    router.set_healthy("v-1-0", False)
    router.set_healthy("v-1-1", False)
    return router


def test_failover_redraws_by_weight_among_variants_with_a_healthy_instance() -> None:
    router = _failover_router(seed=17)
    assert router.failover
    served: Counter[str] = Counter()
    failed_over: Counter[str] = Counter()
    for _ in range(8_000):
        route = router.route()
        router.release(route.instance)
        served[route.variant] += 1
        if route.failed_over:
            failed_over[route.variant] += 1
    assert set(served) == {"v-0", "v-2"}  # never v-1 (no healthy instance) nor v-3 (weight 0)
    # v-1 is drawn a quarter of the time; those requests split 2:1 between v-0 and v-2.
    total = sum(failed_over.values())
    assert chisquare([total, 8_000 - total], [2_000, 6_000]).pvalue > SIGNIFICANCE
    assert (
        chisquare([failed_over["v-0"], failed_over["v-2"]], [total * 2 / 3, total / 3]).pvalue
        > SIGNIFICANCE
    )


def test_failover_is_reproducible_with_the_routers_seed() -> None:
    def outcomes(seed: int) -> list[tuple[str, bool]]:
        router = _failover_router(seed)
        return [
            (route.variant, route.failed_over) for route in (router.route() for _ in range(300))
        ]

    assert outcomes(5) == outcomes(5)
    assert outcomes(5) != outcomes(6)


def test_targeted_requests_never_fail_over() -> None:
    router = _failover_router(seed=1)
    with pytest.raises(NoHealthyInstanceError, match="'v-1'"):
        router.route("v-1")


def test_without_failover_the_drawn_variant_is_an_error() -> None:
    router = _failover_router(seed=1, failover=False)
    assert not router.failover

    def route_until_an_error() -> None:
        for _ in range(100):
            router.release(router.route().instance)

    with pytest.raises(NoHealthyInstanceError, match="'v-1'"):
        route_until_an_error()


def test_routes_are_made_once_per_instance_and_healthy_count() -> None:
    """A pick returns a Route made with the table (no allocation per pick), except after failover,
    so a shared Route never says failed_over for a pick that did not fail over, nor the reverse."""
    router = _failover_router(seed=5)
    plain = [router.route(target_variant="v-2") for _ in range(8)]
    by_instance = {route.instance.name: route for route in plain}
    assert set(by_instance) == {"v-2-0", "v-2-1"}
    assert all(route is by_instance[route.instance.name] for route in plain)
    assert {(route.healthy_instances, route.failed_over) for route in plain} == {(2, False)}
    router.set_healthy("v-2-0", False)
    one_left = router.route(target_variant="v-2")
    assert (one_left.instance.name, one_left.healthy_instances) == ("v-2-1", 1)
    assert one_left is not by_instance["v-2-1"]
    assert one_left.instance is by_instance["v-2-1"].instance
    failed_over = [route for route in (router.route() for _ in range(200)) if route.failed_over]
    assert failed_over
    assert all(route.variant in {"v-0", "v-2"} for route in failed_over)
    assert all(route is not router.route(target_variant=route.variant) for route in failed_over)
