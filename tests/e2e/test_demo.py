"""`make demo`'s walkthrough, shortened, against a real gateway started by the test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gateway import start_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WALKTHROUGH = Path(__file__).resolve().parents[2] / "examples" / "walkthrough.py"


def test_walkthrough_runs_end_to_end(tmp_path: Path) -> None:
    models = tmp_path / "models"
    gateway = start_gateway(tmp_path / "state", models)
    output = tmp_path / "output"
    try:
        finished = subprocess.run(
            [
                sys.executable, str(WALKTHROUGH), "--url", gateway.url,
                "--model-store", str(models), "--output", str(output),
                "--customers", "600", "--targeted", "20", "--shifted", "40",
            ],
            capture_output=True,
            text=True,
            timeout=100,
            check=False,
        )  # fmt: skip
    finally:
        gateway.stop()
    printed = finished.stdout
    assert finished.returncode == 0, f"{printed}\n{finished.stderr}\n{gateway.log()}"
    # 1: data and models, 2: endpoint with capture.
    assert "600 customers" in printed
    assert (models / "walkthrough" / "variant1" / "model.tar.gz").is_file()
    assert "churn-ab InService" in printed
    # 3: the split by weight, and the pinned traffic.
    assert "by weight: Variant1" in printed
    assert 'TargetVariant="Variant1" (no InferenceId): Variant1 20 (100%)' in printed
    # 4: the evaluation joined every weighted request and counted the pinned ones, sent without
    # an InferenceId, apart from missing labels.
    assert "capture: 140 records" in printed
    assert "Endpoint churn-ab: 120 labelled requests (120 rows) of 140 captured" in printed
    assert "Verdict: " in printed
    assert "20 without an inference id" in printed  # TargetVariant requests sent no InferenceId
    assert "consistent with the weights" in printed
    (run,) = output.glob("run-*")
    assert (run / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run / "ground-truth").rglob("labels.jsonl"))
    # 5: the shift, and the per-minute table of `splitserve stats`.
    assert "churn-ab InService" in printed.split("== 5.")[1]
    assert "after UpdateEndpointWeightsAndCapacities to 25/75" in printed
    assert "time (UTC)" in printed
    assert "Done in" in printed
