"""Instance choice inside a variant (least outstanding requests, random), in-flight counts, health,
what survives a table change, and thread safety: picks running while the table is replaced see one
whole table, and in-flight counts stay exact under concurrent route/release."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from scipy.stats import chisquare

from splitserve._router import NoHealthyInstanceError, Router, VariantSpec
from tests.support.router import LOR, RANDOM, SIGNIFICANCE, make_specs, names


def test_least_outstanding_requests_picks_the_least_loaded() -> None:
    router = Router(make_specs([1.0], instances=3), salt="lor", seed=1, failover=False)
    first_three = sorted((router.route() for _ in range(3)), key=lambda route: route.instance.name)
    assert [route.instance.name for route in first_three] == ["v-0-0", "v-0-1", "v-0-2"]
    assert all(route.healthy_instances == 3 for route in first_three)
    router.release(first_three[1].instance)
    assert [router.in_flight(f"v-0-{slot}") for slot in range(3)] == [1, 0, 1]
    assert names(router.route()) == ("v-0", "v-0-1")
    router.route()
    router.route()
    router.route()
    assert [router.in_flight(f"v-0-{slot}") for slot in range(3)] == [2, 2, 2]


def test_least_outstanding_requests_spreads_ties() -> None:
    router = Router(make_specs([1.0], instances=4), salt="ties", seed=3, failover=False)
    counts: Counter[str] = Counter()
    for _ in range(8_000):
        route = router.route()
        router.release(route.instance)
        counts[route.instance.name] += 1
    # Always all tied at 0 in flight: uniform over the four.
    assert len(counts) == 4
    assert chisquare(list(counts.values())).pvalue > SIGNIFICANCE


def test_random_spreads_over_healthy_instances_and_ignores_load() -> None:
    router = Router(
        make_specs([1.0], instances=4, strategy=RANDOM), salt="rnd", seed=3, failover=False
    )
    router.set_healthy("v-0-3", False)
    counts = Counter(router.route().instance.name for _ in range(9_000))  # never released
    assert set(counts) == {"v-0-0", "v-0-1", "v-0-2"}
    assert chisquare(list(counts.values())).pvalue > SIGNIFICANCE
    assert sum(router.in_flight(f"v-0-{slot}") for slot in range(4)) == 9_000


@pytest.mark.parametrize("strategy", [LOR, RANDOM])
def test_unhealthy_instances_are_not_picked(strategy: str) -> None:
    router = Router(
        make_specs([1.0], instances=2, strategy=strategy), salt="h", seed=1, failover=False
    )
    router.set_healthy("v-0-0", False)
    assert router.healthy_instances("v-0") == ["v-0-1"]
    assert {router.route().instance.name for _ in range(50)} == {"v-0-1"}
    assert router.route().healthy_instances == 1
    router.set_healthy("v-0-1", False)
    assert router.healthy_instances("v-0") == []
    with pytest.raises(NoHealthyInstanceError, match="'v-0'"):
        router.route()
    router.set_healthy("v-0-0", True)
    assert names(router.route()) == ("v-0", "v-0-0")


def test_a_variant_without_instances_has_no_healthy_instance() -> None:
    router = Router([VariantSpec("empty", 1.0, [], LOR)], salt="e", seed=1, failover=False)
    with pytest.raises(NoHealthyInstanceError) as raised:
        router.route()
    assert str(raised.value) == (
        "production variant 'empty' has no healthy instance to take the request"
    )


def test_release_never_goes_below_zero() -> None:
    router = Router(make_specs([1.0]), salt="r", seed=1, failover=False)
    instance = router.route().instance
    router.release(instance)
    router.release(instance)
    assert router.in_flight("v-0-0") == 0
    router.route()
    assert router.in_flight("v-0-0") == 1


def test_a_handle_releases_after_its_instance_left_the_table() -> None:
    router = Router(make_specs([1.0]), salt="r", seed=1, failover=False)
    instance = router.route().instance
    router.replace([VariantSpec("v-0", 1.0, ["v-0-9"], LOR)])
    router.release(instance)  # no error: the request finishes on the instance it was given
    assert router.in_flight("v-0-9") == 0
    router.replace(make_specs([1.0]))  # back: a new slot, nothing in flight
    assert router.in_flight("v-0-0") == 0


def test_replace_keeps_counts_and_health_of_instances_that_keep_their_name() -> None:
    router = Router(make_specs([1.0], instances=2), salt="keep", seed=1, failover=False)
    for _ in range(4):
        router.route()
    router.set_healthy("v-0-1", False)
    router.replace(
        [
            VariantSpec("v-0", 3.0, ["v-0-1", "v-0-2"], RANDOM),
            VariantSpec("other", 1.0, ["v-0-0"], LOR),
        ]
    )
    assert router.in_flight("v-0-0") == 2
    assert router.in_flight("v-0-1") == 2
    assert router.in_flight("v-0-2") == 0
    assert router.healthy_instances("v-0") == ["v-0-2"]
    assert router.healthy_instances("other") == ["v-0-0"]
    assert router.weights() == {"v-0": 3.0, "other": 1.0}


def test_set_weights_changes_only_the_named_variants() -> None:
    specs = make_specs([1.0, 2.0, 3.0], instances=2, strategy=RANDOM)
    router = Router(specs, salt="w", seed=1, failover=False)
    router.route("v-1")
    router.set_weights({"v-2": 0.0, "v-0": 5.0})
    assert router.weights() == {"v-0": 5.0, "v-1": 2.0, "v-2": 0.0}
    assert router.in_flight("v-1-0") + router.in_flight("v-1-1") == 1
    after = router.variants()
    assert [spec.instances for spec in after] == [spec.instances for spec in specs]
    assert {spec.routing_strategy for spec in after} == {RANDOM}


def test_variants_returns_the_table() -> None:
    specs = make_specs([1.0, 0.0], instances=2)
    router = Router(specs, salt="v", seed=1, failover=False)
    assert router.variants() == specs


def test_variant_spec_exposes_its_fields() -> None:
    spec = VariantSpec("blue", 2, ("blue-0", "blue-1"), "RANDOM")
    assert spec.name == "blue"
    assert spec.weight == 2.0
    assert spec.instances == ["blue-0", "blue-1"]
    assert spec.routing_strategy == "RANDOM"
    assert repr(spec) == (
        "VariantSpec(name='blue', weight=2.0, instances=['blue-0', 'blue-1'], "
        "routing_strategy='RANDOM')"
    )
    assert spec == VariantSpec("blue", 2.0, ["blue-0", "blue-1"], "RANDOM")
    assert spec != VariantSpec("blue", 2.0, ["blue-0"], "RANDOM")
    with pytest.raises(AttributeError):
        spec.weight = 3.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(spec)


# --- threads ----------------------------------------------------------------------------------

THREADS = 4


@pytest.fixture
def frequent_switches() -> Iterator[None]:
    """Switch threads every microsecond so picks and replacements interleave densely."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.usefixtures("frequent_switches")
def test_picks_during_replacements_never_mix_tables() -> None:
    # Table A: variants a-*, instances a-*-*, weights 1,2,3. Table B: b-*, b-*-*, weights 3,2,1,1.
    # A mix would pair an a- variant with a b- instance (or the reverse).
    table_a = make_specs([1.0, 2.0, 3.0], instances=2, prefix="a")
    table_b = make_specs([3.0, 2.0, 1.0, 1.0], instances=3, prefix="b")
    router = Router(table_a, salt="threads", seed=1, failover=False)
    stop = threading.Event()
    seen: list[set[tuple[str, str]]] = [set() for _ in range(THREADS)]
    # Picks from table B per worker; the main thread reads these, never the sets, while workers run.
    picks_from_b = [0] * THREADS
    errors: list[BaseException] = []

    def pick(index: int) -> None:
        try:
            picks = 0
            while not stop.is_set() or picks < 2_000:
                route = router.route(key=f"user-{picks}") if picks % 2 else router.route()
                seen[index].add(names(route))
                picks_from_b[index] += route.variant.startswith("b-")
                # The instance may have been replaced since the pick: its handle still
                # releases its own count, and that is no mix.
                router.release(route.instance)
                picks += 1
        except BaseException as error:  # report it from the main thread
            errors.append(error)

    workers = [threading.Thread(target=pick, args=(index,)) for index in range(THREADS)]
    for worker in workers:
        worker.start()
    # At least 2000 replacements, and on until every worker has picked from table B (bounded).
    deadline = time.monotonic() + 30
    rounds = 0
    while rounds < 2_000 or (0 in picks_from_b and time.monotonic() < deadline):
        router.replace(table_b if rounds % 2 == 0 else table_a)
        rounds += 1
    stop.set()
    for worker in workers:
        worker.join(timeout=60)

    assert not errors
    assert 0 not in picks_from_b
    pairs = set().union(*seen)
    valid = {(spec.name, instance) for spec in table_a + table_b for instance in spec.instances}
    assert pairs <= valid
    assert {variant[0] for variant, _ in pairs} == {"a", "b"}


@pytest.mark.usefixtures("frequent_switches")
def test_in_flight_counts_stay_exact_under_concurrent_route_and_release() -> None:
    router = Router(make_specs([1.0, 1.0], instances=3), salt="counts", seed=1, failover=False)
    picks_per_thread = 5_000

    def route_and_release() -> None:
        for _ in range(picks_per_thread):
            route = router.route()
            router.release(route.instance)

    held = [router.route().instance for _ in range(6)]
    workers = [threading.Thread(target=route_and_release) for _ in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    instances = [f"v-{variant}-{slot}" for variant in range(2) for slot in range(3)]
    assert sum(router.in_flight(instance) for instance in instances) == len(held)
    for instance in held:
        router.release(instance)
    assert all(router.in_flight(instance) == 0 for instance in instances)
