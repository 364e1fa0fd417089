"""The load script's soak, 30 seconds of it: the gateway held at 80 % of its maximum throughput.

`make soak` runs the same for 10 minutes (benches/load.py, docs/reliability.md "Load"). It needs
wrk, which `make test` installs (the `.stamps/wrk` target).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benches.load import soak

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.soak]

SOAK_SECONDS = 30.0
LATENCY = "p99 <= 3 x p50"


@pytest.mark.timeout(300)
def test_thirty_second_soak_meets_the_criteria(tmp_path: Path) -> None:
    """No errors, flat memory, the rate held; and p99 within 3x p50 wherever the machine allows.

    The latency criterion is asserted only when the stand-in server (a model server that does
    nothing) meets it under the same load on the same machine: on a host whose own scheduling
    spreads latency past 3x even for that (this project's 2-vCPU VM, see docs/reliability.md
    "Load"), the gateway's figure is reported, not asserted. Everything else is always asserted.
    """
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed: run `make test` (it installs it) or apt-get install wrk")
    outcome = soak(SOAK_SECONDS, tmp_path, measure_seconds=5.0)
    criteria = outcome.criteria()
    report = "\n".join(
        f"{'ok' if met else 'FAILED'}: {name}: {figures}" for name, met, figures in criteria
    )
    print(report)
    assert outcome.result.requests > 0.9 * outcome.rate * SOAK_SECONDS, report
    assert outcome.floor.errors == 0, f"the stand-in server failed requests: {outcome.floor}"
    enforced = [
        met for name, met, _ in criteria if name != LATENCY or outcome.floor_meets_latency()
    ]
    assert all(enforced), report
