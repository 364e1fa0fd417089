"""InvokeEndpoint: route one request to a variant and an instance, forward it, report the answer.

No aiohttp here: the handler passes the path, the headers that matter and the body bytes; the
service returns what goes back, or raises an error from `splitserve.errors` (or the router's own),
which the app's middleware puts on the wire. The request path makes one router call, one forward
over a kept-alive connection, and records metrics through label children resolved when the
endpoint went live.
"""

from __future__ import annotations

import functools
import logging
import random
import re
from time import perf_counter
from typing import NamedTuple

from splitserve._router import NoHealthyInstanceError, UnknownInstanceError
from splitserve.config import Settings
from splitserve.errors import (
    InvocationValidationError,
    ModelError,
    ModelErrorDetail,
    PayloadTooLarge,
    ServiceUnavailable,
)
from splitserve.runtime.registry import EndpointRegistry, LiveEndpoint
from splitserve.contract.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)

log = logging.getLogger(__name__)

_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")
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
        inference_id: X-Amzn-SageMaker-Inference-Id, kept for data capture.
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
    """What goes back to the caller: the worker's body and content type, and the variant chosen."""

    variant: str
    body: bytes
    content_type: bytes | None
    custom_attributes: bytes | None


class InvocationService:
    """Routes and forwards InvokeEndpoint requests to the live endpoints in a registry."""

    def __init__(self, settings: Settings, registry: EndpointRegistry) -> None:
        self._registry = registry
        self._account_id = settings.account.account_id
        self._max_payload = settings.max_payload_bytes
        self._timeout = settings.workers.invocation_timeout_seconds

    async def invoke(self, request: Invocation) -> InvocationResult:
        """Route `request` to one instance of one variant and return its answer.

        Raises:
            InvocationValidationError: unknown endpoint or one not InService, bad header values.
            PayloadTooLarge: the body is over the 6 MiB limit.
            UnknownVariantError, NoRoutableVariantError: from the router, for TargetVariant
                naming no variant, or an untargeted request when every weight is zero.
            NoHealthyInstanceError, ServiceUnavailable: no instance can take the request now
                (on an endpoint with failover, an untargeted one goes to another variant first).
            ModelError: the worker answered non-2xx, or not within the timeout.
        """
        started = perf_counter()
        live = self._registry.get(request.endpoint_name)
        if live is None:
            raise InvocationValidationError(
                f"Endpoint {request.endpoint_name} of account {self._account_id} not found."
            )
        if (
            request.target_model is not None
            or request.target_variant is not None
            or request.inference_id is not None
            or len(request.body) > self._max_payload
        ):
            self._check(request)  # most requests carry none of these: no call for them
        try:
            variant, instance = live.router.route(request.target_variant, request.sticky_key)
        except NoHealthyInstanceError:
            rerouted = None
            if live.failover and request.target_variant is None:
                rerouted = _fail_over(live)
            if rerouted is None:
                raise
            variant, instance = rerouted
        metrics = live.metrics[variant]
        metrics.invocations.inc()
        # CloudWatch's InvocationsPerInstance: each routed request adds 1/healthy instances.
        healthy = len(live.router.healthy_instances(variant)) or 1
        metrics.invocations_per_instance.inc(1.0 / healthy)
        metrics.minutes.count_invocation()
        try:
            sent = perf_counter()
            try:
                response = await live.pools[instance].request(
                    _POST,
                    _INVOCATIONS_PATH,
                    _forwarded_headers(
                        request.content_type, request.accept, request.custom_attributes
                    ),
                    request.body,
                    self._timeout,
                )
            finally:
                model_seconds = perf_counter() - sent
            metrics.model_latency.observe(model_seconds)
            metrics.minutes.observe_latency(model_seconds)
        except UpstreamError as error:
            metrics.model_errors.inc()
            metrics.minutes.count_model_error(0)
            raise self._upstream_failure(error, live.log_stream_arn) from error
        finally:
            # Not contextlib.suppress: this is the request path, and a bare try costs nothing.
            try:  # noqa: SIM105
                live.router.release(instance)
            except UnknownInstanceError:
                pass  # scaled in while this request was on it: its slot already left the table
        status = response.status
        if status >= 300:
            metrics.model_errors.inc()
            metrics.minutes.count_model_error(status)
            if status >= 500:
                metrics.errors_5xx.inc()
            elif status >= 400:
                metrics.errors_4xx.inc()
            raise _model_error(response, live.log_stream_arn)
        metrics.overhead_latency.observe(perf_counter() - started - model_seconds)
        content_type, custom_attributes = _answer_headers(response)
        if live.capture is not None:
            # Only successful invocations are captured: a failed one has no model output to monitor.
            # offer() is a random draw, a tuple and a non-blocking put; it never raises.
            live.capture.offer(
                variant,
                request.content_type,
                request.inference_id,
                request.body,
                response.body,
                content_type,
            )
        # tuple.__new__: the NamedTuple built in C, without its generated Python __new__.
        return tuple.__new__(
            InvocationResult, (variant, response.body, content_type, custom_attributes)
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
        if target is not None and (len(target) > 63 or not _NAME.fullmatch(target)):
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

    def _upstream_failure(self, error: UpstreamError, log_stream_arn: str) -> Exception:
        """The wire error for a forward that got no complete answer."""
        if isinstance(error, UpstreamConnectError):
            # The request never reached the worker (it is restarting): retryable, so boto3 retries.
            log.warning("instance unreachable: %s", error)
            return ServiceUnavailable("The model instance is not reachable now; try again.")
        if isinstance(error, UpstreamTimeout):
            message = (
                "Your invocation timed out while waiting for a response from container primary. "
                "Review the latency metrics for each container, resolve the issue, and try again."
            )
        else:
            log.warning("broken answer from instance: %s", error)
            message = "The connection to container primary broke before it answered."
        return ModelError(
            f'Received server error (0) from primary with message "{message}".',
            ModelErrorDetail(0, message, log_stream_arn),
        )


def _fail_over(live: LiveEndpoint) -> tuple[str, str] | None:
    """Route an untargeted request again, among the variants that have a healthy instance.

    Called only when the router found no healthy instance in the variant it drew, for a request
    without TargetVariant on an endpoint with failover on, so the normal path pays nothing for
    it. The variant is drawn by weight among those with a weight above 0 and a healthy instance;
    the one drawn counts the request in splitserve_failover_total.

    Returns:
        (variant name, instance name) as `Router.route` returns them, or None when no variant
        can take the request.
    """
    router = live.router
    names: list[str] = []
    weights: list[float] = []
    for name, weight in router.weights().items():
        if weight > 0 and router.healthy_instances(name):
            names.append(name)
            weights.append(weight)
    if not names:
        return None
    routed = router.route(random.choices(names, weights)[0], None)
    live.metrics[routed[0]].failovers.inc()
    return routed


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


# Cached: clients send the same few Content-Type and Accept values again and again, and a hit is
# answered in C, without a Python call. Bounded, so distinct custom attributes cannot grow it.
@functools.lru_cache(maxsize=256)
def _forwarded_headers(
    content_type: str | None, accept: str | None, custom_attributes: str | None
) -> tuple[tuple[bytes, bytes], ...]:
    """The headers the container contract passes through to the worker."""
    headers: list[tuple[bytes, bytes]] = []
    if content_type is not None:
        headers.append((b"Content-Type", content_type.encode("latin-1")))
    if accept is not None:
        headers.append((b"Accept", accept.encode("latin-1")))
    if custom_attributes is not None:
        headers.append((b"X-Amzn-SageMaker-Custom-Attributes", custom_attributes.encode("latin-1")))
    return tuple(headers)


def _model_error(response: UpstreamResponse, log_stream_arn: str) -> ModelError:
    """SageMaker's ModelError for a worker that answered with a non-2xx status."""
    status = response.status
    original = response.body.decode("utf-8", "replace")
    kind = "client" if status < 500 else "server"
    quoted = original[:_QUOTED_BODY_CHARS]
    return ModelError(
        f'Received {kind} error ({status}) from primary with message "{quoted}". '
        f"See {log_stream_arn} for more information.",
        ModelErrorDetail(status, original[:2048], log_stream_arn),
    )
