"""The load script's soak, 30 seconds of it: the gateway held at 80 % of its maximum throughput.

`make soak` runs the same for 10 minutes (benches/load.py, docs/reliability.md "Load"). It needs
wrk, which `make test` installs (the `.stamps/wrk` target).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from benches.load import soak

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.soak]

SOAK_SECONDS = 30.0
# The one criterion that is a speed, not a behaviour: reported, never asserted (see the test).
LATENCY = "p99 <= 3 x p50"


@pytest.mark.timeout(300)
def test_thirty_second_soak_serves_without_errors_at_flat_memory(tmp_path: Path) -> None:
    """No errors, the rate held, flat memory; the latency spread is reported, not asserted.

    p99 within 3x p50 is a property of the machine as much as of the gateway: on this project's
    2-vCPU VM even the stand-in server (a model server that does nothing) misses it under the same
    load (docs/reliability.md, "Load"), so asserting it made `make test` pass or fail with the
    host's scheduling. The figures go to the report (printed; `-s` shows it) and to
    `soak.json` in the test's temporary directory; `make soak` still judges them.
    """
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed: run `make test` (it installs it) or apt-get install wrk")
    outcome = soak(SOAK_SECONDS, tmp_path, measure_seconds=5.0)
    criteria = outcome.criteria()
    report_path = tmp_path / "soak.json"
    report_path.write_text(json.dumps(asdict(outcome) | {"growth": outcome.growth()}, indent=1))
    report = "\n".join(
        f"{'ok' if met else 'missed' if name == LATENCY else 'FAILED'}: {name}: {figures}"
        for name, met, figures in criteria
    )
    print(f"{report}\n(report written to {report_path})")
    assert outcome.result.requests > 0.9 * outcome.rate * SOAK_SECONDS, report
    assert outcome.floor.errors == 0, f"the stand-in server failed requests: {outcome.floor}"
    asserted = [(name, met) for name, met, _ in criteria if name != LATENCY]
    assert {name for name, _ in asserted} >= {"no errors", "gateway RSS flat (< 5 %)"}, report
    assert all(met for _, met in asserted), report
