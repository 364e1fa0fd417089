"""A gateway run as root, through the real CLI: its workers run as `--worker-user`, and CreateModel
refuses artifacts outside the model store.

Needs root, the `nobody` account and a system Python (/usr/bin/python3) that `nobody` can run: the
worker is the standard-library contract server of tests/workers, since the tests' own interpreter
may be root's alone.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.helpers import FAST_WAIT
from tests.support.gateway import Gateway, running_gateway
from tests.support.models import ROLE

PLAIN_SERVER = Path(__file__).resolve().parents[1] / "workers" / "plain_server.py"
SYSTEM_PYTHON = Path("/usr/bin/python3")
PLAIN_IMAGE = "test.local/plain-server:1"


def _has_nobody() -> bool:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return False
    return True


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0 or not _has_nobody() or not SYSTEM_PYTHON.exists(),
        reason="needs root, the nobody account and /usr/bin/python3",
    ),
]


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A directory the worker user can pass through (pytest's own are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="ssp", dir="/tmp"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def unprivileged_gateway(open_root: Path) -> Iterator[Gateway]:
    """A gateway whose workers run as nobody, with one model directory in its store."""
    model = open_root / "models" / "bucket" / "plain"
    model.mkdir(parents=True)
    (model / "model.json").write_text('{"coefficients": [1.0]}')
    images = open_root / "images.toml"
    images.write_text(
        f'[images."{PLAIN_IMAGE}"]\ncommand = ["{SYSTEM_PYTHON}", "{PLAIN_SERVER}"]\n'
    )
    with running_gateway(
        open_root / "state",
        open_root / "models",
        "--images",
        str(images),
        "--worker-user",  # after the conftest's own --worker-user: the last one counts
        "nobody",
    ) as gateway:
        yield gateway


def _workers_under(state_dir: Path) -> list[int]:
    """The processes whose SM_MODEL_DIR lies in `state_dir`."""
    needle = f"SM_MODEL_DIR={state_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(item.startswith(needle) for item in environ.split(b"\0")):
            found.append(int(entry.name))
    return found


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def test_workers_of_a_root_gateway_run_as_the_worker_user(
    unprivileged_gateway: Gateway,
) -> None:
    sagemaker: Any = unprivileged_gateway.client("sagemaker")
    nobody = pwd.getpwnam("nobody")
    with pytest.raises(ClientError) as refused:
        sagemaker.create_model(
            ModelName="shadow",
            ExecutionRoleArn=ROLE,
            PrimaryContainer={"Image": PLAIN_IMAGE, "ModelDataUrl": "file:///etc/shadow"},
        )
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "--allow-artifact-path" in refused.value.response["Error"]["Message"]

    sagemaker.create_model(
        ModelName="plain",
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": PLAIN_IMAGE, "ModelDataUrl": "s3://bucket/plain"},
    )
    sagemaker.create_endpoint_config(
        EndpointConfigName="plain-cfg",
        ProductionVariants=[
            {
                "VariantName": "Only",
                "ModelName": "plain",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.t2.medium",
            }
        ],
    )
    sagemaker.create_endpoint(EndpointName="plain", EndpointConfigName="plain-cfg")
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName="plain", WaiterConfig=FAST_WAIT)
    (pid,) = _workers_under(unprivileged_gateway.state_dir.resolve())
    status = _status(pid)
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
    assert status["NoNewPrivs"] == "1"
    assert unprivileged_gateway.stop() == 0
    assert _workers_under(unprivileged_gateway.state_dir.resolve()) == []
