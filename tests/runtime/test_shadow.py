"""The shadow copier, called directly: which requests are copied, the bounded queues and their
drops, a slow or dead shadow, the shadows' metrics and the capture records they share."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from splitserve.capture.spec import DataCapture
from splitserve.capture.writer import CaptureSink, CaptureWriter
from splitserve.config import CaptureSettings, ShadowSettings, StatsSettings
from splitserve.contract.upstream import UpstreamConnectError, UpstreamResponse
from splitserve.metrics.minutes import MinuteStore
from splitserve.metrics.prometheus import REGISTRY
from splitserve.metrics.recorder import VariantRecorder
from splitserve.runtime.failures import FailureLog
from splitserve.runtime.shadow import ShadowCopier, ShadowInstance, ShadowTarget, shadow_fraction

HEADERS = ((b"Content-Type", b"text/csv"),)
ANSWER = UpstreamResponse(200, [(b"content-type", b"text/csv")], b"0.9")


class FakeShadow:
    """An instance client that answers `body` after `gate` opens (at once without one), or
    raises `error`."""

    def __init__(
        self,
        body: bytes = b"0.4",
        *,
        status: int = 200,
        gate: asyncio.Event | None = None,
        error: Exception | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.gate = gate
        self.error = error
        self.received: list[bytes] = []
        self.waiting = 0

    async def request(
        self,
        method: bytes,
        path: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        timeout: float,  # noqa: ASYNC109 (the protocol's signature)
    ) -> UpstreamResponse:
        self.received.append(body)
        if self.gate is not None:
            self.waiting += 1
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return UpstreamResponse(self.status, [(b"content-type", b"text/csv")], self.body)


def sample(name: str, endpoint: str, variant: str) -> float:
    labels = {"endpoint_name": endpoint, "variant_name": variant}
    return REGISTRY.get_sample_value(name, labels) or 0.0


def copier(
    endpoint: str,
    shadows: dict[str, tuple[float, FakeShadow | None]],
    *,
    capture: CaptureSink | None = None,
    queue_size: int = 16,
    senders: int = 1,
) -> ShadowCopier:
    """A copier for `endpoint` whose shadows are name -> (fraction, client; None: unhealthy)."""
    minutes = MinuteStore(StatsSettings())
    names = ["A", *shadows]
    recorders = {
        name: VariantRecorder.resolve(endpoint, name, minutes.variant(endpoint, name))
        for name in names
    }
    targets = [
        ShadowTarget(
            name,
            fraction,
            (ShadowInstance(f"{name}/0", client or FakeShadow(), client is not None),),
        )
        for name, (fraction, client) in shadows.items()
    ]
    return ShadowCopier(
        endpoint,
        targets,
        recorders,
        capture,
        ShadowSettings(queue_size=queue_size, senders=senders, timeout_seconds=5.0),
        FailureLog(10, 200),
        draw=random.Random(7).random,
    )


def copy(shadows: ShadowCopier, body: bytes = b"1,2,3", inference_id: str | None = None) -> None:
    shadows.copy("A", body, HEADERS, "text/csv", inference_id, False, ANSWER, b"text/csv", 0.002)


async def drained(*clients: FakeShadow, count: int) -> None:
    """Wait until the clients received `count` copies between them."""
    # Polling: the copies arrive from the copier's own tasks, which nothing here can await.
    while sum(len(client.received) for client in clients) < count:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)  # the senders record the answers


@pytest.mark.parametrize(
    ("weight", "production", "fraction"),
    [
        (0.5, [1.0], 0.5),
        (1.0, [1.0], 1.0),
        (3.0, [1.0], 1.0),
        (1.0, [1.0, 3.0], 0.25),
        (0.0, [1.0], 0.0),
        (1.0, [0.0], 1.0),
        (0.0, [0.0], 0.0),
    ],
)
def test_a_shadows_share_is_its_weight_relative_to_production(
    weight: float, production: list[float], fraction: float
) -> None:
    assert shadow_fraction(weight, production) == fraction


async def test_copies_follow_each_shadows_fraction() -> None:
    full, half, none = FakeShadow(), FakeShadow(), FakeShadow()
    shadows = copier(
        "frac", {"S": (1.0, full), "H": (0.5, half), "Z": (0.0, none)}, queue_size=1000
    )
    for index in range(400):
        copy(shadows, str(index).encode())
    await drained(
        full, half, count=400 + int(sample("splitserve_shadow_copies_total", "frac", "H"))
    )
    assert len(full.received) == 400
    assert 150 < len(half.received) < 250
    assert none.received == []
    assert sample("splitserve_invocations_total", "frac", "S") == 400
    assert sample("splitserve_invocations_total", "frac", "A") == 0  # never production's counts
    assert sample("splitserve_shadow_dropped_total", "frac", "S") == 0
    shadows.close()


async def test_a_full_queue_drops_the_copy_and_counts_it() -> None:
    gate = asyncio.Event()
    stuck = FakeShadow(gate=gate)
    shadows = copier("full", {"S": (1.0, stuck)}, queue_size=3, senders=1)
    for _ in range(10):
        copy(shadows)  # returns at once: nothing on the request path waits for the shadow
    await asyncio.sleep(0.01)
    # The queue held three before the sender first ran, so seven were dropped; the sender is
    # stuck on one of the three.
    assert stuck.waiting == 1
    assert sample("splitserve_shadow_copies_total", "full", "S") == 10
    assert sample("splitserve_shadow_dropped_total", "full", "S") == 7
    shadows.close()  # the two still queued are dropped too
    assert sample("splitserve_shadow_dropped_total", "full", "S") == 9
    copy(shadows)  # a closed copier takes nothing
    assert sample("splitserve_shadow_copies_total", "full", "S") == 10


async def test_a_slow_shadow_does_not_hold_another() -> None:
    gate = asyncio.Event()
    slow, fast = FakeShadow(gate=gate), FakeShadow()
    shadows = copier("lanes", {"Slow": (1.0, slow), "Fast": (1.0, fast)}, queue_size=2)
    for _ in range(20):
        copy(shadows)
        await asyncio.sleep(0.001)  # requests come one after another; the fast shadow keeps up
    await drained(fast, count=20)
    assert len(fast.received) == 20
    assert sample("splitserve_shadow_dropped_total", "lanes", "Fast") == 0
    assert sample("splitserve_shadow_dropped_total", "lanes", "Slow") == 17
    gate.set()
    shadows.close()


async def test_shadow_failures_count_under_the_shadow() -> None:
    dead = FakeShadow(error=UpstreamConnectError("refused"))
    broken = FakeShadow(status=500, body=b"boom")
    shadows = copier("fail", {"Dead": (1.0, dead), "Broken": (1.0, broken), "Down": (1.0, None)})
    for _ in range(5):
        copy(shadows)
    await drained(dead, broken, count=10)
    assert sample("splitserve_invocation_model_errors_total", "fail", "Dead") == 5
    assert sample("splitserve_invocation_model_errors_total", "fail", "Broken") == 5
    assert sample("splitserve_invocation_5xx_errors_total", "fail", "Broken") == 5
    # No healthy instance: the copies are dropped, not sent.
    assert sample("splitserve_shadow_dropped_total", "fail", "Down") == 5
    assert sample("splitserve_invocation_model_errors_total", "fail", "A") == 0
    shadows.close()


async def test_shadow_answers_are_captured_with_productions_ids(tmp_path: Path) -> None:
    writer = CaptureWriter(CaptureSettings(seed=1))
    config = DataCapture(
        enable_capture=True,
        sampling_percentage=100,
        destination_s3_uri="s3://capture/shadow",
        destination=tmp_path,
        kms_key_id=None,
        capture_input=True,
        capture_output=True,
        csv_content_types=("text/csv",),
        json_content_types=(),
    )
    sink = writer.sink("cap", ["A", "S", "H"], config)
    assert sink is not None
    shadow, never = FakeShadow(b"0.4"), FakeShadow()
    shadows = copier("cap", {"S": (1.0, shadow), "H": (0.0, never)}, capture=sink)
    copy(shadows, b"1,2", inference_id="inf-1")
    copy(shadows, b"3,4")
    await drained(shadow, count=2)
    shadows.close()
    assert await asyncio.to_thread(writer.close)

    def records(variant: str) -> list[dict[str, Any]]:
        lines = []
        for path in sorted((tmp_path / "cap" / variant).rglob("*.jsonl")):
            lines += [json.loads(line) for line in path.read_text().splitlines()]
        return lines

    production, copied = records("A"), records("S")
    assert not (tmp_path / "cap" / "H").exists()
    assert len(production) == len(copied) == 2
    by_event = {r["eventMetadata"]["eventId"]: r for r in copied}
    for record in production:
        metadata = record["eventMetadata"]
        assert isinstance(metadata, dict)
        twin = by_event[metadata["eventId"]]["eventMetadata"]
        assert isinstance(twin, dict)
        assert twin.get("inferenceId") == metadata.get("inferenceId")
        assert twin["splitserve"]["shadowOf"] == "A"
        assert metadata["splitserve"]["modelLatencyMicros"] == 2000
        assert uuid.UUID(metadata["eventId"]).version == 4  # a shared eventId is a UUID too
    assert {r["eventMetadata"].get("inferenceId") for r in production} == {"inf-1", None}
    outputs = {r["captureData"]["endpointOutput"]["data"] for r in copied}
    assert outputs == {"0.4"}


async def test_retarget_moves_copies_to_new_instances_and_fractions() -> None:
    old, new = FakeShadow(), FakeShadow()
    shadows = copier("move", {"S": (1.0, old)})
    copy(shadows)
    await drained(old, count=1)
    shadows.retarget(
        [
            ShadowTarget("S", 1.0, (ShadowInstance("S/1", new, True),)),
            ShadowTarget("Unknown", 1.0, ()),
        ]
    )
    copy(shadows)
    await drained(new, count=1)
    shadows.retarget([ShadowTarget("S", 0.0, (ShadowInstance("S/1", new, True),))])
    copy(shadows)
    await asyncio.sleep(0.01)
    assert (len(old.received), len(new.received)) == (1, 1)
    assert [target.variant for target in shadows.targets] == ["S"]
    shadows.close()
