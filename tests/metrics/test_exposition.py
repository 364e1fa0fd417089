"""The merge of a host's replicas' expositions, called directly: counters and histograms summed,
gauges by their family's rule, label sets on one side only, and peer output that is not the
text format."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from splitserve.metrics.exposition import (
    Family,
    MalformedExposition,
    Merge,
    ReplicaFamilies,
    default_rule,
    merge_families,
    parse_exposition,
    render,
)
from splitserve.metrics.prometheus import (
    FAMILY_MERGE,
    GATEWAY_ERRORS,
    REGISTRY,
    VariantMetrics,
    remove_variant_series,
)

OWN = """\
# HELP requests_total Requests.
# TYPE requests_total counter
requests_total{variant="A"} 3.0
requests_total{variant="B"} 1.0
# HELP requests_created Requests.
# TYPE requests_created gauge
requests_created{variant="A"} 200.0
# HELP latency_seconds Latency.
# TYPE latency_seconds histogram
latency_seconds_bucket{le="0.1",variant="A"} 2.0
latency_seconds_bucket{le="+Inf",variant="A"} 3.0
latency_seconds_count{variant="A"} 3.0
latency_seconds_sum{variant="A"} 0.75
# HELP weight The weight.
# TYPE weight gauge
weight{variant="A"} 0.25
# HELP cpu_percent Instance CPU.
# TYPE cpu_percent gauge
# HELP open_files Files this process has open.
# TYPE open_files gauge
open_files 7.0
"""

PEER = """\
# HELP requests_total Requests.
# TYPE requests_total counter
requests_total{variant="A"} 4.0
requests_total{variant="C"} 9.0
# HELP requests_created Requests.
# TYPE requests_created gauge
requests_created{variant="A"} 100.0
# HELP latency_seconds Latency.
# TYPE latency_seconds histogram
latency_seconds_bucket{le="0.1",variant="A"} 1.0
latency_seconds_bucket{le="+Inf",variant="A"} 1.0
latency_seconds_count{variant="A"} 1.0
latency_seconds_sum{variant="A"} 0.05
# HELP weight The weight.
# TYPE weight gauge
weight{variant="A"} 0.5
weight{variant="B"} 0.75
# HELP cpu_percent Instance CPU.
# TYPE cpu_percent gauge
cpu_percent{instance="i0"} 12.5
# HELP open_files Files this process has open.
# TYPE open_files gauge
open_files 5.0
# HELP only_here_total A family only the peer has.
# TYPE only_here_total counter
only_here_total 2.0
"""

RULES = {"cpu_percent": Merge.CONTROLLER, "open_files": Merge.SUM}


def values(families: list[Family]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels)."""
    return {
        (name, tuple(sorted(labels.items()))): value
        for family in families
        for name, labels, value in family.samples()
    }


def merged(own_controller: bool = False, peer_controller: bool = True) -> list[Family]:
    return merge_families(
        ReplicaFamilies(parse_exposition(OWN), own_controller),
        [ReplicaFamilies(parse_exposition(PEER), peer_controller)],
        RULES,
    )


def test_counters_and_histograms_add_up_per_label_set() -> None:
    found = values(merged())
    assert found[("requests_total", (("variant", "A"),))] == 7.0
    # A label set on one side only is that side's.
    assert found[("requests_total", (("variant", "B"),))] == 1.0
    assert found[("requests_total", (("variant", "C"),))] == 9.0
    assert found[("latency_seconds_bucket", (("le", "0.1"), ("variant", "A")))] == 3.0
    assert found[("latency_seconds_bucket", (("le", "+Inf"), ("variant", "A")))] == 4.0
    assert found[("latency_seconds_count", (("variant", "A"),))] == 4.0
    assert found[("latency_seconds_sum", (("variant", "A"),))] == pytest.approx(0.8)
    assert found[("only_here_total", ())] == 2.0
    # When a series was first created on the host: the earliest.
    assert found[("requests_created", (("variant", "A"),))] == 100.0
    # A gauge its rule says is each process's own share: summed.
    assert found[("open_files", ())] == 12.0


def test_gauges_the_replicas_agree_on_come_from_one_replica() -> None:
    # The controller's value first; a label set only one replica has is that replica's.
    found = values(merged(own_controller=False, peer_controller=True))
    assert found[("weight", (("variant", "A"),))] == 0.5
    assert found[("weight", (("variant", "B"),))] == 0.75
    # No controller answered: this replica's value.
    found = values(merged(own_controller=False, peer_controller=False))
    assert found[("weight", (("variant", "A"),))] == 0.25


def test_instance_gauges_come_only_from_the_controller() -> None:
    assert values(merged(peer_controller=True))[("cpu_percent", (("instance", "i0"),))] == 12.5
    without = values(merged(peer_controller=False))
    assert ("cpu_percent", (("instance", "i0"),)) not in without
    # The family stays, with no series: the host has no controller's instances to show.
    assert "cpu_percent" in {family.name for family in merged(peer_controller=False)}


def test_the_merge_renders_as_prometheus_text_that_parses_back() -> None:
    text = render(merged()).decode()
    assert "# TYPE requests_total counter" in text
    assert 'requests_total{variant="A"} 7.0' in text
    again = {family.name: family for family in text_string_to_metric_families(text)}
    assert again["latency_seconds"].type == "histogram"
    # Families come in this replica's order, then the peer's own.
    names = list(again)
    assert (names[0], names[-1]) == ("requests", "only_here")


def test_a_family_of_another_type_at_a_peer_is_left_out() -> None:
    peer = "# TYPE weight_total counter\nweight_total 100.0\n"
    families = merge_families(
        ReplicaFamilies(parse_exposition(OWN), True),
        [ReplicaFamilies(parse_exposition(peer), False)],
        RULES,
    )
    found = values(families)
    assert ("weight_total", ()) not in found
    assert found[("weight", (("variant", "A"),))] == 0.25


def test_no_peers_gives_this_replicas_own_values() -> None:
    alone = merge_families(ReplicaFamilies(parse_exposition(OWN), True), [], RULES)
    assert values(alone) == values(parse_exposition(OWN))


@pytest.mark.parametrize(
    "text",
    [
        "garbage here\n",
        'requests_total{variant="A"} not-a-number\n',
        "requests_total{variant=A} 1\n",
        "# TYPE x gauge\nx 1\n# TYPE x gauge\nx 2\n",
        "x 1 1700000000\n",
        "# TYPE x nonsense\nx 1\n",
        '# TYPE x gauge\nx{a="1"} 1\nx{a="1"} 2\n',
    ],
)
def test_output_that_is_not_the_text_format_is_refused_by_name(text: str) -> None:
    with pytest.raises(MalformedExposition):
        parse_exposition(text)


def test_every_gauge_of_the_gateway_has_a_stated_rule() -> None:
    gauges = {
        family.name
        for family in REGISTRY.collect()
        if family.type == "gauge" and not family.name.endswith("_created")
    }
    assert gauges
    assert gauges <= set(FAMILY_MERGE)
    assert default_rule(Family("x_total", "counter")) is Merge.SUM
    assert default_rule(Family("x_created", "gauge")) is Merge.EARLIEST
    assert default_rule(Family("x", "gauge")) is Merge.ANY


def test_the_gateways_own_exposition_round_trips_exactly() -> None:
    # Series of every kind the gateway writes, escapes in a label value included.
    metrics = VariantMetrics.resolve("round-trip", "A")
    metrics.invocations.inc(3)
    metrics.model_latency.observe(0.02)
    metrics.errors_4xx.inc()
    GATEWAY_ERRORS.labels('odd "code"\\ with\nnewline').inc()
    try:
        text = generate_latest(REGISTRY).decode()
        families = parse_exposition(text)
        assert render(families).decode() == text
        escaped = next(f for f in families if f.name == "splitserve_gateway_errors_total")
        assert [labels for _, labels, _ in escaped.samples()][-1] == {
            "code": 'odd "code"\\ with\nnewline'
        }
    finally:
        remove_variant_series("round-trip", "A")
        GATEWAY_ERRORS.remove('odd "code"\\ with\nnewline')
