"""Shadow variants: copies of answered requests, sent to the shadows off the request path.

A live endpoint with shadow variants (CreateEndpointConfig's ShadowProductionVariants) hands
every request production answered to its `ShadowCopier` (`LiveEndpoint.shadows`). `copy` runs on
the request path and does only cheap, non-blocking work: one random draw per shadow variant
(`ShadowTarget.fraction`, see `shadow_fraction`), the data-capture offer of production's answer,
and one `put_nowait` per selected shadow onto that shadow's bounded queue. A copy that finds its
queue full is dropped and counted (`splitserve_shadow_dropped_total`); nothing waits.

Each shadow variant has its own queue and `ShadowSettings.senders` tasks that forward its copies
to its healthy instances, one at a time each, so a slow or dead shadow fills only its own queue:
it never changes production's latency or errors, nor starves another shadow. A shadow's answers
are counted under its own variant name (Invocations, ModelLatency, errors: its `VariantRecorder`,
so Prometheus, the minute rings and CloudWatch) and, when production's answer was selected for
data capture, captured under its variant name with production's eventId and InferenceId
(docs/architecture.md, "Shadow variants").
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter

from prometheus_client import Counter

from splitserve.capture.writer import CaptureSink
from splitserve.config import ShadowSettings
from splitserve.contract.upstream import UpstreamError, UpstreamResponse
from splitserve.metrics.prometheus import SHADOW_COPIES, SHADOW_DROPPED
from splitserve.metrics.recorder import VariantRecorder
from splitserve.runtime.failures import FailureLog
from splitserve.runtime.registry import InstanceClient

__all__ = ["ShadowCopier", "ShadowInstance", "ShadowTarget", "shadow_fraction"]

log = logging.getLogger(__name__)

_INVOCATIONS_PATH = b"/invocations"
_POST = b"POST"


def shadow_fraction(shadow_weight: float, production_weights: Sequence[float]) -> float:
    """The share of requests copied to a shadow variant of weight `shadow_weight`.

    SageMaker's reading (docs/sagemaker-api.md, "Shadow variants"): the shadow's weight relative
    to production's; with several production variants, relative to their sum, which is all
    traffic. Capped at 1 (each request is copied at most once to each shadow). When every
    production weight is 0 (callers only ever name a TargetVariant), a shadow of weight above 0
    gets every request.
    """
    if shadow_weight <= 0.0:
        return 0.0
    total = sum(production_weights)
    if total <= 0.0:
        return 1.0
    return min(1.0, shadow_weight / total)


@dataclass(frozen=True, slots=True)
class ShadowInstance:
    """One instance of a shadow variant: its name, its connection and its health."""

    name: str
    client: InstanceClient
    healthy: bool


@dataclass(frozen=True, slots=True)
class ShadowTarget:
    """One shadow variant as copies see it now (replaced whole by `ShadowCopier.retarget`).

    Attributes:
        variant: the shadow's VariantName.
        fraction: the share of requests copied to it (0 to 1).
        instances: its instances; a copy goes to one healthy one, drawn at random.
    """

    variant: str
    fraction: float
    instances: tuple[ShadowInstance, ...]


# One queued copy: (the production variant, body, forwarded headers, request Content-Type,
# InferenceId, eventId, whether production's answer was captured, when it was queued).
_Copy = tuple[str, bytes, Sequence[tuple[bytes, bytes]], str | None, str | None, str, bool, float]


class _Lane:
    """One shadow variant's queue, senders and counters."""

    __slots__ = ("copies", "dropped", "queue", "recorder", "senders", "target")

    def __init__(
        self, endpoint_name: str, target: ShadowTarget, recorder: VariantRecorder, size: int
    ) -> None:
        self.target = target
        self.recorder = recorder
        self.queue: asyncio.Queue[_Copy] = asyncio.Queue(size)
        self.senders: list[asyncio.Task[None]] = []
        self.copies: Counter = SHADOW_COPIES.labels(endpoint_name, target.variant)
        self.dropped: Counter = SHADOW_DROPPED.labels(endpoint_name, target.variant)


class ShadowCopier:
    """Copies one endpoint generation's answered requests to its shadow variants.

    Args:
        endpoint_name: the endpoint.
        targets: its shadow variants, in the configuration's order.
        recorders: each shadow variant's recorder, by variant name.
        capture: the generation's data capture (production's and the shadows' targets), or None.
        settings: queue size, senders per shadow, the copies' timeout.
        failures: where failed copies are logged (rate-limited per variant).
        draw: the random draw that selects copies (tests pass a seeded one).
    """

    def __init__(
        self,
        endpoint_name: str,
        targets: Sequence[ShadowTarget],
        recorders: Mapping[str, VariantRecorder],
        capture: CaptureSink | None,
        settings: ShadowSettings,
        failures: FailureLog,
        draw: Callable[[], float] = random.random,  # sampling, not secrets
    ) -> None:
        self._endpoint_name = endpoint_name
        self._capture = capture
        self._settings = settings
        self._failures = failures
        self._draw = draw
        # eventIds from a PRNG seeded by the OS: uuid4 reads the OS's random source on every call,
        # which is several times slower on the request path (a VM's getrandom is a system call).
        self._bits = random.Random().getrandbits  # ids, not secrets
        self._lanes = [
            _Lane(endpoint_name, target, recorders[target.variant], settings.queue_size)
            for target in targets
        ]
        self._started = False
        self._closed = False

    @property
    def targets(self) -> tuple[ShadowTarget, ...]:
        """The shadow variants as copies see them now."""
        return tuple(lane.target for lane in self._lanes)

    def retarget(self, targets: Sequence[ShadowTarget]) -> None:
        """Copy by `targets` from now on (new fractions, instances or health); a variant not
        among this generation's shadows is ignored. Queued copies go to the new instances."""
        by_name = {target.variant: target for target in targets}
        for lane in self._lanes:
            lane.target = by_name.get(lane.target.variant, lane.target)

    def copy(
        self,
        variant: str,
        body: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        content_type: str | None,
        inference_id: str | None,
        targeted: bool,
        response: UpstreamResponse,
        response_content_type: bytes | None,
        model_seconds: float,
        event_id: str | None = None,
    ) -> None:
        """Queue copies of one request production answered; never blocks, never raises.

        Args:
            variant: the production variant that answered.
            body, headers, content_type, inference_id: the request, as forwarded to production.
            targeted: the caller named the production variant (TargetVariant).
            response: production's answer.
            response_content_type: its Content-Type header.
            model_seconds: production's model latency, recorded with the capture for
                `splitserve evaluate --shadow`.
            event_id: the eventId production's capture record (and the copies') carry: the
                inference id the gateway drew for a request without InferenceId; None draws one
                when a copy is made.
        """
        if self._closed:
            return
        draw = self._draw
        selected = [
            lane
            for lane in self._lanes
            if lane.target.fraction >= 1.0
            or (lane.target.fraction > 0.0 and draw() < lane.target.fraction)
        ]
        if event_id is None:
            event_id = _uuid4_text(self._bits(128)) if selected else ""
        captured = False
        if self._capture is not None:
            captured = self._capture.offer(
                variant,
                content_type,
                inference_id,
                body,
                response.body,
                response_content_type,
                targeted,
                event_id or None,
                {"modelLatencyMicros": round(model_seconds * 1e6)} if selected else None,
            )
        if not selected:
            return
        if not self._started:
            self._start()
        queued = perf_counter()
        item: _Copy = (
            variant,
            body,
            headers,
            content_type,
            inference_id,
            event_id,
            captured,
            queued,
        )
        for lane in selected:
            lane.copies.inc()
            if lane.queue.full():  # checked first: a raised QueueFull costs more than the check
                lane.dropped.inc()
            else:
                lane.queue.put_nowait(item)

    def close(self) -> None:
        """Stop the senders; copies still queued are dropped and counted. Idempotent."""
        self._closed = True
        for lane in self._lanes:
            for sender in lane.senders:
                sender.cancel()
            lane.senders.clear()
            if lane.queue.qsize():
                lane.dropped.inc(lane.queue.qsize())
            while not lane.queue.empty():
                lane.queue.get_nowait()

    def _start(self) -> None:
        """Start every lane's senders (on the first copy: the loop runs by then)."""
        self._started = True
        for lane in self._lanes:
            lane.senders = [
                asyncio.ensure_future(self._send_loop(lane)) for _ in range(self._settings.senders)
            ]

    async def _send_loop(self, lane: _Lane) -> None:
        while True:
            item = await lane.queue.get()
            try:
                await self._send(lane, item)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the lane: later copies still go
                log.exception(
                    "endpoint %s: copy to shadow variant %s failed",
                    self._endpoint_name,
                    lane.target.variant,
                )

    async def _send(self, lane: _Lane, item: _Copy) -> None:
        """Forward one copy to a healthy instance of the lane's shadow and record the answer."""
        variant, body, headers, content_type, inference_id, event_id, captured, queued = item
        target = lane.target
        healthy = [instance for instance in target.instances if instance.healthy]
        if not healthy:
            lane.dropped.inc()
            return
        instance = healthy[0] if len(healthy) == 1 else random.choice(healthy)
        recorder = lane.recorder
        recorder.invoked(len(healthy))
        sent = perf_counter()
        try:
            response = await instance.client.request(
                _POST, _INVOCATIONS_PATH, headers, body, self._settings.timeout_seconds
            )
        except UpstreamError as error:
            recorder.model_error(0, None)
            self._failures.failed(
                self._endpoint_name, target.variant, instance.name, "shadow copy", str(error)
            )
            return
        model_seconds = perf_counter() - sent
        if response.status >= 300:
            recorder.model_error(response.status, model_seconds)
            self._failures.failed(
                self._endpoint_name,
                target.variant,
                instance.name,
                response.status,
                response.body.decode("utf-8", "replace"),
            )
            return
        # The gateway's share of a copy: the time it waited in the shadow's queue.
        recorder.answered(model_seconds, sent - queued)
        if captured and self._capture is not None:
            self._capture.offer_selected(
                target.variant,
                content_type,
                inference_id,
                body,
                response.body,
                _content_type(response),
                False,
                event_id,
                {"shadowOf": variant, "modelLatencyMicros": round(model_seconds * 1e6)},
            )


def _uuid4_text(bits: int) -> str:
    """A random (version 4, RFC 4122 variant) UUID's text, from 128 random bits."""
    bits = (bits & ~(0xF000 << 64)) | (0x4000 << 64)
    bits = (bits & ~(0xC000 << 48)) | (0x8000 << 48)
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _content_type(response: UpstreamResponse) -> bytes | None:
    """The answer's first Content-Type header."""
    for name, value in response.headers:
        if name == b"content-type":
            return value
    return None
