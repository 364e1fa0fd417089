"""Endpoints whose workers start at the same moment, built-in and bring-your-own: the gateway
must not hang. Spawning through uvloop ran the interpreter's at-fork handlers in the child
between fork and exec, and a child could deadlock on a lock another thread held: two
CreateEndpoints at once hung the whole gateway (even /ping) in about half the runs."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import FAST_WAIT, create_model
from tests.support.gateway import running_gateway
from tests.support.models import ROLE

pytestmark = pytest.mark.e2e

FAULT_SERVER = Path(__file__).resolve().parents[1] / "workers" / "fault_server.py"
FAULT_IMAGE = "local/fault-server:1"
ROUNDS = 3


def test_endpoints_created_at_once_all_start_and_the_gateway_keeps_answering(
    tmp_path: Path, model_store: Path
) -> None:
    images = tmp_path / "images.toml"
    images.write_text(f'[images."{FAULT_IMAGE}"]\ncommand = ["{{python}}", "{FAULT_SERVER}"]\n')
    with running_gateway(tmp_path / "state", model_store, "--images", str(images)) as gateway:
        sagemaker: Any = gateway.client("sagemaker")
        create_model(sagemaker, "xgb", "v1")
        sagemaker.create_model(
            ModelName="byo", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": FAULT_IMAGE}
        )
        for name, model in (("xgb", "xgb"), ("byo", "byo")):
            sagemaker.create_endpoint_config(
                EndpointConfigName=name,
                ProductionVariants=[
                    {
                        "VariantName": "Only",
                        "ModelName": model,
                        "InitialInstanceCount": 2,
                        "InstanceType": "ml.t2.medium",
                    }
                ],
            )
        waiter = sagemaker.get_waiter("endpoint_in_service")
        for round_ in range(ROUNDS):
            names = [f"xgb-{round_}", f"byo-{round_}"]
            for name in names:
                sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name[:3])
            for name in names:
                waiter.wait(EndpointName=name, WaiterConfig=FAST_WAIT)
            with urllib.request.urlopen(f"{gateway.url}/ping", timeout=5) as answer:
                assert answer.status == 200
