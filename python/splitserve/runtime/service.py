"""InvokeEndpoint: route one request to a variant and an instance, forward it, report the answer.

No aiohttp here: the handler passes the path, the headers that matter and the body bytes; the
service returns what goes back, or raises an error from `splitserve.errors`, which the runtime
plane's error boundary puts on the wire. The request path makes one router call (it returns the
variant, the instance, the variant's healthy-instance count and whether it failed over), one
forward over a kept-alive connection, and records each event once through the variant's
`VariantRecorder`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import re
from collections.abc import Callable, Sequence
from time import perf_counter, time
from typing import NamedTuple, Protocol

from splitserve._router import (
    NoHealthyInstanceError,
    NoRoutableVariantError,
    UnknownVariantError,
)
from splitserve.config import MAX_NAME_LENGTH, NAME_PATTERN, Settings
from splitserve.contract.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)
from splitserve.errors import (
    InvocationValidationError,
    ModelError,
    ModelErrorDetail,
    PayloadTooLarge,
    ServiceUnavailable,
)
from splitserve.runtime.failures import FailureLog
from splitserve.runtime.registry import EndpointRegistry, LiveEndpoint

log = logging.getLogger(__name__)

# The control plane names variants by the same rule (config.NAME_PATTERN).
_NAME = re.compile(NAME_PATTERN)
_INVOCATIONS_PATH = b"/invocations"
_POST = b"POST"
# How much of a worker's error body a ModelError message quotes (the API's Message max is 2048).
_QUOTED_BODY_CHARS = 1024


class Invocation(NamedTuple):
    """One InvokeEndpoint request, as the handler read it (immutable; a NamedTuple because one is
    built per request and a tuple is the cheapest immutable record to build).

    Attributes:
        endpoint_name: from the URL path.
        body: the raw payload.
        content_type, accept, custom_attributes: passed through to the worker when present.
        target_variant: X-Amzn-SageMaker-Target-Variant, overriding the weights.
        sticky_key: X-Splitserve-Sticky-Key, hashed to pick the same variant for the same key.
        inference_id: X-Amzn-SageMaker-Inference-Id: the invocation's id (data capture, feedback);
            None lets the gateway draw one.
        target_model: X-Amzn-SageMaker-Target-Model (multi-model endpoints only; refused here).
    """

    endpoint_name: str
    body: bytes
    content_type: str | None = None
    accept: str | None = None
    custom_attributes: str | None = None
    target_variant: str | None = None
    sticky_key: str | None = None
    inference_id: str | None = None
    target_model: str | None = None


class InvocationResult(NamedTuple):
    """What goes back to the caller: the worker's body and content type, the variant chosen, and
    the invocation's id (the caller's InferenceId, else one the gateway drew)."""

    variant: str
    body: bytes
    content_type: bytes | None
    custom_attributes: bytes | None
    inference_id: str


class AnsweredInvocations(Protocol):
    """Where the service hands every answered invocation's id, variant and answer, for feedback
    to join labels on later (`online.index.InferenceIndex` in the gateway)."""

    def record(
        self,
        endpoint: str,
        variant: str,
        inference_id: str,
        targeted: bool,
        content_type: bytes | None,
        body: bytes,
    ) -> None:
        """Keep one answered invocation; never blocks, never raises."""
        ...


def inference_ids(clock: Callable[[], float] = time) -> Callable[[], str]:
    """A drawer of inference ids for invocations that came without one: UUIDs of version 7
    (RFC 9562) that say when they were drawn (feedback tells a label past the index's retention
    from an unknown one by it) and are unique across replicas and restarts.

    The time part is the draw's whole second (in milliseconds, as the layout has it), rebuilt
    once a second; bits drawn once per process follow, then a counter started at a random point
    (always twelve hex digits). A draw is a clock read, a counter step, hex() and one
    concatenation: a uuid4 per request reads the OS's random source and formats 128 bits. Data
    capture records the ids as eventIds, which are UUIDs in SageMaker's records."""
    bits = os.urandom(4).hex()
    middle = f"-7{bits[:3]}-{'89ab'[int(bits[3], 16) % 4]}{bits[4:7]}-"
    counter = itertools.count((1 << 44) + int.from_bytes(os.urandom(6)) % (1 << 46))
    second = -1
    prefix = ""

    def draw() -> str:
        nonlocal second, prefix
        now = int(clock())
        if now != second:
            second = now
            milliseconds = now * 1000
            prefix = f"{milliseconds >> 16:08x}-{milliseconds & 0xFFFF:04x}{middle}"
        return prefix + hex(next(counter))[2:]

    return draw


class InvocationService:
    """Routes and forwards InvokeEndpoint requests to the live endpoints in a registry."""

    def __init__(
        self,
        settings: Settings,
        registry: EndpointRegistry,
        answered: AnsweredInvocations | None = None,
    ) -> None:
        """Serve `registry`'s endpoints; hand each answered invocation to `answered` (None: to
        nothing) so labels can be joined to it later."""
        self._registry = registry
        self._answered = answered
        self._draw_id = inference_ids()
        self._account_id = settings.account.account_id
        self._max_payload = settings.max_payload_bytes
        self._timeout = settings.workers.invocation_timeout_seconds
        self._failures = FailureLog(
            settings.logs.failures_per_second, settings.logs.failure_message_chars
        )

    async def invoke(self, request: Invocation) -> InvocationResult:
        """Route `request` to one instance of one variant and return its answer.

        Raises:
            InvocationValidationError: unknown or failed endpoint, a TargetVariant naming no
                variant, an untargeted request when every weight is 0, bad header values.
            PayloadTooLarge: the body is over the 6 MiB limit.
            ServiceUnavailable: the endpoint is being deployed, or no instance can take the
                request now (on an endpoint with failover, an untargeted request goes to another
                variant first), or the instance refused the connection (the request never
                reached it).
            ModelError: the worker answered non-2xx, or not completely within the timeout.
        """
        started = perf_counter()
        live = self._registry.get(request.endpoint_name)
        if live is None:
            raise self._not_routable(request.endpoint_name)
        if (
            request.target_model is not None
            or request.target_variant is not None
            or request.inference_id is not None
            or request.sticky_key is not None
            or len(request.body) > self._max_payload
        ):
            self._check(request)  # most requests carry none of these: no call for them
        # Before routing: a refused header value must not count as the variant's invocation.
        headers = _forwarded_headers(
            request.content_type, request.accept, request.custom_attributes
        )
        try:  # inline rather than a helper: one Python call fewer per request
            route = live.router.route(request.target_variant, request.sticky_key)
        except (UnknownVariantError, NoRoutableVariantError) as error:
            raise InvocationValidationError(str(error)) from None
        except NoHealthyInstanceError as error:
            raise ServiceUnavailable(str(error)) from None
        variant = route.variant
        if live.variant_names is not None:
            # A stepped UpdateEndpoint routes the new fleet's variants under names of their own
            # beside the old fleet's; the caller, metrics and capture see the variant's name.
            variant = live.variant_names[variant]
        recorder = live.recorders[variant]
        recorder.invoked(route.healthy_instances)
        if route.failed_over:
            recorder.failed_over()
        instance = route.instance
        sent = perf_counter()
        try:
            response = await live.pools[instance.name].request(
                _POST,
                _INVOCATIONS_PATH,
                headers,
                request.body,
                self._timeout,
            )
        except UpstreamError as error:
            recorder.model_error(0, None)
            raise self._upstream_failure(error, live, variant, instance.name) from error
        finally:
            live.router.release(instance)
        model_seconds = perf_counter() - sent
        status = response.status
        if status >= 300:
            recorder.model_error(status, model_seconds)
            raise self._model_error(response, live, variant, instance.name)
        recorder.answered(model_seconds, perf_counter() - started - model_seconds)
        content_type, custom_attributes = _answer_headers(response)
        # The caller's InferenceId, else one drawn here, which data capture records as the
        # eventId: either way the id capture's readers join ground truth on (inferenceId when
        # present, else eventId; docs/sagemaker-api.md, '6. Data capture').
        inference_id = request.inference_id
        event_id = None
        if inference_id is None:
            inference_id = event_id = self._draw_id()
        targeted = request.target_variant is not None
        if self._answered is not None:
            # A tuple appended to a bounded buffer; written to the state database off this path.
            self._answered.record(
                live.name, variant, inference_id, targeted, content_type, response.body
            )
        if live.shadows is not None:
            # Queues the copies to the shadow variants (a draw and a non-blocking put each; sent
            # by their own tasks, never awaited here) and offers production's answer to capture.
            live.shadows.copy(
                variant,
                request.body,
                headers,
                request.content_type,
                request.inference_id,
                targeted,
                response,
                content_type,
                model_seconds,
                event_id,
            )
        elif live.capture is not None:
            # Only successful invocations are captured: a failed one has no model output to monitor.
            # offer() is a random draw, a tuple and a non-blocking put; it never raises.
            live.capture.offer(
                variant,
                request.content_type,
                request.inference_id,
                request.body,
                response.body,
                content_type,
                targeted,
                event_id,
            )
        # Positional, in the field order (tests/runtime/test_routes.py checks it): ~300 ns a
        # request less than keywords on CPython 3.11 (docs/benchmarks.md, 'Request-path cost').
        return InvocationResult(
            variant, response.body, content_type, custom_attributes, inference_id
        )

    def _not_routable(self, endpoint_name: str) -> Exception:
        """The error for an endpoint with no live generation: being deployed (503, which boto3
        retries), failed (400 with its FailureReason) or unknown (400 not found)."""
        unroutable = self._registry.unroutable(endpoint_name)
        if unroutable is None:
            return InvocationValidationError(
                f"Endpoint {endpoint_name} of account {self._account_id} not found."
            )
        if unroutable.failure_reason is None:
            return ServiceUnavailable(
                f"Endpoint {endpoint_name} of account {self._account_id} is being deployed and "
                "cannot take requests yet; try again."
            )
        return InvocationValidationError(
            f"Endpoint {endpoint_name} of account {self._account_id} failed and cannot take "
            f"requests: {unroutable.failure_reason}"
        )

    def _check(self, request: Invocation) -> None:
        """Refuse what SageMaker's runtime refuses before routing."""
        if len(request.body) > self._max_payload:
            raise PayloadTooLarge(
                f"Request body of {len(request.body)} bytes is over the limit of "
                f"{self._max_payload} bytes."
            )
        if request.target_model is not None:
            raise InvocationValidationError(
                f"Endpoint {request.endpoint_name} is not a multi-model endpoint and does not "
                "support target model header."
            )
        target = request.target_variant
        if target is not None and (len(target) > MAX_NAME_LENGTH or not _NAME.fullmatch(target)):
            raise InvocationValidationError(
                f"1 validation error detected: Value '{target[:100]}' at 'targetVariant' failed to "
                "satisfy constraint: Member must satisfy regular expression pattern: "
                "^[a-zA-Z0-9](-*[a-zA-Z0-9])*"
            )
        if request.inference_id is not None and not _valid_inference_id(request.inference_id):
            raise InvocationValidationError(
                "1 validation error detected: Value at 'inferenceId' failed to satisfy constraint: "
                "Member must have length between 1 and 64, start with a non-space character and "
                "hold only printable characters"
            )
        if request.sticky_key is not None and not request.sticky_key.isascii():
            raise _not_ascii("X-Splitserve-Sticky-Key")

    def _upstream_failure(
        self, error: UpstreamError, live: LiveEndpoint, variant: str, instance: str
    ) -> Exception:
        """The wire error for a forward that got no complete answer; logged (rate-limited)."""
        if isinstance(error, UpstreamConnectError):
            # The request never reached the worker (it is restarting): retryable, so boto3 retries.
            self._failures.failed(live.name, variant, instance, "unreachable", str(error))
            if live.unreachable is not None:
                live.unreachable(instance)
            return ServiceUnavailable("The model instance is not reachable now; try again.")
        if isinstance(error, UpstreamTimeout):
            message = (
                "Your invocation timed out while waiting for a response from container primary. "
                "Review the latency metrics for each container, resolve the issue, and try again."
            )
            self._failures.failed(live.name, variant, instance, "timeout", str(error))
        else:
            message = "The connection to container primary broke before it answered."
            self._failures.failed(live.name, variant, instance, "broken answer", str(error))
        return ModelError(
            f'Received server error (0) from primary with message "{message}".',
            ModelErrorDetail(0, message, log_stream_arn(live, instance)),
        )

    def _model_error(
        self, response: UpstreamResponse, live: LiveEndpoint, variant: str, instance: str
    ) -> ModelError:
        """SageMaker's ModelError for a worker that answered with a non-2xx status; logged
        (rate-limited)."""
        status = response.status
        original = response.body.decode("utf-8", "replace")
        self._failures.failed(live.name, variant, instance, status, original)
        kind = "client" if status < 500 else "server"
        quoted = original[:_QUOTED_BODY_CHARS]
        arn = log_stream_arn(live, instance)
        return ModelError(
            f'Received {kind} error ({status}) from primary with message "{quoted}". '
            f"See {arn} for more information.",
            ModelErrorDetail(status, original[:2048], arn),
        )


def log_stream_arn(live: LiveEndpoint, instance: str) -> str:
    """The LogStreamArn of `instance`'s log: the endpoint's log group, then `:log-stream:` and
    the instance name less its endpoint (`Variant/g<generation>/<index>`), which is the path of
    its log file under the state directory's `logs/<endpoint>/` (README, "When something
    fails")."""
    prefix = live.name + "/"
    stream = instance[len(prefix) :] if instance.startswith(prefix) else instance
    return f"{live.log_stream_arn}:log-stream:{stream}"


def _answer_headers(response: UpstreamResponse) -> tuple[bytes | None, bytes | None]:
    """The worker's Content-Type and X-Amzn-SageMaker-Custom-Attributes (the first of each), read
    in one pass over its headers."""
    content_type = custom_attributes = None
    for name, value in response.headers:
        if name == b"content-type":
            if content_type is None:
                content_type = value
        elif name == b"x-amzn-sagemaker-custom-attributes" and custom_attributes is None:
            custom_attributes = value
    return content_type, custom_attributes


def _valid_inference_id(value: str) -> bool:
    """InferenceId's constraint: 1 to 64 printable characters, the first not a space."""
    return 0 < len(value) <= 64 and value.isprintable() and not value[0].isspace()


def _not_ascii(header: str) -> InvocationValidationError:
    """The refusal of a header value holding a byte outside ASCII (or invalid UTF-8)."""
    return InvocationValidationError(
        f"The {header} header holds a character outside ASCII; header values must be ASCII."
    )


# Cached: clients send the same few Content-Type and Accept values again and again, and a hit is
# answered in C, without a Python call. Bounded, so distinct custom attributes cannot grow it. A
# value that is refused raises, and a raise is never cached, so each refusal is checked anew.
@functools.lru_cache(maxsize=256)
def _forwarded_headers(
    content_type: str | None, accept: str | None, custom_attributes: str | None
) -> Sequence[tuple[bytes, bytes]]:
    """The headers the container contract passes through to the worker.

    Raises:
        InvocationValidationError: a value holds a character outside ASCII (the API allows only
            ASCII in these headers; aiohttp hands invalid UTF-8 over as surrogates).
    """
    headers: list[tuple[bytes, bytes]] = []
    for name, value in (
        ("Content-Type", content_type),
        ("Accept", accept),
        ("X-Amzn-SageMaker-Custom-Attributes", custom_attributes),
    ):
        if value is not None:
            if not value.isascii():
                raise _not_ascii(name)
            headers.append((name.encode(), value.encode("ascii")))
    return tuple(headers)
