"""The load script's reporting (benches/load.py): medians over repeats, the issue's targets, the
Markdown and JSON it writes, on made-up runs (the runs themselves need wrk, oha, nginx and
HAProxy: `make bench-load`); and the instruction counter's arguments
(benches/gateway_instructions.py, whose runs need valgrind)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benches import gateway_instructions
from benches.load import Report, Run, latency_split, summarise, targets, write_results
from benches.load_tools import LoadResult


def result(rps: float, *, p50_us: float = 1000.0, gateway_us: float = 100.0) -> LoadResult:
    """A 10-second run at `rps` requests/s."""
    made = LoadResult(
        requests=int(rps * 10),
        seconds=10.0,
        errors=0,
        latency_us={"p50": p50_us, "p90": 2 * p50_us, "p99": 3 * p50_us, "p99.9": 4 * p50_us},
    )
    made.cpu_us_per_request = {"gateway": gateway_us, "load": 10.0}
    return made


def wrk(scenario: str, gateway: str, connections: int, rps: float, **kwargs: float) -> Run:
    return Run(scenario, gateway, connections, 0, "wrk", False, None, result(rps, **kwargs))


def oha(scenario: str, gateway: str, p50_us: float) -> Run:
    return Run(scenario, gateway, 1, 0, "oha", False, None, result(100.0, p50_us=p50_us))


def checks_by_name(runs: list[Run]) -> dict[str, dict[str, object]]:
    return {check["target"]: check for check in targets(summarise(runs), {})}


def test_medians_are_taken_over_the_repeats() -> None:
    runs = [
        Run("G", "splitserve", 16, repeat, "wrk", False, None, result(rps, gateway_us=cpu))
        for repeat, (rps, cpu) in enumerate([(1000, 50), (3000, 70), (2000, 90)])
    ]
    (row,) = summarise(runs)
    assert row["repeats"] == 3
    assert row["requests_per_second"] == 2000
    assert row["cpu_us_per_request"]["gateway"] == 70


def open_loop(gateway: str, p99_us: float) -> Run:
    made = result(500.0)
    made.latency_us["p99"] = p99_us
    return Run("X", gateway, 64, 0, "oha", False, 500.0, made)


def test_the_targets_are_computed_from_one_runs_rows() -> None:
    runs = [
        wrk("G", "splitserve", 16, 5000, gateway_us=52),
        wrk("G", "plain", 16, 2000),
        wrk("G", "aiohttp-bare", 16, 9000, gateway_us=40),
        wrk("X", "splitserve", 64, 1900),
        wrk("X", "haproxy", 64, 2000),
        wrk("B", "splitserve", 64, 3000),
        wrk("B", "haproxy", 64, 5000),
        oha("X", "direct", 700),
        oha("X", "splitserve", 1000),
        oha("X", "haproxy", 900),
        open_loop("splitserve", 15_000),
        open_loop("haproxy", 10_000),
    ]
    checks = checks_by_name(runs)
    over_floor = "G c=16: splitserve CPU per request / aiohttp-bare's"
    assert checks[over_floor]["value"] == 1.3
    assert checks[over_floor]["met"] is True  # 52 / 40 <= 1.35
    assert checks["G c=16: splitserve / plain aiohttp requests/s"]["value"] == 2.5
    assert checks["G c=16: splitserve / plain aiohttp requests/s"]["met"] is True
    assert checks["X c=64: splitserve / HAProxy requests/s"]["value"] == 0.95
    assert checks["X c=64: splitserve / HAProxy requests/s"]["met"] is True  # the bound itself
    added = "X c=1: p50 splitserve adds over the worker alone, less what HAProxy adds"
    assert checks[added]["value"] == 0.1  # 0.3 ms against HAProxy's 0.2
    assert checks[added]["met"] is False
    assert checks["X open loop: splitserve p99 / HAProxy's"]["value"] == 1.5
    assert checks["X open loop: splitserve p99 / HAProxy's"]["met"] is True
    assert checks["B c=64: splitserve batching on / off requests/s"]["value"] == 1.579  # rounded
    assert checks["B c=64: splitserve / HAProxy requests/s"]["met"] is False  # 0.6 < 0.75
    # Nothing measured, nothing claimed: no G c=64 row, no check for it.
    assert not any(name.startswith("G c=64") for name in checks)


def test_a_missed_target_says_so() -> None:
    checks = checks_by_name(
        [
            wrk("G", "splitserve", 64, 4000, gateway_us=230),
            wrk("G", "aiohttp-bare", 64, 9000, gateway_us=140),
            wrk("G", "plain", 64, 2000),
        ]
    )
    assert checks["G c=64: splitserve CPU per request / aiohttp-bare's"]["met"] is False
    assert checks["G c=64: splitserve / plain aiohttp requests/s"]["met"] is False  # 2.0 < 2.3


def test_a_run_stopped_early_is_written_and_marked_partial(tmp_path: Path) -> None:
    report = Report("python -m benches.load bench", {}, {}, {})
    report.runs.append(wrk("G", "splitserve", 16, 5000))
    output = tmp_path / "load.json"
    write_results(report, output)
    assert output.with_suffix(".md").read_text().startswith("**Partial run")
    document = json.loads(output.read_text())
    assert document["complete"] is False
    assert document["summary"][0]["requests_per_second"] == 5000

    report.complete = True
    write_results(report, output)
    assert output.with_suffix(".md").read_text().startswith("| scenario |")


def test_the_latency_split_interpolates_inside_buckets_of_the_requests_between_readings() -> None:
    inf = float("inf")
    before = {"model": {0.001: 10.0, 0.002: 10.0, inf: 10.0}, "overhead": {0.001: 5.0, inf: 5.0}}
    after = {"model": {0.001: 60.0, 0.002: 110.0, inf: 110.0}, "overhead": {0.001: 5.0, inf: 5.0}}
    split = latency_split(before, after)
    assert split == {"model": {"p50": 1.0, "p90": 1.8, "p99": 1.98}}  # no overhead recorded


def test_the_instruction_counter_refuses_a_bad_request_count_before_starting_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for bad in ("abc", "0", "-5"):
        with pytest.raises(SystemExit) as exited:
            gateway_instructions.main([bad])
        assert exited.value.code == 2
        assert f"{bad!r} is not a whole number of requests >= 1" in capsys.readouterr().err
