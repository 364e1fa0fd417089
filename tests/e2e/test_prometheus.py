"""A real Prometheus scrapes a gateway with deploy/prometheus.yml; the dashboard's queries work.

Prometheus comes from Debian's `prometheus` package (`make test` installs it: the Makefile's
`.stamps/prometheus` target). The test runs its own server on a free port with its own storage,
never the Debian service.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import splitserve
from tests.e2e.helpers import create_two_variant_endpoint, csv_rows
from tests.support.gateway import Gateway
from tests.support.http import free_port

pytestmark = pytest.mark.e2e

_DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_START_TIMEOUT_SECONDS = 30.0
_SCRAPE_TIMEOUT_SECONDS = 30.0


class Prometheus:
    """A running Prometheus server and its HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        """GET an API path; the decoded JSON `data` of a successful answer."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector `expression` evaluates to now (raises on a parse error)."""
        try:
            data = self.get("/api/v1/query", query=expression)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{expression}: {error.read().decode()}") from error
        assert data["resultType"] == "vector", (expression, data)
        result: list[dict[str, Any]] = data["result"]
        return result


@pytest.fixture
def prometheus(gateway: Gateway, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus with deploy/prometheus.yml, retargeted at `gateway` and scraping every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run `make .stamps/prometheus` (make test does)")
    shipped = (_DEPLOY / "prometheus.yml").read_text()
    config, scrape_intervals = re.subn(r"scrape_interval: 15s", "scrape_interval: 1s", shipped)
    config, targets = re.subn(
        r'"127\.0\.0\.1:8080"', f'"{gateway.url.removeprefix("http://")}"', config
    )
    assert (scrape_intervals, targets) == (1, 1), "deploy/prometheus.yml changed shape"
    (tmp_path / "prometheus.yml").write_text(config)
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"prometheus did not become ready:\n{log_path.read_text()}")
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads((_DEPLOY / "grafana" / "splitserve.json").read_text())
    expressions: list[str] = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        expressions.extend(target["expr"] for target in panel.get("targets", []))
    return expressions


def _indexed(gateway: Gateway) -> int:
    """Answered invocations the feedback index holds (the state's SQLite file)."""
    with contextlib.closing(sqlite3.connect(gateway.state_dir / "state.sqlite3")) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM feedback_index").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


def test_prometheus_counts_what_was_sent_and_the_dashboard_queries_work(
    gateway: Gateway, sagemaker: Any, runtime: Any, prometheus: Prometheus
) -> None:
    create_two_variant_endpoint(sagemaker, "prom")
    body = csv_rows(np.zeros((1, 13), dtype=np.float32))
    with pytest.raises(runtime.exceptions.ValidationError):  # a gateway error, for its panel
        runtime.invoke_endpoint(EndpointName="nope", Body=body, ContentType="text/csv")
    answered: list[str] = []
    for variant, count in (("Variant1", 30), ("Variant2", 10)):
        for _ in range(count):
            response = runtime.invoke_endpoint(
                EndpointName="prom", Body=body, ContentType="text/csv", TargetVariant=variant
            )
            response["Body"].read()
            answered.append(
                response["ResponseMetadata"]["HTTPHeaders"]["x-splitserve-inference-id"]
            )
    # Labels for the live experiment's panels, once the index has the invocations.
    deadline = time.monotonic() + _SCRAPE_TIMEOUT_SECONDS
    while _indexed(gateway) < len(answered) and time.monotonic() < deadline:
        time.sleep(0.2)
    outcome = splitserve.feedback(gateway.url, "prom", [(i, n % 2) for n, i in enumerate(answered)])
    assert outcome["Joined"] == len(answered), outcome
    urllib.request.urlopen(f"{gateway.url}/splitserve/experiments/prom", timeout=10).close()

    expected = {"Variant1": 30.0, "Variant2": 10.0}
    counts: dict[str, float] = {}
    deadline = time.monotonic() + _SCRAPE_TIMEOUT_SECONDS
    while counts != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        counts = {
            series["metric"]["variant_name"]: float(series["value"][1])
            for series in prometheus.query('splitserve_invocations_total{endpoint_name="prom"}')
        }
    assert counts == expected
    # Let a few more scrapes land, so every rate() window holds two samples after the traffic.
    time.sleep(3)

    assert "prom" in prometheus.get(
        "/api/v1/label/endpoint_name/values", **{"match[]": "splitserve_invocations_total"}
    )
    expressions = _dashboard_expressions()
    assert len(expressions) >= 10
    for expression in expressions:
        promql = (
            expression.replace("${endpoint}", "prom")
            .replace("$endpoint", "prom")
            .replace("$__rate_interval", "1m")
        )
        assert "$" not in promql, promql
        assert prometheus.query(promql), f"no data: {promql}"
    # The share of traffic per variant follows what was sent.
    share = prometheus.query(
        'sum by (variant_name) (splitserve_invocations_total{endpoint_name="prom"}) / on() '
        'group_left() sum(splitserve_invocations_total{endpoint_name="prom"})'
    )
    assert {s["metric"]["variant_name"]: float(s["value"][1]) for s in share} == {
        "Variant1": 0.75,
        "Variant2": 0.25,
    }
