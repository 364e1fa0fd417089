"""Reports on thin data: a variant with no labels, a single variant, multi-row requests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from splitserve.config import EvaluationSettings
from splitserve.evaluation.capture_reader import read_capture
from splitserve.evaluation.ground_truth import load_ground_truth
from splitserve.evaluation.join import join
from splitserve.evaluation.render import report_text
from splitserve.evaluation.report import TrafficWeights, evaluate
from tests.evaluation.records import (
    binormal_sample,
    capture_record,
    joined_from_samples,
    output_payload,
    write_capture,
)


def test_a_variant_without_labels_is_reported_not_compared() -> None:
    rng = np.random.default_rng(1)
    joined = joined_from_samples(
        {
            "Variant1": binormal_sample(rng, 50, 1.0),
            "Variant2": (np.zeros(0, dtype=np.int8), np.zeros(0)),
        }
    )
    report = evaluate(
        joined, EvaluationSettings(), TrafficWeights({"Variant1": 1, "Variant2": 1}, "test")
    )
    assert report.variants[1].metrics["auc"].undefined == "no labelled rows"
    (comparison,) = report.comparisons
    assert comparison.decided_by is None
    assert comparison.verdict.startswith("no comparison possible")
    assert report.sample_ratio is not None
    assert report.sample_ratio.mismatch  # 50 against 0 with equal weights
    text = report_text(report)
    assert "n/a (no labelled rows)" in text
    assert "SAMPLE-RATIO MISMATCH" in text


def test_a_single_variant_has_metrics_and_no_comparison() -> None:
    joined = joined_from_samples({"AllTraffic": binormal_sample(np.random.default_rng(2), 80, 1.0)})
    report = evaluate(joined, EvaluationSettings(), None)
    assert len(report.variants) == 1
    assert report.comparisons == ()
    assert "AllTraffic (n=80" in report_text(report)


def test_multi_row_requests_count_rows_in_the_statistics(tmp_path: Path) -> None:
    """A request of three rows with three labels gives three observations, and the verdict
    speaks of rows, not requests."""
    rng = np.random.default_rng(4)
    truth = []
    for variant in ("Variant1", "Variant2"):
        records = []
        for index in range(20):
            labels, scores = binormal_sample(rng, 3, 1.0)
            key = f"{variant}-{index}"
            records.append(capture_record(output_payload(scores.tolist()), inference_id=key))
            truth.append(f'{key},"{",".join(str(int(label)) for label in labels)}"')
        write_capture(tmp_path / "capture", "e", variant, records)
    (tmp_path / "truth.csv").write_text("\n".join(truth) + "\n")
    joined = join(
        read_capture(tmp_path / "capture", None), load_ground_truth(tmp_path / "truth.csv")
    )
    report = evaluate(joined, EvaluationSettings(), None)
    assert [(v.requests, v.rows) for v in report.variants] == [(20, 60), (20, 60)]
    assert "labelled rows" in report.comparisons[0].verdict
