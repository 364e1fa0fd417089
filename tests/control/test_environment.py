"""CreateModel refuses the Environment variables that change how a worker loads or runs code."""

from __future__ import annotations

import time

import pytest

from splitserve.config import (
    ALLOWED_ENVIRONMENT_NAMES,
    RESERVED_ENVIRONMENT_NAMES,
    RESERVED_ENVIRONMENT_PREFIXES,
    Settings,
)
from splitserve.control.models import ModelRecord
from splitserve.control.service import ControlService
from splitserve.control.store import Store
from splitserve.control.validation import reserved_environment_names
from splitserve.errors import ValidationException
from tests.control.conftest import (
    IMAGE,
    create_config,
    describe,
    model_body,
    state_file,
    variant,
    write_artifact,
)


def _with_environment(name: str, environment: dict[str, str]) -> dict[str, object]:
    body = model_body(name)
    container = body["PrimaryContainer"]
    assert isinstance(container, dict)
    container["Environment"] = environment
    return body


@pytest.mark.parametrize(
    "key",
    [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "PYTHONWARNINGS",
        "PATH",
        "HOME",
        "OMP_TOOL_LIBRARIES",
        "GOMP_SPINCOUNT",
        "SAGEMAKER_BIND_TO_PORT",
        "SM_MODEL_DIR",
        "GCONV_PATH",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCPATH",
        "NLSPATH",
        "BASH_ENV",
        "ENV",
        "IFS",
        "BASH_FUNC_ls",
        "PERL5OPT",
        "PERL5LIB",
        "NODE_OPTIONS",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "OPENSSL_CONF",
    ],
)
async def test_a_reserved_variable_is_refused_by_name(service: ControlService, key: str) -> None:
    body = _with_environment("m", {"SAGEMAKER_REGION": "local", key: "x"})
    with pytest.raises(ValidationException) as refused:
        await service.dispatch("CreateModel", body)
    message = refused.value.message
    assert message.startswith(
        f"The Environment variable {key} (at 'primaryContainer.environment') may not be set: "
    )
    assert "Security section of the README" in message
    listed = await service.dispatch("ListModels", {})
    assert listed["Models"] == []  # nothing was stored


async def test_every_reserved_key_is_named_once_sorted(service: ControlService) -> None:
    body = model_body("m")
    body.pop("PrimaryContainer")
    body["Containers"] = [
        {"Image": IMAGE, "Environment": {"PYTHONPATH": "/x", "LD_PRELOAD": "/y.so", "A": "1"}}
    ]
    with pytest.raises(ValidationException) as refused:
        await service.dispatch("CreateModel", body)
    assert refused.value.message.startswith(
        "The Environment variables LD_PRELOAD, PYTHONPATH (at 'containers.1.member.environment') "
    )


@pytest.mark.parametrize(
    "key",
    [
        *sorted(ALLOWED_ENVIRONMENT_NAMES),
        "SAGEMAKER_PROGRAM",
        "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT",
        "MALLOC_ARENA_MAX",
        "MKL_NUM_THREADS",
        "ld_preload",  # the environment is case-sensitive: the loader ignores this one
        "MY_PATH",
    ],
)
async def test_allowed_variables_are_stored(service: ControlService, key: str) -> None:
    await service.dispatch("CreateModel", _with_environment("m", {key: "1"}))
    described = await service.dispatch("DescribeModel", {"ModelName": "m"})
    container = described["PrimaryContainer"]
    assert isinstance(container, dict)
    assert container["Environment"] == {key: "1"}


def test_the_table_is_consistent() -> None:
    # An allowed name must sit under a reserved prefix, or the allow-list would mean nothing.
    for name in ALLOWED_ENVIRONMENT_NAMES:
        assert name.startswith(RESERVED_ENVIRONMENT_PREFIXES), name
        assert name not in RESERVED_ENVIRONMENT_NAMES
    assert reserved_environment_names(["OMP_NUM_THREADS", "OMP_DISPLAY_ENV", "PATH"]) == [
        "OMP_DISPLAY_ENV",
        "PATH",
    ]


async def test_a_stored_model_with_a_reserved_variable_is_not_deployed(
    settings: Settings, service: ControlService
) -> None:
    """A model stored before a name was reserved (here: written to the store directly)."""
    write_artifact(settings)
    other = Store.open(state_file(settings))
    try:
        container = {"Image": IMAGE, "ModelDataUrl": "s3://bucket/model.tar.gz"}
        container["Environment"] = {"LD_PRELOAD": "/tmp/evil.so"}  # type: ignore[assignment]
        assert other.insert_model(ModelRecord("old", time.time(), {"PrimaryContainer": container}))
    finally:
        other.close()
    await create_config(service, "old-cfg", [variant("A", "old")])
    with pytest.raises(ValidationException) as refused:
        await service.dispatch(
            "CreateEndpoint", {"EndpointName": "ep", "EndpointConfigName": "old-cfg"}
        )
    assert refused.value.message.startswith(
        'The Environment variable LD_PRELOAD (of model "old") may not be set: '
    )
    with pytest.raises(ValidationException, match="Could not find endpoint"):
        await describe(service, "ep")
