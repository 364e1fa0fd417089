"""The figures of `serve --processes 2`, end to end: /metrics on either replica is the host's
total, still after one replica is killed with kill -9; `splitserve stats` on either replica sums
both."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.helpers import create_two_variant_endpoint
from tests.e2e.test_replicas import invoked_variants, replicas, wait_for
from tests.support.gateway import Gateway, running_gateway

pytestmark = pytest.mark.e2e


@pytest.fixture
def pair(tmp_path: Path, model_store: Path) -> Iterator[Gateway]:
    """`serve --processes 2` with endpoint `ab` (two variants) InService."""
    with running_gateway(tmp_path / "state", model_store, "--processes", "2") as gateway:
        wait_for(lambda: len(replicas(gateway)) == 2, 30, "two replicas listed")
        create_two_variant_endpoint(gateway.client("sagemaker"), "ab")
        yield gateway


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as answer:
        body: bytes = answer.read()
    return body


def invocations_total(url: str) -> float:
    """splitserve_invocations_total of endpoint `ab`, over its variants, from `url`/metrics."""
    text = get(f"{url}/metrics").decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "splitserve_invocations"
        for sample in family.samples
        if sample.labels.get("endpoint_name") == "ab"
    )


def stats_total(url: str) -> int:
    """The invocations of `ab` over the last 15 minutes, from `url`'s stats route."""
    report = json.loads(get(f"{url}/splitserve/stats/ab"))
    return sum(
        cell["Invocations"] for period in report["Periods"] for cell in period["Variants"].values()
    )


def test_every_replica_shows_the_hosts_totals_and_a_killed_one_keeps_its_counts(
    pair: Gateway,
) -> None:
    follower, controller = sorted(replicas(pair), key=lambda replica: replica.controller)
    assert controller.controller
    assert not follower.controller
    assert sum(invoked_variants(follower.url, 7).values()) == 7
    assert sum(invoked_variants(controller.url, 5).values()) == 5

    assert invocations_total(follower.url) == 12
    assert invocations_total(controller.url) == 12
    # Each replica's minutes reach the store within a flush interval (10 s).
    for replica in (follower, controller):
        wait_for(lambda: stats_total(replica.url) == 12, 30, "stats on a replica summing both")  # noqa: B023 (called at once)

    # kill -9 of the follower (the scrapes above recorded it): the controller's /metrics still
    # counts what the follower served, so the host's counter does not go down.
    os.kill(follower.pid, signal.SIGKILL)
    wait_for(
        lambda: follower.replica_id not in {replica.replica_id for replica in replicas(pair)},
        30,
        "the killed replica gone from the live list",
    )
    assert invocations_total(controller.url) == 12
    assert sum(invoked_variants(controller.url, 3).values()) == 3
    assert invocations_total(controller.url) == 15
