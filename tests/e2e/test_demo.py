"""`make demo`'s walkthrough, shortened (fewer rows, a few seconds of pacing instead of two
minutes; its step 6, closing the loop, as it is), with a gateway it starts itself as `make demo`
does."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WALKTHROUGH = Path(__file__).resolve().parents[2] / "examples" / "walkthrough.py"
_WORKER_USER = ["--worker-user", "root"] if os.geteuid() == 0 else []


def test_walkthrough_runs_end_to_end_and_prints_commands_that_work_after(tmp_path: Path) -> None:
    output = tmp_path / "demo-output"
    finished = subprocess.run(
        [
            sys.executable, str(WALKTHROUGH), "--start", *_WORKER_USER, "--output", str(output),
            "--customers", "600", "--targeted", "20", "--shifted", "40", "--duration", "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    printed = finished.stdout
    (run,) = output.glob("run-*")
    log = (run / "gateway.log").read_text() if (run / "gateway.log").exists() else ""
    assert finished.returncode == 0, f"{printed}\n{finished.stderr}\n{log}"
    # 1: data and models, written into the run's own model store.
    assert "600 customers" in printed
    models = run / "models"
    assert (models / "walkthrough" / "variant1" / "model.tar.gz").is_file()
    assert "churn-ab InService" in printed
    # 3: the split by weight, and the pinned traffic; progress goes to stderr, a line per quarter
    # when it is not a terminal.
    assert "by weight: Variant1" in printed
    assert 'TargetVariant="Variant1" (no InferenceId): Variant1 20 (100%)' in printed
    assert "  sending weighted: 120/120" in finished.stderr
    assert "sending" not in printed
    # 4: the evaluation joined every weighted request and counted the pinned ones, sent without
    # an InferenceId, apart from missing labels.
    assert "capture: 140 records" in printed
    assert "Endpoint churn-ab: 120 labelled requests (120 rows) of 140 captured" in printed
    assert "Verdict: " in printed
    assert "20 without an inference id" in printed  # TargetVariant requests sent no InferenceId
    assert "consistent with the weights" in printed
    assert (run / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run / "ground-truth").rglob("labels.jsonl"))
    # 5: the shift, and the per-minute table of `splitserve stats`.
    assert "churn-ab InService" in printed.split("== 5.")[1]
    assert "after UpdateEndpointWeightsAndCapacities to 25/75" in printed
    assert "time (UTC)" in printed
    # 6: closing the loop: labels fed back, the experiment watched, the winner promoted.
    loop = printed.split("== 6.")[1]
    assert "tagged splitserve:experiment = 'promote 25 2'" in loop
    assert "Promoted by the gateway: Variant2 takes every request" in loop
    assert "Endpoint churn-ab-live: " in loop
    assert "winner: Variant2" in loop
    assert "Done in" in printed
    # The capture and ground truth stay under the output directory after the gateway stopped,
    # and the printed evaluate command runs as printed.
    assert list((models / "walkthrough" / "capture").rglob("*.jsonl"))
    after = printed.split("To look again:\n")[1].splitlines()
    command = shlex.split(after[0])
    assert command[:2] == ["splitserve", "evaluate"]
    assert str(run / "ground-truth") in command
    rerun = subprocess.run(
        [sys.executable, "-m", "splitserve.cli", *command[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "labelled requests" in rerun.stdout
