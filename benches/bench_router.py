"""Router pick benchmarks: `Router.route()` against pure-Python weighted choices.

Every benchmark is in the group "router - pick", so the table `make bench` prints sets the Rust
router next to the references it must beat: `random.choices`, `bisect` over precomputed cumulative
weights with `random.random()`, and `numpy.random.Generator.choice`. Each runs for 2 and 10
production variants (10 is the API's maximum). In `make test` each runs once, as a smoke test.

Each benchmarked function makes CALLS_PER_ROUND calls in a plain loop, so a time in the table is
for CALLS_PER_ROUND calls: divide by it for one call. A single call would be timed through
pytest-benchmark's `function(*args, **kwargs)`, which costs about half as much as `route()` itself
and would hide the difference being measured; the loop costs what a caller's own call site costs.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from splitserve._router import Route, Router, VariantSpec

VARIANT_COUNTS = [2, 10]
INSTANCES_PER_VARIANT = 2
CALLS_PER_ROUND = 100
STICKY_KEY = "user-1234567"

# Rounds of at least 100 us (a perf_counter() call costs ~100 ns on a VM); warm-up and no GC steady
# the medians on a shared host.
pytestmark = pytest.mark.benchmark(
    group="router - pick", min_time=0.0001, warmup=True, disable_gc=True
)


@pytest.fixture(params=VARIANT_COUNTS, ids=lambda count: f"{count}-variants")
def variant_specs(request: pytest.FixtureRequest) -> list[VariantSpec]:
    """Variants with unequal weights 1..n, each with two instances picked by least load."""
    count: int = request.param
    return [
        VariantSpec(
            f"variant-{index}",
            float(index + 1),
            [f"variant-{index}-instance-{slot}" for slot in range(INSTANCES_PER_VARIANT)],
            "LEAST_OUTSTANDING_REQUESTS",
        )
        for index in range(count)
    ]


@pytest.fixture
def router(variant_specs: list[VariantSpec]) -> Router:
    """A seeded router over `variant_specs`."""
    return Router(variant_specs, salt="bench", seed=1, failover=False)


def _names(specs: list[VariantSpec]) -> list[str]:
    return [spec.name for spec in specs]


def _check(variant: object, specs: list[VariantSpec]) -> None:
    """The last pick of the benchmark names a configured variant."""
    assert variant in _names(specs)


def test_router_route_untargeted(
    benchmark: BenchmarkFixture, router: Router, variant_specs: list[VariantSpec]
) -> None:
    """Router.route(): weighted variant, least-loaded instance (the in-flight counts only grow)."""
    route = router.route

    def calls() -> Route:
        for _ in itertools.repeat(None, CALLS_PER_ROUND - 1):
            route()
        return route()

    _check(benchmark(calls).variant, variant_specs)


def test_router_route_sticky(
    benchmark: BenchmarkFixture, router: Router, variant_specs: list[VariantSpec]
) -> None:
    """Router.route(key=...): rendezvous-hashed variant for a user id, then an instance."""
    route = router.route

    def calls() -> Route:
        for _ in itertools.repeat(None, CALLS_PER_ROUND - 1):
            route(key=STICKY_KEY)
        return route(key=STICKY_KEY)

    _check(benchmark(calls).variant, variant_specs)


def test_router_route_and_release(
    benchmark: BenchmarkFixture, router: Router, variant_specs: list[VariantSpec]
) -> None:
    """Router.route() then Router.release(its instance): what one request costs the gateway."""
    route = router.route
    release = router.release

    def calls() -> str:
        variant = ""
        for _ in itertools.repeat(None, CALLS_PER_ROUND):
            picked = route()
            release(picked.instance)
            variant = picked.variant
        return variant

    _check(benchmark(calls), variant_specs)


def test_reference_random_choices(
    benchmark: BenchmarkFixture, variant_specs: list[VariantSpec]
) -> None:
    """Reference: random.choices(names, weights)."""
    names = _names(variant_specs)
    weights = [spec.weight for spec in variant_specs]
    choices = random.choices

    def calls() -> list[str]:
        for _ in itertools.repeat(None, CALLS_PER_ROUND - 1):
            choices(names, weights)
        return choices(names, weights)

    _check(benchmark(calls)[0], variant_specs)


def _bisect_picker(names: list[str], weights: list[float]) -> Callable[[], str]:
    """The fastest pure-Python weighted pick: cumulative weights computed once, and everything the
    pick calls bound in its closure."""
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    uniform = random.random
    find = bisect.bisect

    def pick() -> str:
        return names[find(cumulative, uniform() * total)]

    return pick


def test_reference_bisect_cumulative(
    benchmark: BenchmarkFixture, variant_specs: list[VariantSpec]
) -> None:
    """Reference: bisect over precomputed cumulative weights with random.random()."""
    pick = _bisect_picker(_names(variant_specs), [spec.weight for spec in variant_specs])

    def calls() -> str:
        for _ in itertools.repeat(None, CALLS_PER_ROUND - 1):
            pick()
        return pick()

    _check(benchmark(calls), variant_specs)


def test_reference_numpy_choice(
    benchmark: BenchmarkFixture, variant_specs: list[VariantSpec]
) -> None:
    """Reference: numpy.random.Generator.choice(names, p=probabilities)."""
    names = np.array(_names(variant_specs))
    weights = np.array([spec.weight for spec in variant_specs])
    probabilities = weights / weights.sum()
    choice = np.random.default_rng(1).choice

    def calls() -> str:
        for _ in itertools.repeat(None, CALLS_PER_ROUND - 1):
            choice(names, p=probabilities)
        return str(choice(names, p=probabilities))

    _check(benchmark(calls), variant_specs)
