"""The invocation service called directly: a live endpoint over fake instance clients (no HTTP, no
workers), so each outcome of the request path is checked with what it records and releases."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from splitserve._router import Router, VariantSpec
from splitserve.config import Settings
from splitserve.contract.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)
from splitserve.errors import (
    InvocationValidationError,
    ModelError,
    PayloadTooLarge,
    ServiceUnavailable,
)
from splitserve.metrics.minutes import MinuteCounts, VariantMinutes
from splitserve.metrics.prometheus import remove_variant_series
from splitserve.metrics.recorder import VariantRecorder
from splitserve.runtime.registry import EndpointRegistry, InstanceClient, LiveEndpoint
from splitserve.runtime.service import Invocation, InvocationService, inference_ids
from tests.support.runtime import FakeClient

LOR = "LEAST_OUTSTANDING_REQUESTS"
CSV = "text/csv"


def _raises(error: UpstreamError) -> Callable[[], UpstreamResponse]:
    def answer() -> UpstreamResponse:
        raise error

    return answer


@dataclass
class Endpoint:
    """A live endpoint of variants A and B (one instance each) behind a service."""

    service: InvocationService
    registry: EndpointRegistry
    live: LiveEndpoint
    clients: dict[str, FakeClient]
    minutes: dict[str, VariantMinutes]

    @property
    def name(self) -> str:
        return self.live.name

    def counted(self, variant: str) -> MinuteCounts:
        """The variant's newest minute."""
        ring = self.minutes[variant]
        (minute,) = ring.minutes(ring.newest_minute, ring.newest_minute)
        return minute

    def recorder(self, variant: str) -> VariantRecorder:
        return self.live.recorders[variant]


def _endpoint(
    weights: tuple[float, float] = (1.0, 0.0),
    *,
    failover: bool = False,
    seed: int = 1,
    instances: int = 1,
) -> Endpoint:
    name = f"svc-{uuid.uuid4().hex[:12]}"
    specs = [
        VariantSpec(variant, weight, [f"{variant}-{n}" for n in range(instances)], LOR)
        for variant, weight in zip(("A", "B"), weights, strict=True)
    ]
    clients = {instance: FakeClient() for spec in specs for instance in spec.instances}
    minutes = {variant: VariantMinutes(5) for variant in ("A", "B")}
    live = LiveEndpoint(
        name=name,
        generation=1,
        router=Router(specs, salt=name, seed=seed, failover=failover),
        pools=dict[str, InstanceClient](clients),
        recorders={
            variant: VariantRecorder.resolve(name, variant, minutes[variant])
            for variant in ("A", "B")
        },
        log_stream_arn="arn:aws:logs:test",
    )
    registry = EndpointRegistry()
    registry.publish(live)
    return Endpoint(InvocationService(Settings(), registry), registry, live, clients, minutes)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    made = _endpoint()
    yield made
    for variant in ("A", "B"):
        remove_variant_series(made.name, variant)


def _invocation(endpoint: Endpoint, **fields: str | bytes | None) -> Invocation:
    body = fields.pop("body", b"1,2,3")
    assert isinstance(body, bytes)
    return Invocation(endpoint.name, body, **fields)  # type: ignore[arg-type]


def _in_flight(endpoint: Endpoint) -> int:
    return sum(endpoint.live.router.in_flight(name) for name in endpoint.clients)


# --- success ------------------------------------------------------------------------------------


async def test_an_answer_is_returned_recorded_and_released(endpoint: Endpoint) -> None:
    result = await endpoint.service.invoke(
        _invocation(endpoint, content_type=CSV, accept="application/json", custom_attributes="c=1")
    )
    assert (result.variant, result.body, result.content_type) == (
        "A",
        b"[0.5]",
        b"application/json",
    )
    assert result.custom_attributes is None
    ((method, path, headers, body, timeout),) = endpoint.clients["A-0"].sent
    assert (method, path, body, timeout) == (b"POST", b"/invocations", b"1,2,3", 60.0)
    assert list(headers) == [
        (b"Content-Type", b"text/csv"),
        (b"Accept", b"application/json"),
        (b"X-Amzn-SageMaker-Custom-Attributes", b"c=1"),
    ]
    metrics = endpoint.recorder("A").metrics
    assert metrics.invocations.value == 1
    assert metrics.invocations_per_instance.value == 1.0
    assert sum(metrics.model_latency.buckets) == sum(metrics.overhead_latency.buckets) == 1
    assert endpoint.counted("A").invocations == 1
    assert endpoint.counted("A").model_errors == 0
    assert _in_flight(endpoint) == 0


async def test_invocations_per_instance_is_one_over_the_healthy_count() -> None:
    made = _endpoint(instances=4)
    made.live.router.set_healthy("A-3", False)
    for _ in range(3):
        await made.service.invoke(_invocation(made))
    assert made.recorder("A").metrics.invocations_per_instance.value == pytest.approx(1.0)
    assert made.recorder("A").metrics.invocations.value == 3


async def test_an_instance_removed_mid_request_is_released_without_error(
    endpoint: Endpoint,
) -> None:
    client = endpoint.clients["A-0"]
    client.gate = asyncio.Event()
    request = asyncio.ensure_future(endpoint.service.invoke(_invocation(endpoint)))
    await client.entered.wait()
    endpoint.live.router.replace(
        [VariantSpec("A", 1.0, ["A-9"], LOR), VariantSpec("B", 0.0, [], LOR)]
    )
    client.gate.set()
    assert (await request).variant == "A"
    assert endpoint.live.router.in_flight("A-9") == 0


# --- the model's failures -----------------------------------------------------------------------


@pytest.mark.parametrize(("status", "errors_4xx", "errors_5xx"), [(400, 1, 0), (503, 0, 1)])
async def test_a_non_2xx_answer_is_a_model_error(
    endpoint: Endpoint, status: int, errors_4xx: int, errors_5xx: int
) -> None:
    endpoint.clients["A-0"].answer = lambda: UpstreamResponse(status, [], b"bad row")
    with pytest.raises(ModelError) as raised:
        await endpoint.service.invoke(_invocation(endpoint))
    assert raised.value.detail.original_status_code == status
    assert raised.value.detail.original_message == "bad row"
    assert raised.value.detail.log_stream_arn == "arn:aws:logs:test:log-stream:A-0"
    assert "bad row" in raised.value.message
    counted = endpoint.counted("A")
    assert (counted.invocations, counted.model_errors) == (1, 1)
    assert (counted.errors_4xx, counted.errors_5xx) == (errors_4xx, errors_5xx)
    metrics = endpoint.recorder("A").metrics
    assert metrics.model_errors._value.get() == 1  # prometheus_client's own counter
    assert sum(metrics.model_latency.buckets) == 1
    assert _in_flight(endpoint) == 0


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (UpstreamTimeout("late"), ModelError),
        (UpstreamProtocolError("cut short"), ModelError),
        (UpstreamConnectError("refused"), ServiceUnavailable),
    ],
)
async def test_no_complete_answer(
    endpoint: Endpoint, error: UpstreamError, expected: type[Exception]
) -> None:
    endpoint.clients["A-0"].answer = _raises(error)
    with pytest.raises(expected) as raised:
        await endpoint.service.invoke(_invocation(endpoint))
    # Raised from the client's error: the boundary knows a variant took the request.
    assert raised.value.__cause__ is error
    if isinstance(raised.value, ModelError):
        assert raised.value.detail.original_status_code == 0
    counted = endpoint.counted("A")
    assert (counted.invocations, counted.model_errors, counted.errors_5xx) == (1, 1, 0)
    assert _in_flight(endpoint) == 0


# --- refused before routing ---------------------------------------------------------------------


async def test_an_unknown_endpoint_is_not_found(endpoint: Endpoint) -> None:
    with pytest.raises(InvocationValidationError, match=r"Endpoint nope of account \d+ not found"):
        await endpoint.service.invoke(Invocation("nope", b""))


async def test_an_endpoint_being_deployed_is_unavailable_until_published(
    endpoint: Endpoint,
) -> None:
    live = endpoint.registry.withdraw(endpoint.name)
    assert live is not None
    endpoint.registry.pending(endpoint.name)
    with pytest.raises(ServiceUnavailable, match="being deployed"):
        await endpoint.service.invoke(_invocation(endpoint))
    endpoint.registry.publish(live)
    assert (await endpoint.service.invoke(_invocation(endpoint))).variant == "A"
    endpoint.registry.withdraw(endpoint.name)
    with pytest.raises(InvocationValidationError, match="not found"):
        await endpoint.service.invoke(_invocation(endpoint))


async def test_a_failed_endpoint_says_why(endpoint: Endpoint) -> None:
    endpoint.registry.withdraw(endpoint.name)
    endpoint.registry.failed(endpoint.name, "Failed to find model data for variant A.")
    with pytest.raises(InvocationValidationError) as raised:
        await endpoint.service.invoke(_invocation(endpoint))
    assert "failed" in raised.value.message
    assert raised.value.message.endswith("Failed to find model data for variant A.")


async def test_a_failure_keeps_a_live_generation_serving(endpoint: Endpoint) -> None:
    endpoint.registry.failed(endpoint.name, "Failed to delete the endpoint.")
    assert (await endpoint.service.invoke(_invocation(endpoint))).variant == "A"


@pytest.mark.parametrize(
    ("fields", "error", "words"),
    [
        ({"target_variant": "C"}, InvocationValidationError, "'C' does not exist"),
        ({"target_variant": "bad_name"}, InvocationValidationError, "targetVariant"),
        ({"target_model": "m.tar.gz"}, InvocationValidationError, "multi-model"),
        ({"inference_id": " x"}, InvocationValidationError, "inferenceId"),
        ({"body": b"x" * (6 * 1024 * 1024 + 1)}, PayloadTooLarge, "over the limit"),
    ],
)
async def test_refusals_before_routing(
    endpoint: Endpoint, fields: dict[str, str | bytes], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        await endpoint.service.invoke(_invocation(endpoint, **fields))
    assert endpoint.counted("A").invocations == 0
    assert not endpoint.clients["A-0"].sent


@pytest.mark.parametrize(
    ("field_name", "header"),
    [
        ("content_type", "Content-Type"),
        ("accept", "Accept"),
        ("custom_attributes", "X-Amzn-SageMaker-Custom-Attributes"),
        ("sticky_key", "X-Splitserve-Sticky-Key"),
    ],
)
@pytest.mark.parametrize("value", ["text/csv; charset=\u00e9", "a\udcff"])  # Latin-1; bad UTF-8
async def test_header_values_outside_ascii_are_refused_by_name(
    endpoint: Endpoint, field_name: str, header: str, value: str
) -> None:
    with pytest.raises(InvocationValidationError, match=header):
        await endpoint.service.invoke(_invocation(endpoint, **{field_name: value}))
    assert not endpoint.clients["A-0"].sent
    assert _in_flight(endpoint) == 0
    assert endpoint.counted("A").invocations == 0  # refused before any variant took it


async def test_every_weight_zero_needs_a_target() -> None:
    made = _endpoint((0.0, 0.0))
    with pytest.raises(InvocationValidationError, match="TargetVariant"):
        await made.service.invoke(_invocation(made))
    assert (await made.service.invoke(_invocation(made, target_variant="B"))).variant == "B"


# --- no healthy instance, failover ---------------------------------------------------------------


async def test_no_healthy_instance_is_unavailable_without_failover(endpoint: Endpoint) -> None:
    endpoint.live.router.set_healthy("A-0", False)
    with pytest.raises(ServiceUnavailable, match="'A' has no healthy instance") as raised:
        await endpoint.service.invoke(_invocation(endpoint))
    assert raised.value.__cause__ is None  # refused before a variant took it
    assert endpoint.counted("A").invocations == 0


async def test_failover_serves_and_counts_under_the_serving_variant() -> None:
    made = _endpoint((1.0, 1.0), failover=True, seed=7)
    made.live.router.set_healthy("A-0", False)
    served = [(await made.service.invoke(_invocation(made))).variant for _ in range(40)]
    assert set(served) == {"B"}
    failovers = made.recorder("B").metrics.failovers._value.get()  # prometheus_client's counter
    assert 0 < failovers < 40  # only the requests that drew A failed over
    assert made.recorder("A").metrics.failovers._value.get() == 0
    assert made.recorder("B").metrics.invocations.value == 40
    # A targeted request never fails over.
    with pytest.raises(ServiceUnavailable, match="'A'"):
        await made.service.invoke(_invocation(made, target_variant="A"))


async def test_failover_is_deterministic_for_a_seed() -> None:
    async def failovers(seed: int) -> float:
        made = _endpoint((1.0, 1.0), failover=True, seed=seed)
        made.live.router.set_healthy("A-0", False)
        for _ in range(50):
            await made.service.invoke(_invocation(made))
        value: float = made.recorder("B").metrics.failovers._value.get()
        remove_variant_series(made.name, "B")
        return value

    assert await failovers(3) == await failovers(3)


# --- inference ids ------------------------------------------------------------------------------


class _Answered:
    """What the service hands to feedback's index, kept in a list."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, str, bool, bytes | None, bytes]] = []

    def record(
        self,
        endpoint: str,
        variant: str,
        inference_id: str,
        targeted: bool,
        content_type: bytes | None,
        body: bytes,
    ) -> None:
        self.records.append((endpoint, variant, inference_id, targeted, content_type, body))


async def test_every_answer_has_an_inference_id_the_index_gets_too(endpoint: Endpoint) -> None:
    answered = _Answered()
    service = InvocationService(Settings(), endpoint.registry, answered)
    first = await service.invoke(_invocation(endpoint))
    second = await service.invoke(_invocation(endpoint))
    sent = await service.invoke(_invocation(endpoint, inference_id="client-7", target_variant="A"))
    assert first.inference_id != second.inference_id
    assert 0 < len(first.inference_id) <= 64
    assert first.inference_id.isprintable()
    assert sent.inference_id == "client-7"
    assert [record[2] for record in answered.records] == [
        first.inference_id,
        second.inference_id,
        "client-7",
    ]
    assert answered.records[2][:4] == (endpoint.name, "A", "client-7", True)
    assert answered.records[0][3:] == (False, b"application/json", b"[0.5]")


async def test_a_failed_invocation_is_not_indexed(endpoint: Endpoint) -> None:
    answered = _Answered()
    service = InvocationService(Settings(), endpoint.registry, answered)
    endpoint.clients["A-0"].answer = lambda: UpstreamResponse(500, [], b"boom")
    with pytest.raises(ModelError):
        await service.invoke(_invocation(endpoint))
    assert answered.records == []


class _Capture:
    """A capture sink that keeps what it was offered."""

    def __init__(self) -> None:
        self.offers: list[tuple[object, ...]] = []

    def offer(self, *args: object) -> bool:
        self.offers.append(args)
        return True


async def test_capture_records_a_drawn_id_as_the_event_id(endpoint: Endpoint) -> None:
    capture = _Capture()
    live = dataclasses.replace(endpoint.live, capture=capture)  # type: ignore[arg-type]
    endpoint.registry.publish(live)
    drawn = await endpoint.service.invoke(_invocation(endpoint))
    sent = await endpoint.service.invoke(_invocation(endpoint, inference_id="client-8"))
    # (variant, content type, InferenceId, body, answer, answer type, targeted, eventId)
    assert capture.offers[0][2] is None
    assert capture.offers[0][7] == drawn.inference_id
    assert capture.offers[1][2] == "client-8"
    assert capture.offers[1][7] is None
    assert sent.inference_id == "client-8"


def test_drawn_ids_are_version_7_uuids_holding_their_time() -> None:
    draw = inference_ids(lambda: 1_700_000_000.9)
    first, second = draw(), draw()
    parsed = uuid.UUID(first)
    assert parsed.version == 7
    assert str(parsed) == first
    assert int(first.replace("-", "")[:12], 16) == 1_700_000_000_000
    assert first[:-12] == second[:-12]
    assert int(second[-12:], 16) == int(first[-12:], 16) + 1
