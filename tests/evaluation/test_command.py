"""`splitserve evaluate` through the CLI: the report, its JSON, verdicts and the split check."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics

from splitserve.cli import main
from splitserve.config import EvaluationSettings
from splitserve.evaluation.command import describe_weights, parse_weights
from splitserve.evaluation.errors import EvaluationInputError
from splitserve.evaluation.report import evaluate
from tests.evaluation.records import (
    Experiment,
    binormal_sample,
    joined_from_samples,
    write_experiment,
)
from tests.support.http import Answer, Received, answering_server, free_port


def _evaluate(
    capsys: pytest.CaptureFixture[str], experiment: Experiment, *extra: str
) -> tuple[int, str, str]:
    code = main(
        [
            "evaluate",
            "--capture", str(experiment.capture),
            "--ground-truth", str(experiment.ground_truth),
            *extra,
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def walkthrough_sized(tmp_path: Path) -> Experiment:
    """120 requests, 60 per variant, from the same model quality: the walkthrough's situation."""
    rng = np.random.default_rng(120)
    return write_experiment(
        tmp_path,
        {"Variant1": binormal_sample(rng, 60, 1.5), "Variant2": binormal_sample(rng, 60, 1.5)},
    )


def test_text_report_on_120_requests_says_it_is_noise(
    capsys: pytest.CaptureFixture[str], walkthrough_sized: Experiment
) -> None:
    code, out, err = _evaluate(capsys, walkthrough_sized, "--weights", "Variant1=1,Variant2=1")
    assert code == 0, err
    assert "Endpoint churn: 120 labelled requests (120 rows) of 120 captured" in out
    for name in ("accuracy", "precision", "recall", "F1", "AUC", "log loss"):
        assert f"\n{name}" in out
    assert "Variant2 - Variant1" in out
    assert "Verdict: no detectable difference in AUC at n=60 and 60 labelled requests" in out
    assert (
        "more labelled requests per variant would detect a 0.02 AUC difference with 80% power"
        in out
    )
    assert "consistent with the weights" in out
    assert "0 without ground truth" in out


def test_json_report_matches_scikit_learn(
    capsys: pytest.CaptureFixture[str], walkthrough_sized: Experiment
) -> None:
    code, out, _ = _evaluate(capsys, walkthrough_sized, "--json", "--threshold", "0.4")
    assert code == 0
    report = json.loads(out)
    assert report["threshold"] == 0.4
    assert [v["variant"] for v in report["variants"]] == ["Variant1", "Variant2"]
    for variant in report["variants"]:
        labels = walkthrough_sized.labels[variant["variant"]]
        scores = walkthrough_sized.scores[variant["variant"]]
        predicted = (scores >= 0.4).astype(int)
        expected = {
            "accuracy": metrics.accuracy_score(labels, predicted),
            "precision": metrics.precision_score(labels, predicted),
            "recall": metrics.recall_score(labels, predicted),
            "f1": metrics.f1_score(labels, predicted),
            "auc": metrics.roc_auc_score(labels, scores),
            "log_loss": metrics.log_loss(labels, scores),
        }
        for name, value in expected.items():
            estimate = variant["metrics"][name]
            assert estimate["value"] == pytest.approx(value, rel=1e-9), name
            assert estimate["low"] <= estimate["value"] <= estimate["high"], name
    (comparison,) = report["comparisons"]
    assert comparison["decided_by"] == "auc"
    assert comparison["detected"] is False
    assert comparison["traffic_needed"][0]["additional_per_variant"] > 1000
    assert report["sample_ratio"] is None
    assert "no weights given" in report["sample_ratio_note"]
    assert report["accounting"]["labelled_requests"] == 120


def test_a_real_difference_is_detected(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    experiment = write_experiment(
        tmp_path,
        {"Variant1": binormal_sample(rng, 400, 0.6), "Variant2": binormal_sample(rng, 400, 2.0)},
    )
    code, out, _ = _evaluate(capsys, experiment)
    assert code == 0
    assert "Verdict: Variant2 has the higher AUC: the difference is +0." in out
    assert "unlikely to be noise at the 5% level" in out


def test_sample_ratio_mismatch_is_flagged(
    capsys: pytest.CaptureFixture[str], walkthrough_sized: Experiment
) -> None:
    code, out, _ = _evaluate(capsys, walkthrough_sized, "--weights", "Variant1=1,Variant2=3")
    assert code == 0
    assert "expected 25.0%" in out
    assert "SAMPLE-RATIO MISMATCH" in out


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("Variant1", "NAME=WEIGHT"),
        ("Variant1=x", "NAME=WEIGHT"),
        ("Variant1=-1", "NAME=WEIGHT"),
        ("Variant1=1,Variant1=2", "twice"),
        ("Variant1=0,Variant2=0", "positive"),
    ],
)
def test_bad_weights_are_refused(weights: str, message: str) -> None:
    with pytest.raises(EvaluationInputError, match=message):
        parse_weights(weights)


def test_unusable_inputs_exit_2_with_the_reason(
    capsys: pytest.CaptureFixture[str], walkthrough_sized: Experiment, tmp_path: Path
) -> None:
    code, _, err = _evaluate(capsys, walkthrough_sized, "--weights", "Variant1")
    assert code == 2
    assert "splitserve evaluate: --weights entry 'Variant1'" in err
    code, _, err = _evaluate(capsys, walkthrough_sized, "--endpoint", "other")
    assert code == 2
    assert "no capture files for endpoint other" in err


def _describe_endpoint(request: Received) -> Answer:
    """Answers DescribeEndpoint as the gateway does (only the fields the evaluation reads), and
    an empty weight history (a gateway whose state file predates the history)."""
    if request.method == "GET" and request.path == "/splitserve/endpoints/churn/weights":
        return Answer(200, json.dumps({"EndpointName": "churn", "WeightChanges": []}).encode())
    if request.headers.get("X-Amz-Target") != "SageMaker.DescribeEndpoint":
        return Answer(400)
    answer: dict[str, object]
    if json.loads(request.body)["EndpointName"] != "churn":
        answer = {"__type": "ValidationException", "message": "Could not find endpoint."}
        status = 400
    else:
        answer = {
            "EndpointName": "churn",
            "ProductionVariants": [
                {"VariantName": "Variant1", "CurrentWeight": 1.0},
                {"VariantName": "Variant2", "CurrentWeight": 1.0},
            ],
        }
        status = 200
    return Answer(
        status, json.dumps(answer).encode(), {"Content-Type": "application/x-amz-json-1.1"}
    )


@pytest.fixture
def fake_gateway() -> Iterator[str]:
    with answering_server(_describe_endpoint) as server:
        yield server.url


def test_weights_from_describe_endpoint(
    capsys: pytest.CaptureFixture[str], walkthrough_sized: Experiment, fake_gateway: str
) -> None:
    code, out, err = _evaluate(capsys, walkthrough_sized, "--url", fake_gateway)
    assert code == 0, err
    assert (
        f"weights from DescribeEndpoint at {fake_gateway} (current weights: the gateway has no "
        "weight history for this endpoint)"
    ) in out
    assert "consistent with the weights" in out
    code, _, err = _evaluate(capsys, walkthrough_sized, "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 2
    assert "cannot reach the gateway" in err
    with pytest.raises(EvaluationInputError, match="failed: Could not find endpoint"):
        describe_weights(fake_gateway, "other", timeout=5)


def test_three_variants_are_compared_pairwise_with_holm() -> None:
    rng = np.random.default_rng(3)
    joined = joined_from_samples({name: binormal_sample(rng, 100, 1.0) for name in ("A", "B", "C")})
    report = evaluate(joined, EvaluationSettings(), None)
    assert [(c.baseline, c.challenger) for c in report.comparisons] == [
        ("A", "B"), ("A", "C"), ("B", "C"),
    ]  # fmt: skip
    adjusted = [c.adjusted_p_value for c in report.comparisons]
    raw = [c.differences["auc"].p_value for c in report.comparisons]
    assert all(
        a is not None and r is not None and a >= r for a, r in zip(adjusted, raw, strict=True)
    )
    assert "Holm-adjusted p=" in report.comparisons[0].verdict


def test_undefined_metrics_are_explained() -> None:
    # Variant1 saw only negatives: no AUC, no recall; the verdict falls back to accuracy.
    # Variant2's scores are raw margins, not probabilities: no log loss.
    joined = joined_from_samples(
        {
            "Variant1": (np.zeros(30, dtype=np.int8), np.linspace(0.0, 0.4, 30)),
            "Variant2": (np.array([0, 1] * 15, dtype=np.int8), np.linspace(-3.0, 3.0, 30)),
        }
    )
    report = evaluate(joined, EvaluationSettings(), None)
    first, second = report.variants
    assert first.metrics["auc"].undefined == "needs both classes"
    assert first.metrics["recall"].undefined == "no positive labels"
    assert first.metrics["precision"].undefined == "no positive predictions"
    assert second.metrics["log_loss"].undefined == "scores are not probabilities in [0, 1]"
    (comparison,) = report.comparisons
    assert comparison.decided_by == "accuracy"
    assert comparison.verdict.startswith("Variant1 has the higher accuracy")
    assert "p<0.001" in comparison.verdict
