"""`live_endpoint`: a routable endpoint for runtime and HTTP-tier tests, without a control plane.

The runtime reads a `LiveEndpoint` (router, one client per instance, one recorder per variant);
the gateway builds it from a deployed fleet. Tests build it from a few variants and whatever
clients they want the instances to be (a fake, or a real pool to a test server).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from splitserve._router import Router, VariantSpec
from splitserve.metrics.minutes import VariantMinutes
from splitserve.metrics.recorder import VariantRecorder
from splitserve.runtime.registry import InstanceClient, LiveEndpoint

#: What ModelError answers of test endpoints name as their log stream.
LOG_STREAM_ARN = "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/test"


def live_endpoint(
    name: str,
    variants: Mapping[str, tuple[float, Mapping[str, InstanceClient]]],
    *,
    minutes: Callable[[str], VariantMinutes] | None = None,
    routing: str = "RANDOM",
    failover: bool = False,
    seed: int = 1,
) -> LiveEndpoint:
    """An endpoint's first generation routing over `variants`.

    Args:
        name: the endpoint's name (also the router's salt).
        variants: variant name -> (weight, instance name -> its client), in deployment order.
        minutes: the minute ring of each variant, by variant name (e.g. a `MinuteStore`'s
            `lambda variant: store.variant(name, variant)`); default a fresh 5-minute ring each.
        routing: the variants' RoutingStrategy ("RANDOM" or "LEAST_OUTSTANDING_REQUESTS").
        failover, seed: as the Router takes them.

    The recorders resolve Prometheus series for `(name, variant)`: the test removes them
    (`metrics.prometheus.remove_variant_series`) when it is done.
    """
    ring = minutes or (lambda _: VariantMinutes(5))
    specs = [
        VariantSpec(variant, weight, list(clients), routing)
        for variant, (weight, clients) in variants.items()
    ]
    pools = {
        instance: client for _, clients in variants.values() for instance, client in clients.items()
    }
    return LiveEndpoint(
        name=name,
        generation=1,
        router=Router(specs, salt=name, seed=seed, failover=failover),
        pools=pools,
        recorders={
            variant: VariantRecorder.resolve(name, variant, ring(variant)) for variant in variants
        },
        log_stream_arn=LOG_STREAM_ARN,
    )
