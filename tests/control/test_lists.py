"""ListModels, ListEndpointConfigs and ListEndpoints: sorting, filters and pagination."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from splitserve.config import Settings
from splitserve.control.service import ControlService
from splitserve.errors import ValidationException
from tests.control.conftest import (
    RecordingDeployer,
    create_config,
    create_model,
    variant,
    write_artifact,
)
from tests.control.shapes import check_output


async def _models(service: ControlService, names: list[str]) -> None:
    for name in names:
        await create_model(service, name)


async def _all_pages(
    service: ControlService, operation: str, key: str, **request: Any
) -> list[list[str]]:
    pages: list[list[str]] = []
    name_member = {"Models": "ModelName", "EndpointConfigs": "EndpointConfigName"}.get(
        key, "EndpointName"
    )
    while True:
        response = await service.dispatch(operation, request)
        check_output(operation, response)
        items = response[key]
        assert isinstance(items, list)
        pages.append([item[name_member] for item in items])
        token = response.get("NextToken")
        if token is None:
            return pages
        request["NextToken"] = token


async def test_default_order_is_newest_first_in_pages_of_ten(service: ControlService) -> None:
    names = [f"model-{i:02d}" for i in range(23)]
    await _models(service, names)
    pages = await _all_pages(service, "ListModels", "Models")
    assert [len(page) for page in pages] == [10, 10, 3]
    assert [name for page in pages for name in page] == names[::-1]


@pytest.mark.parametrize(
    ("sort_by", "order", "expected"),
    [
        ("Name", "Ascending", ["Alpha", "beta", "Gamma"]),
        ("Name", "Descending", ["Gamma", "beta", "Alpha"]),
        ("CreationTime", "Ascending", ["Gamma", "Alpha", "beta"]),
    ],
)
async def test_sorting(
    service: ControlService, sort_by: str, order: str, expected: list[str]
) -> None:
    await _models(service, ["Gamma", "Alpha", "beta"])
    pages = await _all_pages(
        service, "ListModels", "Models", SortBy=sort_by, SortOrder=order, MaxResults=1
    )
    assert [name for page in pages for name in page] == expected
    assert all(len(page) == 1 for page in pages)


async def test_pages_survive_changes_between_calls(service: ControlService) -> None:
    await _models(service, ["a1", "a2", "a3", "a4"])
    first = await service.dispatch(
        "ListModels", {"SortBy": "Name", "SortOrder": "Ascending", "MaxResults": 2}
    )
    assert [m["ModelName"] for m in first["Models"]] == ["a1", "a2"]  # type: ignore[attr-defined]
    await service.dispatch("DeleteModel", {"ModelName": "a1"})
    await create_model(service, "a0")
    second = await service.dispatch(
        "ListModels",
        {
            "SortBy": "Name",
            "SortOrder": "Ascending",
            "MaxResults": 2,
            "NextToken": first["NextToken"],
        },
    )
    assert [m["ModelName"] for m in second["Models"]] == ["a3", "a4"]  # type: ignore[attr-defined]
    assert "NextToken" not in second


async def test_filters(service: ControlService) -> None:
    await _models(service, ["blue-model", "green-model"])
    middle = time.time()
    await _models(service, ["BLUE-2"])
    pages = await _all_pages(service, "ListModels", "Models", NameContains="blue")
    assert sorted(pages[0]) == ["BLUE-2", "blue-model"]
    pages = await _all_pages(service, "ListModels", "Models", CreationTimeAfter=middle)
    assert pages == [["BLUE-2"]]
    pages = await _all_pages(service, "ListModels", "Models", CreationTimeBefore=middle)
    assert sorted(pages[0]) == ["blue-model", "green-model"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(middle - 3600))
    pages = await _all_pages(service, "ListModels", "Models", CreationTimeAfter=iso)
    assert len(pages[0]) == 3


async def test_endpoint_lists_and_status_filter(
    service: ControlService, settings: Settings, deployer: RecordingDeployer
) -> None:
    write_artifact(settings)
    await create_model(service, "m1")
    await create_config(service, "cfg", [variant("A", "m1")])
    await create_config(service, "cfg2", [variant("A", "m1")])
    pages = await _all_pages(
        service, "ListEndpointConfigs", "EndpointConfigs", SortBy="Name", SortOrder="Ascending"
    )
    assert pages == [["cfg", "cfg2"]]
    for name in ("e1", "e2", "e3"):
        await service.dispatch(
            "CreateEndpoint", {"EndpointName": name, "EndpointConfigName": "cfg"}
        )
    await service.settle()
    deployer.hold("deploy")
    await service.dispatch("CreateEndpoint", {"EndpointName": "e4", "EndpointConfigName": "cfg"})
    await deployer.entered("deploy")
    creating = await _all_pages(service, "ListEndpoints", "Endpoints", StatusEquals="Creating")
    assert creating == [["e4"]]
    in_service = await _all_pages(
        service, "ListEndpoints", "Endpoints", StatusEquals="InService", MaxResults=2
    )
    assert [len(page) for page in in_service] == [2, 1]
    by_status = await _all_pages(
        service, "ListEndpoints", "Endpoints", SortBy="Status", SortOrder="Ascending"
    )
    assert by_status[0][0] == "e4"  # Creating sorts before InService
    response = await service.dispatch("ListEndpoints", {})
    endpoint = response["Endpoints"][0]  # type: ignore[index]
    assert set(endpoint) == {
        "EndpointName",
        "EndpointArn",
        "CreationTime",
        "LastModifiedTime",
        "EndpointStatus",
    }
    recent = await _all_pages(
        service, "ListEndpoints", "Endpoints", LastModifiedTimeAfter=time.time() + 60
    )
    assert recent == [[]]
    deployer.release("deploy")


@pytest.mark.parametrize(
    "token",
    [
        "not base64!",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(
            b'{"SortBy": "Name", "SortOrder": "Descending", "After": [1, "a"]}'
        ).decode(),
        # A token made for another sort order.
        base64.urlsafe_b64encode(
            b'{"SortBy": "CreationTime", "SortOrder": "Ascending", "After": [1.0, "a"]}'
        ).decode(),
    ],
)
async def test_bad_token(service: ControlService, token: str) -> None:
    await _models(service, ["a"])
    with pytest.raises(ValidationException) as refused:
        await service.dispatch("ListModels", {"NextToken": token})
    assert refused.value.message == "Invalid pagination token"


async def test_max_results_bounds(service: ControlService) -> None:
    with pytest.raises(ValidationException) as refused:
        await service.dispatch("ListEndpoints", {"MaxResults": 101})
    assert refused.value.message == (
        "1 validation error detected: Value '101' at 'maxResults' failed to satisfy constraint: "
        "Member must have value less than or equal to 100"
    )
    with pytest.raises(ValidationException, match="Member must satisfy enum value set"):
        await service.dispatch("ListEndpoints", {"SortBy": "Weight"})
