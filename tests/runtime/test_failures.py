"""Failed invocations in the log: one line each, with what an operator needs, at most a few per
variant and second; nothing logged for a success; the LogStreamArn names the instance's file."""

from __future__ import annotations

import logging
import uuid

import pytest

from splitserve._router import Router, VariantSpec
from splitserve.config import Settings
from splitserve.contract.upstream import UpstreamResponse, UpstreamTimeout
from splitserve.errors import ModelError
from splitserve.metrics.minutes import VariantMinutes
from splitserve.metrics.prometheus import remove_variant_series
from splitserve.metrics.recorder import VariantRecorder
from splitserve.runtime import failures
from splitserve.runtime.failures import FailureLog
from splitserve.runtime.registry import EndpointRegistry, InstanceClient, LiveEndpoint
from splitserve.runtime.service import Invocation, InvocationService, log_stream_arn
from tests.support.runtime import FakeClient

GROUP = "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/e"
LOGGER = "splitserve.invocations"


def _service(client: FakeClient) -> tuple[InvocationService, LiveEndpoint]:
    name = f"fail-{uuid.uuid4().hex[:12]}"
    instance = f"{name}/A/g1/0"
    specs = [VariantSpec("A", 1.0, [instance], "RANDOM")]
    live = LiveEndpoint(
        name=name,
        generation=1,
        router=Router(specs, salt=name, seed=1, failover=False),
        pools=dict[str, InstanceClient]({instance: client}),
        recorders={"A": VariantRecorder.resolve(name, "A", VariantMinutes(5))},
        log_stream_arn=GROUP,
    )
    registry = EndpointRegistry()
    registry.publish(live)
    return InvocationService(Settings(), registry), live


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER]


async def test_a_failed_invocation_is_logged_once_with_its_instance_and_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = FakeClient()
    client.answer = lambda: UpstreamResponse(415, [], b"unsupported content type\nuse text/csv")
    service, live = _service(client)
    caplog.set_level(logging.INFO, LOGGER)
    try:
        with pytest.raises(ModelError) as raised:
            await service.invoke(Invocation(live.name, b"x"))
        (line,) = _lines(caplog)
        assert f"endpoint {live.name} variant A instance {live.name}/A/g1/0" in line
        assert "status 415" in line
        # The worker's message on one line: a multi-line body cannot forge log lines.
        assert line.endswith("unsupported content type\\nuse text/csv")
        assert raised.value.detail.log_stream_arn == f"{GROUP}:log-stream:A/g1/0"
        assert f"See {GROUP}:log-stream:A/g1/0 " in raised.value.message
    finally:
        remove_variant_series(live.name, "A")


async def test_a_timeout_is_logged_and_a_success_is_not(caplog: pytest.LogCaptureFixture) -> None:
    client = FakeClient()
    service, live = _service(client)
    caplog.set_level(logging.INFO, LOGGER)
    try:
        await service.invoke(Invocation(live.name, b"x"))
        assert _lines(caplog) == []
        client.answer = lambda: (_ for _ in ()).throw(UpstreamTimeout("no answer in 60 s"))
        with pytest.raises(ModelError):
            await service.invoke(Invocation(live.name, b"x"))
        (line,) = _lines(caplog)
        assert "status timeout: no answer in 60 s" in line
    finally:
        remove_variant_series(live.name, "A")


def test_a_storm_is_limited_per_variant_then_summed_up(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(failures, "monotonic", lambda: now[0])
    failure_log = FailureLog(per_second=3, message_chars=10)
    caplog.set_level(logging.INFO, LOGGER)
    for _ in range(50):
        failure_log.failed("e", "A", "e/A/g1/0", 500, "boom")
    failure_log.failed("e", "B", "e/B/g1/0", 500, "other variant, own budget")
    assert len(_lines(caplog)) == 4
    caplog.clear()
    now[0] += 1.0
    failure_log.failed("e", "A", "e/A/g1/0", 500, "boom")
    suppressed, line = _lines(caplog)
    assert "endpoint e variant A: suppressed 47 failed invocations (over 3 a second)" in suppressed
    assert line.endswith("status 500: boom")


def test_a_long_message_is_cut(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    FailureLog(per_second=1, message_chars=10).failed("e", "A", "i", 400, "x" * 5000)
    (line,) = _lines(caplog)
    assert line.endswith(": " + "x" * 10 + "…")


def test_the_log_stream_is_the_instance_name_less_its_endpoint() -> None:
    router = Router([VariantSpec("A", 1.0, ["i"], "RANDOM")], salt="e", seed=1, failover=False)
    live = LiveEndpoint("e", 1, router, {}, {}, GROUP)
    assert log_stream_arn(live, "e/Variant-1/g3/2") == f"{GROUP}:log-stream:Variant-1/g3/2"
    assert log_stream_arn(live, "other") == f"{GROUP}:log-stream:other"
