"""`VariantRecorder`: what happened to one variant's requests, recorded once.

Each event of an invocation is one method call, and each method feeds both places that report it:
the variant's Prometheus series (`VariantMetrics`, label children resolved when the endpoint went
live) and its per-minute ring (`VariantMinutes`, for `splitserve stats`). The runtime service calls
only these methods, so the two can never disagree about what was counted.
"""

from __future__ import annotations

from splitserve.metrics.minutes import VariantMinutes
from splitserve.metrics.prometheus import VariantMetrics


class VariantRecorder:
    """Records one variant's invocations into its Prometheus series and its minute ring.

    One event loop calls it (the gateway's); nothing here locks.
    """

    __slots__ = ("metrics", "minutes")

    def __init__(self, metrics: VariantMetrics, minutes: VariantMinutes) -> None:
        """A recorder feeding `metrics` and `minutes`, which belong to the same variant."""
        self.metrics = metrics
        self.minutes = minutes

    @classmethod
    def resolve(
        cls, endpoint_name: str, variant_name: str, minutes: VariantMinutes
    ) -> VariantRecorder:
        """The recorder of one variant: its series are created (or found) now, so each exists from
        the endpoint's start; `minutes` is the variant's ring."""
        return cls(VariantMetrics.resolve(endpoint_name, variant_name), minutes)

    def invoked(self, healthy_instances: int) -> None:
        """A request was routed to the variant, which had `healthy_instances` healthy instances.

        CloudWatch's InvocationsPerInstance adds 1/healthy per request (docs/sagemaker-api.md,
        '4. CloudWatch metrics').
        """
        metrics = self.metrics
        # `or`, not max(): the router never counts below 0, and max() parses its arguments.
        share = 1.0 / (healthy_instances or 1)
        metrics.invocations.inc()
        metrics.invocations_per_instance.inc(share)
        self.minutes.count_invocation(share)

    def failed_over(self) -> None:
        """The request came to this variant by failover (its drawn variant had no healthy
        instance). Call it besides `invoked`."""
        self.metrics.failovers.inc()

    def answered(self, model_seconds: float, overhead_seconds: float) -> None:
        """The model answered 2xx after `model_seconds`; the gateway's own share of the request
        took `overhead_seconds`."""
        metrics = self.metrics
        metrics.model_latency.observe(model_seconds)
        metrics.overhead_latency.observe(overhead_seconds)
        self.minutes.observe_answer(model_seconds, overhead_seconds)

    def model_error(self, status: int, model_seconds: float | None) -> None:
        """The model answered non-2xx `status` after `model_seconds`, or (`status` 0,
        `model_seconds` None) gave no complete answer."""
        metrics = self.metrics
        minutes = self.minutes
        if model_seconds is not None:
            metrics.model_latency.observe(model_seconds)
            minutes.observe_latency(model_seconds)
        metrics.model_errors.inc()
        if status >= 500:
            metrics.errors_5xx.inc()
        elif status >= 400:
            metrics.errors_4xx.inc()
        minutes.count_model_error(status)
