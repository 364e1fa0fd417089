"""The per-minute store behind `splitserve stats`: bucketing, retention, percentiles, windows, and
the report it builds (metrics/report.py) as the JSON the stats route sends."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest

from splitserve.config import StatsSettings
from splitserve.errors import ValidationException
from splitserve.metrics.minutes import (
    LATENCY_BUCKETS,
    LATENCY_BUCKETS_PER_OCTAVE,
    LATENCY_LOWEST_SECONDS,
    MinuteStore,
    VariantMinutes,
    latency_bucket,
    latency_percentiles,
)
from splitserve.metrics.report import StatsReport
from tests.support.clock import NOON, FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_buckets_are_log_spaced_and_clamped() -> None:
    assert latency_bucket(0.0) == 0
    assert latency_bucket(LATENCY_LOWEST_SECONDS / 2) == 0
    assert latency_bucket(1e9) == LATENCY_BUCKETS - 1
    # One octave up is PER_OCTAVE buckets up.
    assert latency_bucket(0.004) - latency_bucket(0.002) == LATENCY_BUCKETS_PER_OCTAVE
    indices = [latency_bucket(1e-5 * 1.01**step) for step in range(2000)]
    assert indices == sorted(indices)


def test_percentiles_are_within_a_bucket_of_the_truth() -> None:
    rng = random.Random(3)
    samples = [rng.lognormvariate(math.log(0.004), 0.8) for _ in range(5000)]
    histogram = [0] * LATENCY_BUCKETS
    for sample in samples:
        histogram[latency_bucket(sample)] += 1
    ordered = sorted(samples)
    ratio = 2 ** (1 / LATENCY_BUCKETS_PER_OCTAVE)
    quantiles = (0.5, 0.9, 0.99)
    estimates = latency_percentiles(histogram, quantiles, ordered[0], ordered[-1])
    assert estimates is not None
    for quantile, estimate in zip(quantiles, estimates, strict=True):
        exact = ordered[math.ceil(quantile * len(ordered)) - 1]
        assert exact / ratio <= estimate <= exact * ratio
    assert latency_percentiles([0] * LATENCY_BUCKETS, quantiles, 0.0, 0.0) is None
    # A single latency comes back exactly: min and max clamp the estimate.
    one = [0] * LATENCY_BUCKETS
    one[latency_bucket(0.0123)] = 1
    assert latency_percentiles(one, (0.5, 0.99), 0.0123, 0.0123) == [0.0123, 0.0123]


def test_minutes_bucket_counts_by_wall_clock_minute(clock: FakeClock) -> None:
    ring = VariantMinutes(10, clock)
    for _ in range(3):
        ring.count_invocation()
        ring.observe_latency(0.002)
    ring.count_model_error(400)
    clock.advance(59.9)
    ring.count_invocation()  # still 12:00
    clock.advance(0.2)
    ring.count_invocation()  # 12:01
    ring.count_model_error(503)
    ring.count_model_error(0)
    noon = int(NOON // 60)
    minutes = {m.minute: m for m in ring.minutes(noon - 5, noon + 1)}
    assert set(minutes) == {noon, noon + 1}
    assert minutes[noon].invocations == 4
    assert (minutes[noon].errors_4xx, minutes[noon].errors_5xx) == (1, 0)
    assert minutes[noon].model_errors == 1
    latency = minutes[noon].latency
    assert latency is not None
    assert sum(latency) == 3
    assert minutes[noon + 1].invocations == 1
    assert (minutes[noon + 1].errors_5xx, minutes[noon + 1].model_errors) == (1, 2)
    assert minutes[noon + 1].latency is None


def test_ring_keeps_only_its_newest_minutes(clock: FakeClock) -> None:
    ring = VariantMinutes(5, clock)
    for _ in range(12):
        ring.count_invocation()
        clock.advance(60)
    last = int(clock.now // 60) - 1
    kept = [m.minute for m in ring.minutes(last - 100, last)]
    assert kept == list(range(last - 4, last + 1))
    # A slot the ring came round to again holds only its new minute's counts.
    assert all(m.invocations == 1 for m in ring.minutes(last - 100, last))


def test_ring_memory_is_bounded_by_its_slots(clock: FakeClock) -> None:
    ring = VariantMinutes(1441, clock)
    for _ in range(3000):
        ring.count_invocation()
        ring.observe_latency(0.001)
        clock.advance(60)
    histograms = [h for h in ring._latency if h is not None]
    assert len(ring._latency) == 1441
    assert len(histograms) == 1441
    assert all(len(h) == LATENCY_BUCKETS for h in histograms)


def test_report_rows_are_aligned_periods_with_the_current_one_last(clock: FakeClock) -> None:
    store = MinuteStore(StatsSettings(retention_minutes=60), clock)
    first = store.variant("ep", "Variant1")
    second = store.variant("ep", "Variant2")
    clock.advance(30)  # 12:00:30
    for _ in range(30):
        first.count_invocation()
    for _ in range(10):
        second.count_invocation()
    clock.advance(120)  # 12:02:30
    first.count_invocation()
    clock.advance(60)  # 12:03:30

    # Five minutes asked for; the endpoint exists since 12:00, so four rows (none before it).
    report = store.report("ep", since_seconds=300, period_seconds=60)
    assert report.variants == ("Variant1", "Variant2")
    assert [p.start for p in report.periods] == [NOON + 60 * m for m in range(4)]
    assert report.start == NOON
    assert report.end == NOON + 240
    counts = [{v: c.invocations for v, c in p.variants.items()} for p in report.periods]
    assert counts == [{"Variant1": 30, "Variant2": 10}, {}, {"Variant1": 1}, {}]

    # Five-minute periods: 12:00-12:04 holds everything; since=10m would start at 11:55, before
    # the endpoint existed, so only the period 12:00 is shown.
    coarse = store.report("ep", since_seconds=600, period_seconds=300)
    assert [p.start for p in coarse.periods] == [NOON]
    assert coarse.periods[0].variants["Variant1"].invocations == 31
    # A window shorter than its period still shows the current period.
    assert len(store.report("ep", since_seconds=60, period_seconds=3600).periods) == 1


def test_report_starts_at_the_endpoints_first_minute(clock: FakeClock) -> None:
    store = MinuteStore(StatsSettings(retention_minutes=60), clock)
    store.variant("old", "V").count_invocation()
    clock.advance(30 * 60)  # 12:30
    young = store.variant("young", "V")
    # Just created: one row (the current minute), not 15 empty ones.
    assert [p.start for p in store.report("young", 900, 60).periods] == [NOON + 1800]
    clock.advance(150)  # 12:32:30
    young.count_invocation()
    assert [p.start for p in store.report("young", 900, 60).periods] == [
        NOON + 1800 + 60 * m for m in range(3)
    ]
    # An endpoint older than the window: the whole window, as before.
    old = store.report("old", 900, 60)
    assert len(old.periods) == 15
    assert old.start == NOON + 60 * 18
    # A variant added later does not move the endpoint's start.
    clock.advance(60)
    store.variant("young", "W")
    assert store.report("young", 900, 60).start == NOON + 1800


def test_report_refuses_what_it_cannot_answer(clock: FakeClock) -> None:
    store = MinuteStore(StatsSettings(retention_minutes=60), clock)
    store.variant("ep", "V")
    with pytest.raises(ValidationException, match="has no statistics"):
        store.report("other", 60, 60)
    with pytest.raises(ValidationException, match="since"):
        store.report("ep", 3601, 60)
    with pytest.raises(ValidationException, match="since"):
        store.report("ep", 0, 60)
    with pytest.raises(ValidationException, match="per"):
        store.report("ep", 600, 90)
    with pytest.raises(ValidationException, match="per"):
        store.report("ep", 600, 30)


def test_report_reaches_back_the_whole_retention(clock: FakeClock) -> None:
    store = MinuteStore(StatsSettings(retention_minutes=1440), clock)
    ring = store.variant("ep", "V")
    ring.count_invocation()  # 12:00 today
    clock.advance(1439 * 60)  # 11:59 tomorrow: 12:00 today is the oldest minute of 24 hours
    ring.count_invocation()
    report = store.report("ep", since_seconds=86400, period_seconds=60)
    assert len(report.periods) == 1440
    assert sum(p.variants["V"].invocations for p in report.periods if "V" in p.variants) == 2
    clock.advance(60)
    report = store.report("ep", since_seconds=86400, period_seconds=60)
    assert sum(p.variants["V"].invocations for p in report.periods if "V" in p.variants) == 1


def test_report_latency_and_errors_per_period(clock: FakeClock) -> None:
    store = MinuteStore(StatsSettings(retention_minutes=60), clock)
    ring = store.variant("ep", "V")
    for index in range(100):
        ring.count_invocation()
        ring.observe_latency(0.010 if index < 98 else 0.200)
    ring.count_model_error(404)
    cell = store.report("ep", 60, 60).periods[-1].variants["V"]
    assert (cell.invocations, cell.errors_4xx, cell.errors_5xx, cell.model_errors) == (100, 1, 0, 1)
    assert cell.latency_p50_seconds is not None
    assert cell.latency_p99_seconds is not None
    assert 0.009 <= cell.latency_p50_seconds <= 0.011
    assert 0.18 <= cell.latency_p99_seconds <= 0.2


def test_retired_variants_stay_while_they_have_data_then_go(clock: FakeClock) -> None:
    store = MinuteStore(StatsSettings(retention_minutes=10), clock)
    old = store.variant("ep", "Blue")
    idle = store.variant("ep", "Idle")
    old.count_invocation()
    store.variant("ep", "Green")
    store.retire("ep", "Blue")
    store.retire("ep", "Idle")
    assert store.report("ep", 600, 60).variants == ("Blue", "Green")
    clock.advance(11 * 60)
    store.variant("ep", "Green")  # a deployment prunes what the retention no longer shows
    assert store.report("ep", 600, 60).variants == ("Green",)
    assert idle is not store.variant("ep", "Idle")
    # A variant deployed again keeps its history.
    green = store.variant("ep", "Green")
    green.count_invocation()
    store.retire("ep", "Green")
    assert store.variant("ep", "Green") is green
    store.forget("ep")
    with pytest.raises(ValidationException):
        store.report("ep", 60, 60)


def test_report_json_round_trip(clock: FakeClock) -> None:
    store = MinuteStore(StatsSettings(retention_minutes=60), clock)
    ring = store.variant("ep", "V")
    ring.count_invocation()
    ring.observe_latency(0.003)
    report = store.report("ep", 180, 60)
    data = json.loads(json.dumps(report.to_json()))
    assert data["Periods"][-1]["Variants"]["V"] == {
        "Invocations": 1,
        "Invocation4XXErrors": 0,
        "Invocation5XXErrors": 0,
        "InvocationModelErrors": 0,
        "ModelLatencyP50Seconds": 0.003,
        "ModelLatencyP99Seconds": 0.003,
    }
    assert StatsReport.from_json(data) == report


def test_report_adds_the_other_replicas_minutes_to_its_own(clock: FakeClock) -> None:
    # This replica served Variant1 at 12:00 and 12:01; another replica stored minutes of
    # Variant1 (12:01), of Variant2 that only it served (12:01), and of 11:00, before the window.
    store = MinuteStore(StatsSettings(retention_minutes=120), clock)
    own = store.variant("ep", "Variant1")
    for _ in range(3):
        own.count_invocation()
        own.observe_latency(0.010)
    clock.advance(60)
    own.count_invocation()
    own.count_model_error(503)
    clock.advance(60)  # 12:02
    theirs = VariantMinutes(120, FakeClock(NOON + 60))
    for _ in range(5):
        theirs.count_invocation()
        theirs.observe_latency(0.040)
    theirs.count_model_error(404)
    noon_minute = int(NOON // 60)
    others = {
        "Variant1": [*theirs.minutes(noon_minute + 1, noon_minute + 1)],
        "Variant2": [*theirs.minutes(noon_minute + 1, noon_minute + 1)],
        "Variant3": [
            replace(next(theirs.minutes(noon_minute + 1, noon_minute + 1)), minute=noon_minute - 60)
        ],
    }

    report = store.report("ep", 600, 60, others)

    # Variant3's only minute is before the window: not a column, but the endpoint existed then,
    # so the report has the whole ten minutes asked for (11:53 to 12:02).
    assert report.variants == ("Variant1", "Variant2")
    assert report.start == NOON - 7 * 60
    cells = [dict(period.variants) for period in report.periods]
    assert [{name: cell.invocations for name, cell in row.items()} for row in cells] == [
        *([{}] * 7), {"Variant1": 3}, {"Variant1": 6, "Variant2": 5}, {},
    ]  # fmt: skip
    cells = cells[7:]
    summed = cells[1]["Variant1"]
    assert (summed.errors_4xx, summed.errors_5xx, summed.model_errors) == (1, 1, 2)
    # Percentiles over both replicas' latencies: 5 of the 5 are 40 ms (the own minute had none).
    assert summed.latency_p50_seconds == pytest.approx(0.040, rel=0.1)
    assert cells[0]["Variant1"].latency_p50_seconds == pytest.approx(0.010, rel=0.1)


def test_report_of_an_endpoint_only_other_replicas_served(clock: FakeClock) -> None:
    store = MinuteStore(StatsSettings(retention_minutes=60), clock)
    theirs = VariantMinutes(60, clock)
    theirs.count_invocation()
    minute = int(NOON // 60)
    report = store.report("ep", 120, 60, {"A": list(theirs.minutes(minute, minute))})
    assert report.variants == ("A",)
    assert [period.variants["A"].invocations for period in report.periods] == [1]
    with pytest.raises(ValidationException, match="has no statistics"):
        store.report("ep", 120, 60, {"A": []})


def test_window_is_checked_and_covers_the_reports_minutes(clock: FakeClock) -> None:
    store = MinuteStore(StatsSettings(retention_minutes=60), clock)
    clock.advance(150)  # 12:02:30
    minute = int(NOON // 60)
    assert store.window(120, 60) == (minute + 1, minute + 2)
    assert store.window(600, 300) == (minute - 5, minute + 2)
    with pytest.raises(ValidationException, match="retention"):
        store.window(3601, 60)
    with pytest.raises(ValidationException, match="whole number of minutes"):
        store.window(600, 90)


def test_observe_answer_records_what_latency_and_overhead_record_apart(clock: FakeClock) -> None:
    apart = VariantMinutes(3, clock)
    together = VariantMinutes(3, clock)
    for model, overhead in ((0.004, 0.0001), (0.001, 0.0003), (0.009, 0.00005), (0.002, 0.0002)):
        apart.count_invocation()
        apart.observe_latency(model)
        apart.observe_overhead(overhead)
        together.count_invocation()
        together.observe_answer(model, overhead)
    minute = apart.newest_minute
    (recorded,) = together.minutes(minute, minute)
    assert list(apart.minutes(minute, minute)) == [recorded]
    assert (recorded.latency_min, recorded.latency_max) == (0.001, 0.009)
    assert (recorded.overhead_min, recorded.overhead_max) == (0.00005, 0.0003)
    assert recorded.overhead is not None
    assert sum(recorded.overhead) == 4
