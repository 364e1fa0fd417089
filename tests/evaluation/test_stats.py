"""Every statistic cross-checked against scikit-learn, scipy, a brute-force formula or a published
worked example."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn import metrics

from splitserve.evaluation import stats
from tests.evaluation.records import binormal_sample


@pytest.fixture
def sample() -> tuple[np.ndarray, np.ndarray]:
    labels, scores = binormal_sample(np.random.default_rng(3), 300, 1.2)
    # Rounded so that there are ties, which the midrank algorithm must handle.
    return labels, np.round(scores, 2)


def test_confusion_metrics_match_scikit_learn(sample: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = sample
    predicted = (scores >= 0.5).astype(int)
    counts = stats.confusion_counts(labels, scores, 0.5)
    tn, fp, fn, tp = metrics.confusion_matrix(labels, predicted).ravel()
    assert (counts.true_negatives, counts.false_positives) == (tn, fp)
    assert (counts.false_negatives, counts.true_positives) == (fn, tp)
    assert counts.correct / counts.total == pytest.approx(metrics.accuracy_score(labels, predicted))
    assert stats.f1_score(tp, fp, fn) == pytest.approx(metrics.f1_score(labels, predicted))
    precision = stats.wilson_interval(int(tp), int(tp + fp), 0.95).value
    recall = stats.wilson_interval(int(tp), int(tp + fn), 0.95).value
    assert precision == pytest.approx(metrics.precision_score(labels, predicted))
    assert recall == pytest.approx(metrics.recall_score(labels, predicted))


def test_auc_and_log_loss_match_scikit_learn(sample: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = sample
    estimate = stats.delong_auc(labels, scores)
    assert estimate is not None
    assert estimate.auc == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    losses = stats.log_losses(labels, scores)
    assert losses.mean() == pytest.approx(metrics.log_loss(labels, scores), rel=1e-12)
    # Scores of exactly 0 and 1 are clipped as scikit-learn clips them.
    edge_labels = np.array([1, 0, 1, 0], dtype=np.int8)
    edge_scores = np.array([0.0, 1.0, 1.0, 0.0])
    assert stats.log_losses(edge_labels, edge_scores).mean() == pytest.approx(
        metrics.log_loss(edge_labels, edge_scores), rel=1e-9
    )


def test_roc_curve_matches_scikit_learn(sample: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = sample
    curve = stats.roc_curve(labels, scores)
    assert curve is not None
    fpr, tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(curve[0], fpr)
    np.testing.assert_allclose(curve[1], tpr)
    assert stats.roc_curve(np.ones(3, dtype=np.int8), np.ones(3)) is None


def test_midranks_match_scipy(sample: tuple[np.ndarray, np.ndarray]) -> None:
    _, scores = sample
    np.testing.assert_allclose(stats.midranks(scores), scipy_stats.rankdata(scores))


def _brute_force_delong_variance(labels: np.ndarray, scores: np.ndarray) -> float:
    """DeLong, DeLong & Clarke-Pearson (1988) straight from the definition, O(m n)."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    kernel = (positive[:, None] > negative[None, :]) + 0.5 * (
        positive[:, None] == negative[None, :]
    )
    v10, v01 = kernel.mean(axis=1), kernel.mean(axis=0)
    return float(v10.var(ddof=1) / positive.size + v01.var(ddof=1) / negative.size)


def test_delong_variance_matches_the_definition(sample: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = sample
    estimate = stats.delong_auc(labels, scores)
    assert estimate is not None
    assert estimate.variance == pytest.approx(_brute_force_delong_variance(labels, scores))
    interval = stats.auc_interval(estimate, 0.95)
    half = 1.959963984540054 * math.sqrt(estimate.variance or 0)
    assert interval.low == pytest.approx(estimate.auc - half)
    assert interval.high == pytest.approx(min(1.0, estimate.auc + half))


def test_delong_needs_both_classes() -> None:
    assert stats.delong_auc(np.ones(4, dtype=np.int8), np.arange(4.0)) is None
    single = stats.delong_auc(np.array([1, 0, 0], dtype=np.int8), np.array([0.9, 0.1, 0.2]))
    assert single is not None
    assert single.auc == 1.0
    assert single.variance is None
    assert stats.auc_interval(None, 0.95).undefined is not None


@pytest.mark.parametrize(("successes", "trials"), [(0, 10), (3, 10), (10, 10), (57, 120), (1, 1)])
def test_wilson_matches_scipy(successes: int, trials: int) -> None:
    ours = stats.wilson_interval(successes, trials, 0.95)
    theirs = scipy_stats.binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    assert ours.low == pytest.approx(theirs.low, abs=1e-12)
    assert ours.high == pytest.approx(theirs.high, abs=1e-12)
    assert stats.wilson_interval(0, 0, 0.95).value is None


def test_two_proportion_matches_a_published_example_and_scipy() -> None:
    # Newcombe (1998), "Interval estimation for the difference between independent proportions",
    # Table II example: 56/70 vs 48/80, method 10 (score, no correction): 0.0524 to 0.3339.
    difference = stats.two_proportion_difference((48, 80), (56, 70), 0.95)
    assert difference.value == pytest.approx(0.2)
    assert difference.low == pytest.approx(0.0524, abs=5e-5)
    assert difference.high == pytest.approx(0.3339, abs=5e-5)
    # The pooled z-test's p-value equals the uncorrected chi-square test of the 2x2 table.
    table = np.array([[48, 32], [56, 14]])
    chi2 = scipy_stats.chi2_contingency(table, correction=False)
    assert difference.p_value == pytest.approx(chi2.pvalue, rel=1e-9)
    identical = stats.two_proportion_difference((10, 10), (20, 20), 0.95)
    assert identical.p_value == 1.0


def test_delong_difference_is_a_z_test_on_summed_variances(
    sample: tuple[np.ndarray, np.ndarray],
) -> None:
    labels, scores = sample
    first = stats.delong_auc(labels[:150], scores[:150])
    second = stats.delong_auc(labels[150:], scores[150:])
    assert first is not None
    assert second is not None
    assert first.variance is not None
    assert second.variance is not None
    difference = stats.delong_difference(first, second, 0.95)
    z = (second.auc - first.auc) / math.sqrt(first.variance + second.variance)
    assert difference.p_value == pytest.approx(2 * scipy_stats.norm.sf(abs(z)))
    assert difference.low is not None
    assert difference.high is not None
    assert difference.low < difference.value < difference.high  # type: ignore[operator]


def test_bootstrap_f1_is_the_row_bootstrap(sample: tuple[np.ndarray, np.ndarray]) -> None:
    """Drawing the confusion matrix from a multinomial is resampling rows: compare the two."""
    labels, scores = sample
    counts = stats.confusion_counts(labels, scores, 0.5)
    rng = np.random.default_rng(0)
    ours = stats.bootstrap_f1(counts, 4000, rng)
    picks = rng.integers(0, labels.size, size=(4000, labels.size))
    predicted = scores[picks] >= 0.5
    actual = labels[picks] == 1
    tp = (predicted & actual).sum(axis=1)
    rows = 2 * tp / (2 * tp + (predicted & ~actual).sum(axis=1) + (~predicted & actual).sum(axis=1))
    assert ours.mean() == pytest.approx(rows.mean(), abs=0.005)
    assert ours.std() == pytest.approx(rows.std(), rel=0.08)


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimate(
    sample: tuple[np.ndarray, np.ndarray],
) -> None:
    labels, scores = sample
    losses = stats.log_losses(labels, scores)
    first = stats.bootstrap_mean(losses, 2000, np.random.default_rng(5))
    second = stats.bootstrap_mean(losses, 2000, np.random.default_rng(5))
    np.testing.assert_array_equal(first, second)
    interval = stats.percentile_interval(float(losses.mean()), first, 0.95)
    assert interval.low is not None
    assert interval.high is not None
    assert interval.low < losses.mean() < interval.high
    # The bootstrap standard error of a mean is close to the textbook one.
    assert first.std() == pytest.approx(losses.std() / math.sqrt(losses.size), rel=0.1)


def test_bootstrap_mean_chunks_give_the_same_distribution() -> None:
    values = np.arange(10.0)
    small = stats.bootstrap_mean(values, 7, np.random.default_rng(1))
    assert small.shape == (7,)
    assert ((small >= 0) & (small <= 9)).all()


def test_additional_per_variant_matches_the_closed_form() -> None:
    # Equal samples: N = (z_a + z_b)^2 (c1 + c2) / delta^2 per variant in total.
    c1, c2, delta = 0.09, 0.12, 0.02
    z = scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)
    total = z * z * (c1 + c2) / delta**2
    extra = stats.additional_per_variant((c1, c2), (100, 100), delta, 0.05, 0.8)
    assert extra == math.ceil(total) - 100
    assert stats.additional_per_variant((c1, c2), (10**6, 10**6), delta, 0.05, 0.8) == 0
    assert stats.additional_per_variant((0.0, 0.0), (10, 10), delta, 0.05, 0.8) is None
    # Unequal samples: the smallest k that meets the target.
    extra = stats.additional_per_variant((c1, c2), (50, 400), delta, 0.05, 0.8)
    assert extra is not None
    target = (delta / z) ** 2
    assert c1 / (50 + extra) + c2 / (400 + extra) <= target < c1 / (49 + extra) + c2 / (399 + extra)


@pytest.mark.parametrize("degrees", range(1, 10))
def test_chi_square_survival_matches_scipy(degrees: int) -> None:
    for statistic in (0.0, 0.01, 0.5, 1.0, 3.84, 10.0, 30.0, 80.0):
        assert stats.chi_square_survival(statistic, degrees) == pytest.approx(
            scipy_stats.chi2.sf(statistic, degrees), rel=1e-9, abs=1e-300
        )


def test_sample_ratio_test_matches_scipy() -> None:
    result = stats.sample_ratio_test([480, 520, 1010], [1, 1, 2])
    expected = scipy_stats.chisquare([480, 520, 1010], [502.5, 502.5, 1005])
    assert result.statistic == pytest.approx(expected.statistic)
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.degrees_of_freedom == 2
    # Traffic where the weights send none is a mismatch whatever the counts.
    assert stats.sample_ratio_test([10, 1], [1, 0]).p_value == 0.0
    with pytest.raises(ValueError, match="two or more"):
        stats.sample_ratio_test([1], [1])


def test_holm_adjustment() -> None:
    adjusted = stats.holm_adjust({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
