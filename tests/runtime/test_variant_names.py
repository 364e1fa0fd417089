"""A live endpoint whose router names a variant apart (a stepped UpdateEndpoint routes the new
fleet's variant beside the old fleet's of the same name): the caller and the variant's figures
see the variant's own name, and TargetVariant reaches the old fleet's."""

from __future__ import annotations

import uuid

from splitserve._router import Router, VariantSpec
from splitserve.config import Settings
from splitserve.metrics.minutes import VariantMinutes
from splitserve.metrics.prometheus import remove_variant_series
from splitserve.metrics.recorder import VariantRecorder
from splitserve.runtime.registry import EndpointRegistry, InstanceClient, LiveEndpoint
from splitserve.runtime.service import Invocation, InvocationService
from tests.support.runtime import FakeClient


async def test_the_router_name_of_a_green_variant_never_leaves_the_gateway() -> None:
    name = f"svc-{uuid.uuid4().hex[:12]}"
    # All untargeted requests to the green variant, routed as "A~g2".
    specs = [
        VariantSpec("A", 0.0, ["blue-0"], "RANDOM"),
        VariantSpec("A~g2", 1.0, ["green-0"], "RANDOM"),
    ]
    clients = {"blue-0": FakeClient(), "green-0": FakeClient()}
    minutes = VariantMinutes(5)
    live = LiveEndpoint(
        name=name,
        generation=1,
        router=Router(specs, salt=name, seed=1, failover=False),
        pools=dict[str, InstanceClient](clients),
        recorders={"A": VariantRecorder.resolve(name, "A", minutes)},
        log_stream_arn="arn:aws:logs:test",
        variant_names={"A": "A", "A~g2": "A"},
    )
    registry = EndpointRegistry()
    registry.publish(live)
    service = InvocationService(Settings(), registry)
    try:
        answered = await service.invoke(Invocation(name, b"1,2,3"))
        assert answered.variant == "A"
        assert len(clients["green-0"].sent) == 1
        targeted = await service.invoke(Invocation(name, b"1,2,3", target_variant="A"))
        assert targeted.variant == "A"
        assert len(clients["blue-0"].sent) == 1
        (minute,) = minutes.minutes(minutes.newest_minute, minutes.newest_minute)
        assert minute.invocations == 2
    finally:
        remove_variant_series(name, "A")
