"""The data plane's handler helpers: `read_invocation` builds the service's `Invocation`
positionally (for speed), so these tests pin its field order and check each header's field."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from splitserve.runtime.routes import STICKY_KEY_HEADER, read_invocation
from splitserve.runtime.service import Invocation, InvocationResult


def test_invocation_fields_keep_the_order_read_invocation_builds_them_in() -> None:
    assert Invocation._fields == (
        "endpoint_name",
        "body",
        "content_type",
        "accept",
        "custom_attributes",
        "target_variant",
        "sticky_key",
        "inference_id",
        "target_model",
    )


def test_invocation_result_fields_keep_the_order_the_service_builds_them_in() -> None:
    assert InvocationResult._fields == (
        "variant",
        "body",
        "content_type",
        "custom_attributes",
        "inference_id",
    )


def test_read_invocation_puts_every_header_in_its_own_field() -> None:
    headers = {
        "Content-Type": "text/csv",
        "Accept": "application/json",
        "X-Amzn-SageMaker-Custom-Attributes": "attributes",
        "X-Amzn-SageMaker-Target-Variant": "Blue",
        STICKY_KEY_HEADER: "user-7",
        "X-Amzn-SageMaker-Inference-Id": "inference-1",
        "X-Amzn-SageMaker-Target-Model": "model.tar.gz",
    }
    request = make_mocked_request("POST", "/endpoints/ep/invocations", headers=headers)
    request._match_info = UrlMappingMatchInfo({"name": "ep"}, None)  # type: ignore[arg-type]

    invocation = read_invocation(request, b"1,2")

    assert invocation == Invocation(
        endpoint_name="ep",
        body=b"1,2",
        content_type="text/csv",
        accept="application/json",
        custom_attributes="attributes",
        target_variant="Blue",
        sticky_key="user-7",
        inference_id="inference-1",
        target_model="model.tar.gz",
    )


def test_read_invocation_gives_none_for_absent_headers() -> None:
    request = make_mocked_request("POST", "/endpoints/ep/invocations")
    request._match_info = UrlMappingMatchInfo({"name": "ep"}, None)  # type: ignore[arg-type]

    assert read_invocation(request, b"") == Invocation("ep", b"")
