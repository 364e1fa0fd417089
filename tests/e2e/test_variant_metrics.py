"""Per-variant metrics and `splitserve stats` against a real `splitserve serve` driven by boto3."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.e2e.helpers import FAST_WAIT, create_model, create_two_variant_endpoint, csv_rows
from tests.support.gateway import Gateway

pytestmark = pytest.mark.e2e

#: Every metric the gateway exports for a variant; each must exist once the endpoint is InService.
VARIANT_METRICS = (
    "splitserve_invocations_total",
    "splitserve_invocations_per_instance_total",
    "splitserve_invocation_4xx_errors_total",
    "splitserve_invocation_5xx_errors_total",
    "splitserve_invocation_model_errors_total",
    "splitserve_model_latency_seconds_count",
    "splitserve_overhead_latency_seconds_count",
    "splitserve_variant_weight",
    "splitserve_variant_desired_weight",
    "splitserve_variant_instances",
    "splitserve_variant_desired_instances",
)
INSTANCE_METRICS = (
    "splitserve_instance_cpu_utilization_percent",
    "splitserve_instance_memory_bytes",
    "splitserve_instance_restarts_total",
)


def scrape(gateway: Gateway) -> list[Sample]:
    """Every sample GET /metrics serves now."""
    with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The value of the one sample called `name` whose labels include `labels`, or None."""
    found = [
        sample.value
        for sample in samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    assert len(found) <= 1, f"{name} {labels} matches {len(found)} samples"
    return found[0] if found else None


def run_stats(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    """`splitserve stats ARGS --url GATEWAY` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "splitserve.cli", "stats", *args, "--url", gateway.url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def table_column_sums(table: str) -> dict[str, int]:
    """Sum each variant's invocation column of a plain `splitserve stats` table."""
    header, *rows = table.splitlines()[1:]
    names = header.split()[2:]  # after "time (UTC)"
    ends = [header.index(name) + len(name) for name in names]
    starts = [len("2024-05-01 12:00"), *ends[:-1]]  # the time column, then the columns before
    return {
        name: sum(int(row[start:end].strip() or 0) for row in rows)
        for name, start, end in zip(names, starts, ends, strict=True)
    }


def test_counts_errors_gauges_and_stats(gateway: Gateway, sagemaker: Any, runtime: Any) -> None:
    create_two_variant_endpoint(sagemaker, "mx")
    samples = scrape(gateway)
    for variant in ("Variant1", "Variant2"):
        for name in VARIANT_METRICS + INSTANCE_METRICS:
            assert value(samples, name, endpoint_name="mx", variant_name=variant) is not None, name
    assert value(samples, "splitserve_invocations_total", variant_name="Variant1") == 0

    body = csv_rows(np.zeros((1, 13), dtype=np.float32))
    for variant, count in (("Variant1", 12), ("Variant2", 5)):
        for _ in range(count):
            runtime.invoke_endpoint(
                EndpointName="mx", Body=body, ContentType="text/csv", TargetVariant=variant
            )["Body"].read()
    with pytest.raises(runtime.exceptions.ValidationError):
        runtime.invoke_endpoint(EndpointName="nope", Body=body, ContentType="text/csv")
    with pytest.raises(runtime.exceptions.ValidationError):
        runtime.invoke_endpoint(
            EndpointName="mx", Body=body, ContentType="text/csv", TargetVariant="Variant3"
        )
    with pytest.raises(runtime.exceptions.ModelError):  # 3 features where the model wants 13
        runtime.invoke_endpoint(
            EndpointName="mx", Body=b"1,2,3\n", ContentType="text/csv", TargetVariant="Variant1"
        )

    samples = scrape(gateway)
    v1 = {"endpoint_name": "mx", "variant_name": "Variant1"}
    v2 = {"endpoint_name": "mx", "variant_name": "Variant2"}
    assert value(samples, "splitserve_invocations_total", **v1) == 13
    assert value(samples, "splitserve_invocations_total", **v2) == 5
    assert value(samples, "splitserve_invocations_per_instance_total", **v1) == 13
    assert value(samples, "splitserve_invocation_4xx_errors_total", **v1) == 1
    assert value(samples, "splitserve_invocation_5xx_errors_total", **v1) == 0
    assert value(samples, "splitserve_invocation_model_errors_total", **v1) == 1
    assert value(samples, "splitserve_invocation_model_errors_total", **v2) == 0
    assert value(samples, "splitserve_model_latency_seconds_count", **v1) == 13
    assert value(samples, "splitserve_overhead_latency_seconds_count", **v2) == 5
    assert value(samples, "splitserve_gateway_errors_total", code="ValidationError") == 2
    assert value(samples, "splitserve_gateway_errors_total", code="ModelError") is None

    table = run_stats(gateway, "mx", "--since", "5m")
    assert table.returncode == 0, table.stderr
    assert table_column_sums(table.stdout) == {"Variant1": 13, "Variant2": 5}
    as_json = run_stats(gateway, "mx", "--since", "5m", "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    cells = [cell for period in report["Periods"] for cell in period["Variants"].items()]
    assert sum(cell["Invocations"] for name, cell in cells if name == "Variant1") == 13
    assert sum(cell["InvocationModelErrors"] for name, cell in cells if name == "Variant1") == 1
    assert sum(cell["Invocations"] for name, cell in cells if name == "Variant2") == 5
    detailed = run_stats(gateway, "mx", "--since", "5m", "--errors", "--latency")
    assert detailed.returncode == 0, detailed.stderr
    assert "model errors" in detailed.stdout
    assert "p99 ms" in detailed.stdout

    sagemaker.update_endpoint_weights_and_capacities(
        EndpointName="mx",
        DesiredWeightsAndCapacities=[
            {"VariantName": "Variant1", "DesiredWeight": 25, "DesiredInstanceCount": 2},
            {"VariantName": "Variant2", "DesiredWeight": 75},
        ],
    )
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName="mx", WaiterConfig=FAST_WAIT)
    samples = scrape(gateway)
    assert value(samples, "splitserve_variant_weight", **v1) == 25
    assert value(samples, "splitserve_variant_desired_weight", **v1) == 25
    assert value(samples, "splitserve_variant_weight", **v2) == 75
    assert value(samples, "splitserve_variant_instances", **v1) == 2
    assert value(samples, "splitserve_variant_desired_instances", **v1) == 2
    assert value(samples, "splitserve_variant_instances", **v2) == 1
    instances = {
        sample.labels["instance"]
        for sample in samples
        if sample.name == "splitserve_instance_memory_bytes"
        and sample.labels["variant_name"] == "Variant1"
    }
    assert len(instances) == 2
    # Counters carry on across the change.
    assert value(samples, "splitserve_invocations_total", **v1) == 13


def test_series_follow_blue_green_and_delete(
    gateway: Gateway, sagemaker: Any, runtime: Any
) -> None:
    create_two_variant_endpoint(sagemaker, "bgm")
    create_model(sagemaker, "bgm-green", "v2")
    sagemaker.create_endpoint_config(
        EndpointConfigName="bgm-green",
        ProductionVariants=[
            {
                "VariantName": "Green",
                "ModelName": "bgm-green",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.t2.medium",
            }
        ],
    )
    sagemaker.update_endpoint(EndpointName="bgm", EndpointConfigName="bgm-green")
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName="bgm", WaiterConfig=FAST_WAIT)
    samples = scrape(gateway)
    left = {
        (sample.name, sample.labels.get("variant_name"))
        for sample in samples
        if sample.labels.get("endpoint_name") == "bgm"
        and sample.labels.get("variant_name") != "Green"
    }
    assert left == set()
    for name in VARIANT_METRICS + INSTANCE_METRICS:
        assert value(samples, name, endpoint_name="bgm", variant_name="Green") is not None, name

    body = csv_rows(np.zeros((1, 13), dtype=np.float32))
    for _ in range(4):
        runtime.invoke_endpoint(EndpointName="bgm", Body=body, ContentType="text/csv")
    assert value(scrape(gateway), "splitserve_invocations_total", endpoint_name="bgm") == 4
    report = json.loads(run_stats(gateway, "bgm", "--json").stdout)
    assert report["Variants"] == ["Green"]  # the retired variants had no traffic to show

    sagemaker.delete_endpoint(EndpointName="bgm")
    sagemaker.get_waiter("endpoint_deleted").wait(EndpointName="bgm", WaiterConfig=FAST_WAIT)
    assert not [s for s in scrape(gateway) if s.labels.get("endpoint_name") == "bgm"]
    gone = run_stats(gateway, "bgm")
    assert gone.returncode == 1
    assert "has no statistics" in gone.stderr
