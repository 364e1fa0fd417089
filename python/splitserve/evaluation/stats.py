"""The statistics behind `splitserve evaluate`: metrics with intervals, tests, power, split check.

Everything is numpy plus the standard library's `statistics.NormalDist` and `math.erfc`: the tests
cross-check each result against scikit-learn and scipy, which the gateway does not need at run time.

Methods, with the reason for each:
- Proportions (accuracy, precision, recall): the Wilson score interval, which keeps its coverage
  near the nominal level for small n and proportions near 0 or 1, where the Wald interval does not.
- F1 and log loss have no simple sampling distribution: a seeded percentile bootstrap. F1 depends
  on the rows only through the confusion matrix, so resampling rows is drawing the four cell counts
  from a multinomial (exactly the same distribution, a fraction of the work); log loss resamples
  rows in chunks so memory stays bounded for any n.
- AUC: DeLong's variance from the placement values (Sun & Xu's midrank algorithm, O(n log n)), and
  a normal interval clipped to [0, 1], as pROC does.
- Differences between two variants (independent samples, since each request goes to one variant):
  AUC by DeLong's test with the two variances summed; proportions by the pooled two-proportion
  z-test, with Newcombe's hybrid score interval (built from the two Wilson intervals); F1 and log
  loss by a normal interval and test from the two bootstrap distributions' standard errors.
- Traffic needed: the k more observations per variant that bring the difference's standard error
  down to delta / (z(1 - alpha/2) + z(power)), each variant's variance per observation taken from
  what was observed (DeLong's variance times n for AUC; p(1 - p) for accuracy).
- Sample-ratio mismatch: Pearson's chi-square goodness of fit of the per-variant request counts
  to the shares the weights give.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import TypeVar

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Key = TypeVar("Key")
IntArray = npt.NDArray[np.int64]

_NORMAL = NormalDist()
# Rows of bootstrap work done at once (resamples x rows), to bound memory for large samples.
_BOOTSTRAP_CHUNK_CELLS = 2_000_000
# Probabilities are clipped this far from 0 and 1 before taking logs (as scikit-learn does).
_EPSILON = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its confidence interval; all None when the metric is undefined.

    Attributes:
        value: the estimate.
        low, high: the interval's ends.
        undefined: why there is no estimate (for example "no positive labels"), else None.
    """

    value: float | None
    low: float | None
    high: float | None
    undefined: str | None = None

    @staticmethod
    def missing(reason: str) -> Estimate:
        """An undefined estimate, with the reason."""
        return Estimate(None, None, None, reason)


@dataclass(frozen=True)
class Difference:
    """One metric compared between two variants (challenger minus baseline).

    Attributes:
        value: the difference of the point estimates.
        low, high: its confidence interval.
        p_value: two-sided p-value of "no difference" (None when the test is undefined).
        method: the test's name, for the report.
        undefined: why there is no comparison, else None.
    """

    value: float | None
    low: float | None
    high: float | None
    p_value: float | None
    method: str
    undefined: str | None = None


@dataclass(frozen=True)
class ConfusionCounts:
    """The confusion matrix of binary predictions at a threshold."""

    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int

    @property
    def total(self) -> int:
        """All rows."""
        return (
            self.true_positives + self.false_positives + self.false_negatives + self.true_negatives
        )

    @property
    def correct(self) -> int:
        """Rows predicted right."""
        return self.true_positives + self.true_negatives


@dataclass(frozen=True)
class AucEstimate:
    """AUC with DeLong's variance.

    Attributes:
        auc: the area under the ROC curve (the Mann-Whitney statistic, ties counting half).
        variance: DeLong's variance of `auc`; None with fewer than two rows of either class.
        positives, negatives: rows of each class.
    """

    auc: float
    variance: float | None
    positives: int
    negatives: int


@dataclass(frozen=True)
class SampleRatioResult:
    """Pearson's chi-square goodness of fit of observed counts to expected shares."""

    statistic: float
    degrees_of_freedom: int
    p_value: float


def z_quantile(confidence: float) -> float:
    """The two-sided normal quantile for `confidence` (1.96 for 0.95)."""
    return _NORMAL.inv_cdf(0.5 + confidence / 2)


def two_sided_p(z: float) -> float:
    """The two-sided p-value of a standard normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2))


def confusion_counts(
    labels: npt.NDArray[np.int8], scores: FloatArray, threshold: float
) -> ConfusionCounts:
    """Count predictions (score >= threshold means positive) against the 0/1 labels."""
    predicted = scores >= threshold
    actual = labels == 1
    true_positives = int(np.count_nonzero(predicted & actual))
    false_positives = int(np.count_nonzero(predicted & ~actual))
    false_negatives = int(np.count_nonzero(~predicted & actual))
    return ConfusionCounts(
        true_positives,
        false_positives,
        false_negatives,
        int(labels.size) - true_positives - false_positives - false_negatives,
    )


def wilson_interval(successes: int, trials: int, confidence: float) -> Estimate:
    """The proportion successes/trials with its Wilson score interval.

    Raises:
        ValueError: successes is outside [0, trials].
    """
    if not 0 <= successes <= trials:
        raise ValueError(f"{successes} successes out of {trials} trials")
    if trials == 0:
        return Estimate.missing("no rows")
    return Estimate(*_wilson_bounds(successes, trials, z_quantile(confidence)))


def _wilson_bounds(successes: int, trials: int, z: float) -> tuple[float, float, float]:
    """(proportion, low, high) of the Wilson interval; trials must be positive."""
    proportion = successes / trials
    denominator = 1 + z * z / trials
    centre = (proportion + z * z / (2 * trials)) / denominator
    half_width = (
        z * math.sqrt(proportion * (1 - proportion) / trials + z * z / (4 * trials * trials))
    ) / denominator
    return proportion, max(0.0, centre - half_width), min(1.0, centre + half_width)


def f1_score(true_positives: int, false_positives: int, false_negatives: int) -> float | None:
    """2TP / (2TP + FP + FN), or None when there is neither a positive label nor prediction."""
    denominator = 2 * true_positives + false_positives + false_negatives
    return None if denominator == 0 else 2 * true_positives / denominator


def bootstrap_f1(counts: ConfusionCounts, resamples: int, rng: np.random.Generator) -> FloatArray:
    """F1 over `resamples` bootstrap resamples of the rows (NaN where a resample has no positive
    label and no positive prediction).

    Resampling rows with replacement and counting the confusion matrix is the same as drawing the
    four counts from a multinomial with the observed cell frequencies, which is what this does.
    """
    cells = np.array(
        [
            counts.true_positives,
            counts.false_positives,
            counts.false_negatives,
            counts.true_negatives,
        ],
        dtype=np.float64,
    )
    drawn = rng.multinomial(counts.total, cells / cells.sum(), size=resamples)
    numerator = 2.0 * drawn[:, 0]
    denominator = numerator + drawn[:, 1] + drawn[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)


def log_losses(labels: npt.NDArray[np.int8], scores: FloatArray) -> FloatArray:
    """Each row's log loss, -log of the probability given to its label (clipped off 0 and 1)."""
    clipped = np.clip(scores, _EPSILON, 1 - _EPSILON)
    return np.where(labels == 1, -np.log(clipped), -np.log1p(-clipped))


def bootstrap_mean(values: FloatArray, resamples: int, rng: np.random.Generator) -> FloatArray:
    """The mean of `values` over `resamples` bootstrap resamples, computed in bounded chunks."""
    size = values.size
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // max(size, 1))
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        picks = rng.integers(0, size, size=(stop - start, size))
        means[start:stop] = values[picks].mean(axis=1)
    return means


def percentile_interval(
    value: float | None, distribution: FloatArray, confidence: float
) -> Estimate:
    """`value` with the percentile interval of its bootstrap `distribution` (NaNs ignored)."""
    if value is None:
        return Estimate.missing("undefined")
    finite = distribution[np.isfinite(distribution)]
    if finite.size == 0:
        return Estimate(value, None, None)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Estimate(value, float(low), float(high))


def midranks(values: FloatArray) -> FloatArray:
    """1-based ranks of `values`, ties sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse].astype(np.float64)


def delong_auc(labels: npt.NDArray[np.int8], scores: FloatArray) -> AucEstimate | None:
    """AUC and DeLong's variance (Sun & Xu 2014), or None unless both classes are present."""
    positive_scores = scores[labels == 1]
    negative_scores = scores[labels != 1]
    positives, negatives = positive_scores.size, negative_scores.size
    if positives == 0 or negatives == 0:
        return None
    combined = midranks(np.concatenate([positive_scores, negative_scores]))
    within_positive = midranks(positive_scores)
    within_negative = midranks(negative_scores)
    # Placement values: the share of the other class each row outranks (ties count half).
    positive_placements = (combined[:positives] - within_positive) / negatives
    negative_placements = 1.0 - (combined[positives:] - within_negative) / positives
    auc = float(positive_placements.mean())
    variance = None
    if positives > 1 and negatives > 1:
        variance = float(
            positive_placements.var(ddof=1) / positives
            + negative_placements.var(ddof=1) / negatives
        )
    return AucEstimate(auc, variance, positives, negatives)


def auc_interval(estimate: AucEstimate | None, confidence: float) -> Estimate:
    """AUC with its DeLong interval, clipped to [0, 1]."""
    if estimate is None:
        return Estimate.missing("needs both classes")
    if estimate.variance is None:
        return Estimate(estimate.auc, None, None)
    half_width = z_quantile(confidence) * math.sqrt(estimate.variance)
    return Estimate(
        estimate.auc, max(0.0, estimate.auc - half_width), min(1.0, estimate.auc + half_width)
    )


def delong_difference(
    baseline: AucEstimate | None, challenger: AucEstimate | None, confidence: float
) -> Difference:
    """DeLong's test of challenger AUC minus baseline AUC, for independent samples."""
    method = "DeLong"
    if baseline is None or challenger is None:
        return Difference(None, None, None, None, method, "AUC needs both classes in each variant")
    value = challenger.auc - baseline.auc
    if baseline.variance is None or challenger.variance is None:
        return Difference(value, None, None, None, method, "too few rows of a class")
    return _normal_difference(
        value, math.sqrt(baseline.variance + challenger.variance), confidence, method
    )


def two_proportion_difference(
    baseline: tuple[int, int], challenger: tuple[int, int], confidence: float
) -> Difference:
    """Challenger proportion minus baseline proportion, each given as (successes, trials).

    The interval is Newcombe's hybrid score interval; the p-value is the pooled z-test's.
    """
    method = "two-proportion z"
    (baseline_successes, baseline_trials) = baseline
    (challenger_successes, challenger_trials) = challenger
    if baseline_trials == 0 or challenger_trials == 0:
        return Difference(None, None, None, None, method, "no rows in a variant")
    z = z_quantile(confidence)
    first, first_low, first_high = _wilson_bounds(baseline_successes, baseline_trials, z)
    second, second_low, second_high = _wilson_bounds(challenger_successes, challenger_trials, z)
    value = second - first
    low = value - math.hypot(second - second_low, first_high - first)
    high = value + math.hypot(second_high - second, first - first_low)
    pooled = (baseline_successes + challenger_successes) / (baseline_trials + challenger_trials)
    standard_error = math.sqrt(
        pooled * (1 - pooled) * (1 / baseline_trials + 1 / challenger_trials)
    )
    # Both all-0 or all-1: identical samples, nothing to test against.
    p_value = 1.0 if standard_error == 0 else two_sided_p(value / standard_error)
    return Difference(value, low, high, p_value, method)


def bootstrap_difference(
    baseline: tuple[float | None, FloatArray],
    challenger: tuple[float | None, FloatArray],
    confidence: float,
) -> Difference:
    """Challenger minus baseline from (estimate, bootstrap distribution) pairs: a normal interval
    and test with the standard error the two independent bootstrap distributions give."""
    method = "bootstrap z"
    baseline_value, baseline_distribution = baseline
    challenger_value, challenger_distribution = challenger
    if baseline_value is None or challenger_value is None:
        return Difference(None, None, None, None, method, "undefined in a variant")
    spreads = []
    for distribution in (baseline_distribution, challenger_distribution):
        finite = distribution[np.isfinite(distribution)]
        spreads.append(float(finite.var(ddof=1)) if finite.size > 1 else 0.0)
    return _normal_difference(
        challenger_value - baseline_value, math.sqrt(sum(spreads)), confidence, method
    )


def _normal_difference(
    value: float, standard_error: float, confidence: float, method: str
) -> Difference:
    if standard_error == 0:
        return Difference(value, value, value, None, method, "no sampling variation observed")
    half_width = z_quantile(confidence) * standard_error
    return Difference(
        value,
        value - half_width,
        value + half_width,
        two_sided_p(value / standard_error),
        method,
    )


def additional_per_variant(
    variance_per_observation: tuple[float, float],
    observations: tuple[int, int],
    detectable_difference: float,
    alpha: float,
    power: float,
) -> int | None:
    """How many more observations each of two variants needs to detect `detectable_difference`.

    The difference's variance is c1/(n1 + k) + c2/(n2 + k), with c the variance per observation
    of each variant's estimate; the smallest k that brings it to (delta / (z(1 - alpha/2) +
    z(power)))^2 is returned (0 when the samples are already large enough), or None when the
    observed variances are zero and give nothing to size by.
    """
    first, second = variance_per_observation
    if first + second <= 0 or detectable_difference <= 0:
        return None
    target = (
        detectable_difference / (_NORMAL.inv_cdf(1 - alpha / 2) + _NORMAL.inv_cdf(power))
    ) ** 2

    def variance(extra: int) -> float:
        return first / max(observations[0] + extra, 1) + second / max(observations[1] + extra, 1)

    if variance(0) <= target:
        return 0
    low, high = 0, math.ceil((first + second) / target)  # variance(high) <= target by construction
    while high - low > 1:
        middle = (low + high) // 2
        if variance(middle) <= target:
            high = middle
        else:
            low = middle
    return high


def chi_square_survival(statistic: float, degrees_of_freedom: int) -> float:
    """P(X >= statistic) for a chi-square X with integer degrees of freedom (closed form)."""
    if degrees_of_freedom < 1:
        raise ValueError("degrees of freedom must be at least 1")
    if statistic <= 0:
        return 1.0
    half = statistic / 2
    if degrees_of_freedom % 2 == 0:
        # Q(k/2, x/2) = exp(-x/2) * sum_{i < k/2} (x/2)^i / i!
        term, total = 1.0, 1.0
        for index in range(1, degrees_of_freedom // 2):
            term *= half / index
            total += term
        return min(1.0, math.exp(-half) * total)
    # Odd k: erfc(sqrt(x/2)) + exp(-x/2) * sum_{i < (k-1)/2} (x/2)^(i+1/2) / Gamma(i + 3/2)
    total = math.erfc(math.sqrt(half))
    term = math.sqrt(half) / math.gamma(1.5)
    for index in range((degrees_of_freedom - 1) // 2):
        if index > 0:
            term *= half / (index + 0.5)
        total += math.exp(-half) * term
    return min(1.0, total)


def sample_ratio_test(observed: Sequence[int], weights: Sequence[float]) -> SampleRatioResult:
    """Pearson's chi-square test that `observed` counts follow the shares `weights` give.

    Raises:
        ValueError: lengths differ, fewer than two categories, a negative weight, or no positive
            weight.
    """
    if len(observed) != len(weights) or len(observed) < 2:
        raise ValueError("need matching observed counts and weights for two or more variants")
    weight_array = np.asarray(weights, dtype=np.float64)
    if (weight_array < 0).any() or weight_array.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    counts = np.asarray(observed, dtype=np.float64)
    expected = counts.sum() * weight_array / weight_array.sum()
    live = expected > 0
    if (counts[~live] > 0).any():  # traffic where the weights send none: certainly a mismatch
        return SampleRatioResult(math.inf, int(live.sum()) - 1, 0.0)
    statistic = float((((counts[live] - expected[live]) ** 2) / expected[live]).sum())
    degrees = int(live.sum()) - 1
    if degrees < 1:
        return SampleRatioResult(0.0, 0, 1.0)
    return SampleRatioResult(statistic, degrees, chi_square_survival(statistic, degrees))


def holm_adjust(p_values: Mapping[Key, float]) -> dict[Key, float]:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error)."""
    ordered = sorted(p_values.items(), key=lambda item: item[1])
    count = len(ordered)
    adjusted: dict[Key, float] = {}
    running = 0.0
    for index, (key, p_value) in enumerate(ordered):
        running = max(running, min(1.0, (count - index) * p_value))
        adjusted[key] = running
    return adjusted


def roc_curve(
    labels: npt.NDArray[np.int8], scores: FloatArray
) -> tuple[FloatArray, FloatArray] | None:
    """The ROC curve's (false positive rates, true positive rates), one point per distinct score
    from (0, 0) to (1, 1); None unless both classes are present."""
    positives = int(np.count_nonzero(labels == 1))
    negatives = int(labels.size) - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(-scores, kind="mergesort")
    ordered_scores = scores[order]
    ordered_positive = (labels[order] == 1).astype(np.int64)
    last_of_each_score = np.r_[np.flatnonzero(np.diff(ordered_scores)), ordered_scores.size - 1]
    true_positives = np.cumsum(ordered_positive)[last_of_each_score]
    false_positives = last_of_each_score + 1 - true_positives
    return (
        np.r_[0.0, false_positives / negatives].astype(np.float64),
        np.r_[0.0, true_positives / positives].astype(np.float64),
    )
