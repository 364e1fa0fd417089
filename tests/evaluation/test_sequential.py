"""The live experiment's always-valid statistics: values against scikit-learn, the intervals'
algebra, the sticky decisions, the live split check and every refusal."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics

from splitserve.evaluation.sequential import (
    LiveExperiment,
    mixture_half_width,
    mixture_p_value,
    mixture_tuning,
    srm_p_value,
)


def _scores(rng: np.random.Generator, rows: int, skill: float) -> tuple[np.ndarray, np.ndarray]:
    labels = (rng.random(rows) < 0.3).astype(np.float64)
    scores = np.clip(0.5 + (labels - 0.5) * skill + rng.normal(0, 0.25, rows), 0, 1)
    return scores, labels


def test_point_estimates_match_scikit_learn() -> None:
    scores, labels = _scores(np.random.default_rng(1), 2000, 0.4)
    scores = np.round(scores, 3)  # on bin edges of the live AUC's 1000 bins: exact
    experiment = LiveExperiment(["A", "B"])
    experiment.observe_many("A", scores, labels)
    for score, label in zip(scores[:50], labels[:50], strict=True):
        experiment.observe("B", float(score), float(label))
    values = experiment.snapshot().metrics["A"]
    predicted = (scores >= 0.5).astype(int)
    assert values["accuracy"].value == pytest.approx(metrics.accuracy_score(labels, predicted))
    assert values["precision"].value == pytest.approx(metrics.precision_score(labels, predicted))
    assert values["recall"].value == pytest.approx(metrics.recall_score(labels, predicted))
    assert values["f1"].value == pytest.approx(metrics.f1_score(labels, predicted))
    assert values["auc"].value == pytest.approx(metrics.roc_auc_score(labels, scores), abs=2e-3)
    clipped = np.clip(scores, 1e-3, 1 - 1e-3)
    assert values["log_loss"].value == pytest.approx(metrics.log_loss(labels, clipped))
    for interval in values.values():
        assert interval.low is not None
        assert interval.high is not None
        assert interval.value is not None
        assert interval.low <= interval.value <= interval.high


def test_interval_excludes_zero_exactly_when_p_value_is_below_alpha() -> None:
    tuning = mixture_tuning(0.05)
    variance, horizon = 0.01**2, 0.005**2
    half = float(mixture_half_width(variance, horizon, 0.05, tuning))
    inside = float(mixture_p_value(half * 0.999, variance, horizon, tuning))
    outside = float(mixture_p_value(half * 1.001, variance, horizon, tuning))
    assert inside > 0.05 > outside


def test_mixture_tuning_solves_its_equation() -> None:
    value = mixture_tuning(0.05)
    assert value == pytest.approx(-2 * math.log(0.05) + math.log1p(value))


def test_a_real_difference_is_declared_and_kept() -> None:
    rng = np.random.default_rng(2)
    experiment = LiveExperiment(["A", "B"], expected_shares={"A": 1, "B": 1})
    experiment.observe_many("A", *_scores(rng, 3000, 0.2))
    experiment.observe_many("B", *_scores(rng, 3000, 0.6))
    first = experiment.snapshot({"A": 3000, "B": 3000})
    assert first.winner == "B"
    assert not first.srm_failed
    accuracy = next(c for c in first.comparisons if c.metric == "accuracy")
    assert accuracy.decided
    assert accuracy.better == "B"
    assert accuracy.low is not None
    assert accuracy.low > 0
    # Evidence the other way afterwards does not undo a sequential test's decision.
    experiment.observe_many("A", np.ones(500), np.ones(500))
    assert experiment.snapshot().winner == "B"
    document = first.to_dict()
    assert document["winner"] == "B"
    assert document["srm"] == {"p_value": first.srm_p_value, "failed": False}


def test_lower_log_loss_is_better() -> None:
    rng = np.random.default_rng(4)
    experiment = LiveExperiment(["A", "B"], metric="log_loss")
    experiment.observe_many("A", *_scores(rng, 3000, 0.6))
    experiment.observe_many("B", *_scores(rng, 3000, 0.1))
    assert experiment.snapshot().winner == "A"


def test_nothing_is_declared_before_the_minimum_labels() -> None:
    experiment = LiveExperiment(["A", "B"])
    experiment.observe_many("A", np.zeros(60), np.ones(60))
    experiment.observe_many("B", np.ones(60), np.ones(60))
    snapshot = experiment.snapshot()
    assert snapshot.winner is None
    assert not any(comparison.decided for comparison in snapshot.comparisons)


def test_three_variants_split_alpha_over_the_pairs() -> None:
    experiment = LiveExperiment(["A", "B", "C"], alpha=0.06)
    assert experiment.snapshot().pair_alpha == pytest.approx(0.02)


def test_undefined_metrics_are_none_not_errors() -> None:
    experiment = LiveExperiment(["A", "B"])
    experiment.observe("A", 0.1, 0)  # no positive label, no positive prediction
    document = experiment.snapshot().to_dict()
    variants = document["variants"]
    assert isinstance(variants, dict)
    assert variants["A"]["metrics"]["precision"]["value"] is None
    assert variants["B"]["n"] == 0


def test_a_mismatched_split_fails_and_blocks_the_winner() -> None:
    rng = np.random.default_rng(5)
    experiment = LiveExperiment(["A", "B"], expected_shares={"A": 0.5, "B": 0.5})
    experiment.observe_many("A", *_scores(rng, 3000, 0.2))
    experiment.observe_many("B", *_scores(rng, 3000, 0.6))
    snapshot = experiment.snapshot({"A": 6000, "B": 5000})
    assert snapshot.srm_failed
    assert snapshot.winner is None
    # The check is sticky: a later look with a balanced split still reports the failure.
    assert experiment.snapshot({"A": 6000, "B": 6000}).srm_failed


def test_new_expected_shares_restart_only_the_split_check() -> None:
    rng = np.random.default_rng(5)
    experiment = LiveExperiment(["A", "B"], expected_shares={"A": 0.5, "B": 0.5})
    experiment.observe_many("A", *_scores(rng, 3000, 0.2))
    experiment.observe_many("B", *_scores(rng, 3000, 0.6))
    assert experiment.snapshot({"A": 6000, "B": 5000}).srm_failed
    experiment.expect({"A": 0.25, "B": 0.75})  # the weights changed: counts start over
    snapshot = experiment.snapshot({"A": 250, "B": 750})
    assert not snapshot.srm_failed
    assert snapshot.labels == {"A": 3000, "B": 3000}  # the labels stay
    assert snapshot.winner is not None
    with pytest.raises(ValueError, match="name exactly the variants"):
        experiment.expect({"A": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        experiment.expect({"A": 0.0, "B": 0.0})


def test_srm_p_value_of_a_matching_split_is_large() -> None:
    assert srm_p_value([5010, 4990], [1, 1], 100.0) > 0.5
    assert srm_p_value([0, 0], [1, 1], 100.0) == 1.0
    assert srm_p_value([3, 1], [1, 0], 100.0) == 0.0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"variants": ["A"]}, "at least two"),
        ({"variants": ["A", "A"]}, "repeat"),
        ({"variants": ["A", "B"], "alpha": 0}, "alpha"),
        ({"variants": ["A", "B"], "threshold": 1.5}, "threshold"),
        ({"variants": ["A", "B"], "metric": "mse"}, "unknown metric"),
        ({"variants": ["A", "B"], "expected_shares": {"A": 1}}, "exactly the variants"),
        ({"variants": ["A", "B"], "expected_shares": {"A": -1, "B": 1}}, "finite"),
        ({"variants": ["A", "B"], "expected_shares": {"A": 0, "B": 0}}, "positive sum"),
    ],
)
def test_construction_refuses_bad_arguments(arguments: dict[str, object], message: str) -> None:
    variants = arguments.pop("variants")
    with pytest.raises(ValueError, match=message):
        LiveExperiment(variants, **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("variant", "score", "label", "message"),
    [
        ("C", 0.5, 1, "unknown variant"),
        ("A", 1.5, 1, r"not in \[0, 1\]"),
        ("A", math.nan, 1, r"not in \[0, 1\]"),
        ("A", "x", 1, "not a number"),
        ("A", 0.5, 2, "not 0 or 1"),
    ],
)
def test_observe_refuses_bad_labels(
    variant: str, score: object, label: object, message: str
) -> None:
    experiment = LiveExperiment(["A", "B"])
    with pytest.raises(ValueError, match=message):
        experiment.observe(variant, score, label)  # type: ignore[arg-type]
    assert experiment.snapshot().labels == {"A": 0, "B": 0}


def test_observe_many_refuses_bad_rows_whole() -> None:
    experiment = LiveExperiment(["A", "B"])
    with pytest.raises(ValueError, match="one label per score"):
        experiment.observe_many("A", [0.5, 0.5], [1])
    with pytest.raises(ValueError, match="scores"):
        experiment.observe_many("A", [0.5, -0.1], [1, 0])
    with pytest.raises(ValueError, match="labels"):
        experiment.observe_many("A", [0.5, 0.1], [1, 0.5])
    assert experiment.snapshot().labels["A"] == 0


def test_snapshot_refuses_unknown_assignments() -> None:
    experiment = LiveExperiment(["A", "B"])
    with pytest.raises(ValueError, match="unknown variants: C"):
        experiment.snapshot({"A": 1, "C": 2})
    with pytest.raises(ValueError, match=">= 0"):
        experiment.snapshot({"A": -1})


def test_observe_one_by_one_counts_as_observe_many() -> None:
    scores, labels = _scores(np.random.default_rng(6), 400, 0.4)
    one, many = LiveExperiment(["A", "B"]), LiveExperiment(["A", "B"])
    many.observe_many("A", scores, labels)
    for score, label in zip(scores, labels, strict=True):
        one.observe("A", float(score), float(label))
    # Equal up to the order of the floating-point sums (numpy sums pairwise).
    first, second = one.snapshot().metrics["A"], many.snapshot().metrics["A"]
    for metric, interval in first.items():
        other = second[metric]
        for value, expected in ((interval.value, other.value), (interval.low, other.low)):
            assert value == pytest.approx(expected, rel=1e-9), metric
