"""Feedback end to end: boto3 invocations, labels sent back with `splitserve.feedback`, joined
exactly once, kept across a restart, joined on another replica than the one that served, and
read with `splitserve experiment` and /metrics."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config

import splitserve
from tests.e2e.helpers import FAST_WAIT, create_two_variant_endpoint, csv_rows
from tests.support.gateway import Gateway, running_gateway

pytestmark = pytest.mark.e2e

BODY = csv_rows(np.zeros((1, 13)))


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    """Poll `condition()` until it is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"{what} within {timeout} s")


def indexed(gateway: Gateway) -> int:
    """Answered invocations the state database's index holds."""
    with contextlib.closing(sqlite3.connect(gateway.state_dir / "state.sqlite3")) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM feedback_index").fetchone()[0])
        except sqlite3.OperationalError:  # the table is not there yet
            return 0


def invoke(runtime: Any, count: int, **extra: Any) -> list[tuple[str, str]]:
    """`count` invocations of `ab`; each one's (inference id header, variant)."""
    answered = []
    for _ in range(count):
        response = runtime.invoke_endpoint(
            EndpointName="ab", Body=BODY, ContentType="text/csv", **extra
        )
        response["Body"].read()
        headers = response["ResponseMetadata"]["HTTPHeaders"]
        answered.append(
            (headers["x-splitserve-inference-id"], response["InvokedProductionVariant"])
        )
    return answered


def view(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/splitserve/experiments/ab", timeout=10) as response:
        document: dict[str, Any] = json.load(response)
    return document


def test_labels_join_once_and_outlive_a_restart(tmp_path: Path, model_store: Path) -> None:
    state = tmp_path / "state"
    with running_gateway(state, model_store) as gateway:
        create_two_variant_endpoint(gateway.client("sagemaker"), "ab")
        runtime = gateway.client("sagemaker-runtime")
        answered = invoke(runtime, 36)
        (named,) = invoke(runtime, 1, InferenceId="client-id-1")
        assert named[0] == "client-id-1"
        assert len({inference_id for inference_id, _ in answered}) == 36
        wait_for(lambda: indexed(gateway) == 37, 30, "37 invocations indexed")
        first = splitserve.feedback(gateway.url, "ab", [(i, 1) for i, _ in answered[:30]])
        assert first["Joined"] == 30
        again = splitserve.feedback(
            gateway.url, "ab", [(answered[0][0], 0), ("never-drawn", 1), ("client-id-1", "1")]
        )
        assert [record["Outcome"] for record in again["Records"]] == [
            "duplicate",
            "unknown",
            "joined",
        ]
        shown = view(gateway.url)
        assert shown["labels"] == {"joined": 31, "refused": {"duplicate": 1, "unknown": 1}}
        counts = {
            v: sum(1 for _, seen in answered[:30] if seen == v) for v in ("Variant1", "Variant2")
        }
        assert shown["variants"]["Variant1"]["n"] == counts["Variant1"] + (named[1] == "Variant1")
        printed = subprocess.run(
            [sys.executable, "-m", "splitserve.cli", "experiment", "ab", "--url", gateway.url],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        assert printed.startswith("Endpoint ab: 31 labels joined, 2 refused")
        with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'splitserve_feedback_total{endpoint_name="ab",outcome="joined"} 31.0' in metrics
        assert 'splitserve_experiment_labels{endpoint_name="ab",variant_name="Variant1"}' in metrics
    with running_gateway(state, model_store) as gateway:
        gateway.client("sagemaker").get_waiter("endpoint_in_service").wait(
            EndpointName="ab", WaiterConfig=FAST_WAIT
        )
        assert view(gateway.url)["labels"]["joined"] == 31
        later = splitserve.feedback(
            gateway.url, "ab", [(answered[1][0], 1), *((i, 0) for i, _ in answered[30:])]
        )
        assert [record["Outcome"] for record in later["Records"]] == ["duplicate"] + ["joined"] * 6
        assert view(gateway.url)["labels"]["joined"] == 37


def _runtime(url: str) -> Any:
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


def test_a_label_joins_on_another_replica_than_the_one_that_served(
    tmp_path: Path, model_store: Path
) -> None:
    with running_gateway(tmp_path / "state", model_store, "--processes", "2") as gateway:

        def listed() -> list[str]:
            with contextlib.closing(sqlite3.connect(gateway.state_dir / "state.sqlite3")) as db:
                rows = db.execute(
                    "SELECT internal_url FROM cluster_replicas WHERE heartbeat >= ?",
                    (time.time() - 5.0,),
                ).fetchall()
            return sorted(str(row[0]) for row in rows)

        wait_for(lambda: len(listed()) == 2, 30, "two replicas listed")
        create_two_variant_endpoint(gateway.client("sagemaker"), "ab")
        serving, other = listed()
        answered = invoke(_runtime(serving), 10)
        wait_for(lambda: indexed(gateway) == 10, 30, "10 invocations indexed")
        joined = splitserve.feedback(other, "ab", [(i, 1) for i, _ in answered])
        assert joined["Joined"] == 10
        again = splitserve.feedback(serving, "ab", [(answered[0][0], 1)])
        assert again["Records"][0]["Outcome"] == "duplicate"
        assert view(serving)["labels"]["joined"] == 10


def test_the_bandit_moves_the_weights_toward_the_variant_that_is_right(
    tmp_path: Path, model_store: Path
) -> None:
    with running_gateway(tmp_path / "state", model_store) as gateway:
        sagemaker = gateway.client("sagemaker")
        create_two_variant_endpoint(sagemaker, "ab")
        runtime = gateway.client("sagemaker-runtime")
        answered = []
        for _ in range(60):
            response = runtime.invoke_endpoint(EndpointName="ab", Body=BODY, ContentType="text/csv")
            score = float(response["Body"].read())
            inference_id = response["ResponseMetadata"]["HTTPHeaders"]["x-splitserve-inference-id"]
            answered.append((inference_id, response["InvokedProductionVariant"], score >= 0.5))
        wait_for(lambda: indexed(gateway) == 60, 30, "60 invocations indexed")
        # Variant1's predictions all come true, Variant2's never.
        labels = [(i, int(positive == (v == "Variant1"))) for i, v, positive in answered]
        assert splitserve.feedback(gateway.url, "ab", labels)["Joined"] == 60
        arn = sagemaker.describe_endpoint(EndpointName="ab")["EndpointArn"]
        sagemaker.add_tags(
            ResourceArn=arn, Tags=[{"Key": "splitserve:experiment", "Value": "bandit 0.1"}]
        )

        def weights() -> dict[str, float]:
            described = sagemaker.describe_endpoint(EndpointName="ab")
            return {v["VariantName"]: v["CurrentWeight"] for v in described["ProductionVariants"]}

        moved = wait_for(lambda: (w := weights())["Variant1"] > w["Variant2"] and w, 60, "bandit")
        assert moved["Variant2"] >= 0.1 * sum(moved.values()) - 1e-6
        action = view(gateway.url)["action"]
        assert action["mode"] == "bandit"
        # "pushed" after a push, "kept" at a later round whose weights are the same.
        assert action["status"].startswith(("weights pushed: Variant1", "weights kept: Variant1"))
