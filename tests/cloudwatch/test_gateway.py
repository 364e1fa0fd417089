"""The parts around the operations: instance sampling, the periodic job, the route's answers to
internal failures, and the signing name CloudWatch's routes check."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from splitserve.cloudwatch import routes as cloudwatch_routes
from splitserve.cloudwatch.live import LiveFigures
from splitserve.config import StatsSettings
from splitserve.errors import InvalidSignatureException
from splitserve.metrics.minutes import MinuteStore
from splitserve.metrics.procstat import CpuSampler, ProcessTimes
from splitserve.wiring.auth import CLOUDWATCH_SIGNING_SERVICE, AccessKey, SigV4Verifier
from tests.cloudwatch.conftest import open_stored_world
from tests.support.clock import NOON, FakeClock
from tests.wiring.test_auth import ACCESS_KEY_ID, SECRET, URL, WHEN, sign


@dataclass(frozen=True)
class FakeInstance:
    """An instance as the instance metrics see it."""

    name: str
    pid: int | None
    restarts: int = 0


class FakeFleet:
    """Instances by (endpoint, variant)."""

    def __init__(self, instances: Mapping[tuple[str, str], Sequence[FakeInstance]]) -> None:
        self.instances = instances

    def live_instances(self) -> Mapping[tuple[str, str], Sequence[FakeInstance]]:
        """Every instance now."""
        return self.instances


def test_instances_are_sampled_per_variant_and_minute() -> None:
    clock = FakeClock()
    used = {101: 0.0, 102: 0.0}

    def reader(pid: int) -> ProcessTimes:
        if pid not in used:
            raise OSError("gone")
        used[pid] += 3.0 if pid == 101 else 1.0
        return ProcessTimes(cpu_seconds=used[pid], age_seconds=100.0, memory_bytes=1 << 20)

    fleet = FakeFleet(
        {("ep", "A"): [FakeInstance("a0", 101), FakeInstance("a1", 102), FakeInstance("a2", None)],
         ("ep", "B"): [FakeInstance("b0", 999)]}
    )  # fmt: skip
    sampler = CpuSampler(0.0, cpus=4, clock=lambda: clock.now, reader=reader)
    live = LiveFigures(MinuteStore(StatsSettings(), clock), fleet, sampler, clock)
    live.sample_instances()  # the first sample of a process: its life's average
    clock.advance(10)
    live.sample_instances()  # then what it used in between: 30 % and 10 %
    figures = live.read(int(NOON // 60), int(NOON // 60))
    cpu = figures[("ep", "A")][int(NOON // 60)]["CPUUtilization"]
    assert cpu.sample_count == 4
    assert cpu.minimum == pytest.approx(1.0)
    assert cpu.maximum == pytest.approx(30.0)
    assert "MemoryUtilization" in figures[("ep", "A")][int(NOON // 60)]
    assert ("ep", "B") not in figures  # its process is gone: no sample, no datapoint


async def test_the_periodic_job_evaluates_once_a_minute(tmp_path: Path) -> None:
    world = open_stored_world(tmp_path / "state.sqlite3")
    evaluations: list[float] = []

    async def count() -> None:
        evaluations.append(world.clock.now)

    world.gateway.alarms.evaluate = count  # type: ignore[method-assign]
    try:
        for _ in range(13):
            await world.gateway.tick()
            world.clock.advance(10)
        assert evaluations == [NOON, NOON + 60, NOON + 120]
    finally:
        await world.gateway.close()


@pytest.fixture
def verifier() -> SigV4Verifier:
    """A verifier of the signing tests' key, its clock at their signing time."""
    return SigV4Verifier(
        [AccessKey(ACCESS_KEY_ID, SECRET)],
        max_clock_skew_seconds=60,
        clock=lambda: WHEN.replace(tzinfo=UTC).timestamp(),
    )


class _Broken:
    async def dispatch(self, operation: str, params: dict[str, object]) -> dict[str, object]:
        raise RuntimeError("secret internal detail")


async def test_an_internal_failure_is_cloudwatchs_500_without_details() -> None:
    app = web.Application(client_max_size=1024)
    app.router.add_routes(cloudwatch_routes.routes(_Broken(), None, 1024))
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            "/service/GraniteServiceVersion20100801/operation/ListMetrics", data=b""
        )
        body = await response.read()
        too_big = await client.post(
            "/service/GraniteServiceVersion20100801/operation/ListMetrics", data=b"x" * 4096
        )
    assert response.status == 500
    assert response.headers["x-amzn-query-error"] == "InternalServiceError;Receiver"
    assert b"secret" not in body
    assert too_big.status == 413


def test_cloudwatch_routes_check_the_monitoring_signing_name(verifier: SigV4Verifier) -> None:
    url = f"{URL}/service/GraniteServiceVersion20100801/operation/ListMetrics"
    path = urlsplit(url).path
    monitoring = sign(url, service="monitoring")
    verifier.verify("POST", path, "", monitoring, b"", service=CLOUDWATCH_SIGNING_SERVICE)
    with pytest.raises(InvalidSignatureException, match="'monitoring'"):
        verifier.verify(
            "POST",
            path,
            "",
            sign(url, service="sagemaker"),
            b"",
            service=CLOUDWATCH_SIGNING_SERVICE,
        )
    with pytest.raises(InvalidSignatureException, match="'sagemaker'"):
        verifier.verify("POST", path, "", monitoring, b"")
