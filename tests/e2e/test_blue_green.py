"""UpdateEndpoint switches fleets blue/green: not one request fails under steady traffic."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import numpy as np
import pytest

from tests.e2e.helpers import FAST_WAIT, create_two_variant_endpoint, csv_rows
from tests.support.gateway import Gateway

pytestmark = pytest.mark.e2e

_CLIENT_THREADS = 4


def test_update_endpoint_under_traffic(gateway: Gateway, sagemaker: Any) -> None:
    create_two_variant_endpoint(sagemaker, "bg")
    sagemaker.create_endpoint_config(
        EndpointConfigName="bg-green",
        ProductionVariants=[
            {
                "VariantName": "Green",
                "ModelName": "bg-m2",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.t2.medium",
            }
        ],
    )
    body = csv_rows(np.zeros((1, 13), dtype=np.float32))
    stop = threading.Event()
    failures: list[BaseException] = []
    variants: Counter[str] = Counter()
    lock = threading.Lock()

    def send() -> None:
        client = gateway.client("sagemaker-runtime")
        while not stop.is_set():
            try:
                response = client.invoke_endpoint(
                    EndpointName="bg", Body=body, ContentType="text/csv"
                )
                response["Body"].read()
            except Exception as error:
                with lock:
                    failures.append(error)
            else:
                with lock:
                    variants[response["InvokedProductionVariant"]] += 1

    threads = [threading.Thread(target=send) for _ in range(_CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    try:
        sagemaker.update_endpoint(EndpointName="bg", EndpointConfigName="bg-green")
        assert sagemaker.describe_endpoint(EndpointName="bg")["EndpointStatus"] == "Updating"
        sagemaker.get_waiter("endpoint_in_service").wait(EndpointName="bg", WaiterConfig=FAST_WAIT)
        # Traffic after the switch reaches only the green fleet.
        with lock:
            variants.clear()
        stop.wait(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert failures == []
    assert set(variants) == {"Green"}
    described = sagemaker.describe_endpoint(EndpointName="bg")
    assert described["EndpointConfigName"] == "bg-green"
    assert [v["VariantName"] for v in described["ProductionVariants"]] == ["Green"]
