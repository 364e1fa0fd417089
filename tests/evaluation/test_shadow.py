"""`splitserve evaluate --shadow`: shadow answers paired with production's by eventId, agreement,
score and latency differences with intervals, and, with ground truth, shadows scored as variants
while the traffic split leaves them out."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitserve.cli import main
from splitserve.config import EvaluationSettings
from splitserve.evaluation.capture_reader import read_capture
from splitserve.evaluation.shadow import compare_shadows
from tests.evaluation.records import capture_record, output_payload

ENDPOINT = "shadowed"


def write_lines(path: Path, documents: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(document) + "\n" for document in documents))


def shadow_capture(
    root: Path, count: int = 200, seed: int = 3, *, flip_every: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """`count` production records of variant Prod and their shadow copies under Cand: Cand's
    score is Prod's plus noise and every `flip_every`-th copy is flipped across 0.5; Cand is
    2 ms slower. Returns (production scores, shadow scores)."""
    rng = np.random.default_rng(seed)
    production, shadow = [], []
    candidates: list[float] = []
    prod_scores = rng.uniform(0.05, 0.95, size=count)
    for index, score in enumerate(prod_scores):
        event_id = str(uuid.uuid4())
        candidate = float(np.clip(score + rng.normal(0, 0.01), 0, 1))
        if index % flip_every == 0:
            candidate = float(1.0 - score)
        record = capture_record(
            output_payload([float(score)]), inference_id=f"req-{index}", event_id=event_id
        )
        record["eventMetadata"]["splitserve"] = {"modelLatencyMicros": 1000}
        copy = capture_record(
            output_payload([candidate]), inference_id=f"req-{index}", event_id=event_id
        )
        copy["eventMetadata"]["splitserve"] = {"shadowOf": "Prod", "modelLatencyMicros": 3000}
        production.append(record)
        shadow.append(copy)
        candidates.append(candidate)
    # A shadow record whose production record is missing: counted, not compared.
    orphan = capture_record(output_payload([0.5]), event_id=str(uuid.uuid4()))
    orphan["eventMetadata"]["splitserve"] = {"shadowOf": "Prod"}
    shadow.append(orphan)
    base = root / ENDPOINT
    write_lines(base / "Prod" / "2024" / "03" / "05" / "17" / "a.jsonl", production)
    write_lines(base / "Cand" / "2024" / "03" / "05" / "17" / "b.jsonl", shadow)
    return prod_scores, np.asarray(candidates)


def test_shadows_are_compared_with_their_production_variant(tmp_path: Path) -> None:
    shadow_capture(tmp_path)
    report = compare_shadows(read_capture(tmp_path, None), EvaluationSettings())
    (item,) = report.comparisons
    assert (item.shadow, item.production) == ("Cand", "Prod")
    assert (item.pairs, item.rows, item.unpaired, item.row_mismatch) == (200, 200, 1, 0)
    # Every tenth copy is flipped across 0.5 and disagrees; the noise of the others moves a few
    # near 0.5 across: the agreement is about 90 %, inside its interval.
    agreement = item.agreement
    assert agreement.value is not None
    assert agreement.low is not None
    assert agreement.high is not None
    assert 0.85 <= agreement.value <= 0.95
    assert agreement.low < agreement.value < agreement.high
    assert item.latency_difference_ms.value == pytest.approx(2.0)
    assert item.latency_difference_median_ms == pytest.approx(2.0)
    assert item.latency_pairs == 200
    assert item.score_difference_quantiles is not None
    difference = item.score_difference
    assert difference.value is not None
    assert difference.low is not None
    assert difference.high is not None
    assert difference.low <= difference.value <= difference.high


def test_the_cli_prints_the_shadow_report_without_ground_truth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shadow_capture(tmp_path)
    assert main(["evaluate", "--capture", str(tmp_path), "--shadow"]) == 0
    out = capsys.readouterr().out
    assert "Cand (shadow of Prod):" in out
    assert "200 requests paired (200 rows); 1 unpaired" in out
    assert main(["evaluate", "--capture", str(tmp_path), "--shadow", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    (shadow,) = document["shadow"]["shadows"]
    assert shadow["pairs"] == 200
    assert shadow["latency_difference_ms"]["value"] == pytest.approx(2.0)
    assert "evaluation" not in document


def test_without_shadow_ground_truth_is_still_required(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shadow_capture(tmp_path)
    assert main(["evaluate", "--capture", str(tmp_path)]) == 2
    assert "--ground-truth is needed" in capsys.readouterr().err


def test_with_ground_truth_shadows_are_scored_and_left_out_of_the_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    production, shadow = shadow_capture(tmp_path / "capture")
    labels = (np.random.default_rng(5).uniform(size=production.size) < production).astype(int)
    truth = tmp_path / "truth.csv"
    truth.write_text(
        "inference_id,label\n" + "".join(f"req-{i},{label}\n" for i, label in enumerate(labels))
    )
    code = main(
        [
            "evaluate", "--capture", str(tmp_path / "capture"), "--ground-truth", str(truth),
            "--shadow", "--json", "--weights", "Prod=1",
        ]
    )  # fmt: skip
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    evaluation = document["evaluation"]
    variants = {v["variant"]: v for v in evaluation["variants"]}
    assert set(variants) == {"Prod", "Cand"}
    assert variants["Prod"]["requests"] == variants["Cand"]["requests"] == 200
    accuracy = np.mean((shadow >= 0.5) == labels)
    assert variants["Cand"]["metrics"]["accuracy"]["value"] == pytest.approx(accuracy)
    # The split check saw production's requests only: one variant, no mismatch.
    assert evaluation["accounting"]["split_by_variant"] == {"Prod": 200}
