"""Always-valid statistics for a live experiment: intervals and tests you may look at every minute.

A fixed-horizon test (the z-test of `evaluate`) keeps its 5% error only when it is looked at once,
at a sample size chosen in advance; looked at after every batch of labels and stopped at the first
"significant" look, it declares differences that do not exist far more often (the A/A simulation
of `simulate_peeking` measures it). A confidence sequence is a sequence of intervals that holds
its truth at every sample size at once with probability 1 - alpha, so it may be watched
continuously and stopped at any time (docs/statistics.md has the plain-words account).

The confidence sequences themselves (the normal mixture, its tuning, its p-value, and the
sample-ratio test) are `confidence.py`'s; this module keeps an experiment's running counts and
turns them into estimates, intervals, comparisons and a winner (`LiveExperiment.snapshot`).

What is always-valid and how (each interval says so in its `validity`):
- per variant, accuracy, precision, recall and the clipped log loss are means of bounded
  variables (precision over the predicted positives, recall over the actual positives: each a
  stream of its own). A variable in [a, b] is sub-Gaussian with variance (b - a)^2 / 4
  (Hoeffding's lemma), which makes the mixture a supermartingale at any sample size:
  "nonasymptotic".
- per variant F1: monotone in precision and recall, so the interval is F1 at the two ends of
  their intervals, each taken at alpha/2 (a union bound): nonasymptotic, conservative.
- per variant AUC, and every difference between two variants: the variance is estimated from the
  data (Bernoulli p(1 - p) with a pseudo-observation, the sample variance of the log loss, the
  delta method for F1, DeLong's variance for AUC) and plugged in: "asymptotic", valid as the
  labels grow (Waudby-Smith, Arnold, Wu, Wang & Ramdas 2024, "Time-uniform central limit theory
  and asymptotic confidence sequences", Annals of Statistics 52(6)). No difference is declared
  before each variant has `min_labels` labels. AUC's is the least proven (a two-sample U-statistic
  whose time-uniform central limit theorem is assumed, not shown).

A difference is declared once its interval excludes 0 (equivalently its always-valid p-value
falls to alpha); the declaration is then kept, as a sequential test stops at its first crossing.
With more than two variants alpha is split evenly over the pairs (Bonferroni). The winner is the
variant declared better than every other on the chosen metric, unless the split failed its check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from splitserve.config import SequentialSettings
from splitserve.evaluation.confidence import (
    Estimate,
    auc_estimate,
    f1_estimate,
    harmonic_mean,
    mixture_half_width,
    mixture_p_value,
    mixture_tuning,
    proportion_estimate,
    scalar_half_width,
    scalar_p_value,
    srm_p_value,
)

__all__ = [
    "METRICS",
    "ExperimentSnapshot",
    "LiveExperiment",
    "MetricInterval",
    "PairComparison",
    # The confidence sequences' functions, still importable from here where they once lived.
    "mixture_half_width",
    "mixture_p_value",
    "mixture_tuning",
    "srm_p_value",
]

_DEFAULTS = SequentialSettings()

#: The metrics of a live experiment, in report order.
METRICS = ("accuracy", "precision", "recall", "f1", "auc", "log_loss")
#: Metrics where the smaller value is the better one.
_LOWER_IS_BETTER = frozenset({"log_loss"})


@dataclass(frozen=True)
class MetricInterval:
    """One variant's metric with its always-valid interval.

    Attributes:
        value: the estimate (None while undefined, e.g. precision before any positive
            prediction).
        low, high: the interval's ends (None while undefined).
        validity: "nonasymptotic" (valid at every sample size) or "asymptotic" (valid as the
            labels grow); see the module docstring.
    """

    value: float | None
    low: float | None
    high: float | None
    validity: str

    def to_dict(self) -> dict[str, object]:
        """{"value", "low", "high", "validity"}."""
        return {"value": self.value, "low": self.low, "high": self.high, "validity": self.validity}


@dataclass(frozen=True)
class PairComparison:
    """One metric compared between two variants: b minus a.

    Attributes:
        a, b: the variants (a comes first in the experiment's order).
        metric: the metric.
        difference: b's value minus a's (None while undefined in either).
        low, high: the difference's always-valid interval.
        p_value: the always-valid p-value of "no difference" (the running minimum over the
            looks once both variants have `min_labels` labels; the current look's before).
        decided: the interval has excluded 0 at some look with enough labels (kept from then).
        better: the better variant once decided, else None.
    """

    a: str
    b: str
    metric: str
    difference: float | None
    low: float | None
    high: float | None
    p_value: float | None
    decided: bool
    better: str | None

    def to_dict(self) -> dict[str, object]:
        """The comparison as JSON-able values."""
        return {
            "a": self.a,
            "b": self.b,
            "metric": self.metric,
            "difference": self.difference,
            "low": self.low,
            "high": self.high,
            "p_value": self.p_value,
            "decided": self.decided,
            "better": self.better,
            "validity": "asymptotic",
        }


@dataclass(frozen=True)
class ExperimentSnapshot:
    """A live experiment at one look.

    Attributes:
        metric: the metric a winner is declared on.
        alpha: the experiment's error level.
        pair_alpha: the level of each pairwise comparison (alpha over the number of pairs).
        labels: labels per variant.
        metrics: each variant's metrics by name.
        comparisons: every pair and metric.
        winner: the variant declared better than every other on `metric` (None before, and
            whenever the split check failed).
        srm_p_value: the live split check's always-valid p-value (None without assignments).
        srm_failed: the split check has failed (it blocks any automatic action).
    """

    metric: str
    alpha: float
    pair_alpha: float
    labels: Mapping[str, int]
    metrics: Mapping[str, Mapping[str, MetricInterval]]
    comparisons: tuple[PairComparison, ...]
    winner: str | None
    srm_p_value: float | None
    srm_failed: bool

    def to_dict(self) -> dict[str, object]:
        """The snapshot as JSON-able values (the layout of `GET /splitserve/experiments/...`)."""
        return {
            "metric": self.metric,
            "alpha": self.alpha,
            "pair_alpha": self.pair_alpha,
            "variants": {
                name: {
                    "n": self.labels[name],
                    "metrics": {
                        metric: interval.to_dict()
                        for metric, interval in self.metrics[name].items()
                    },
                }
                for name in self.labels
            },
            "comparisons": [comparison.to_dict() for comparison in self.comparisons],
            "winner": self.winner,
            "srm": {"p_value": self.srm_p_value, "failed": self.srm_failed},
        }


@dataclass
class _VariantCounts:
    """Running sums of one variant's labels (constant memory)."""

    bins: int
    labels: int = 0
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    true_negatives: int = 0
    loss_sum: float = 0.0
    loss_squares: float = 0.0
    positive_histogram: npt.NDArray[np.int64] = field(init=False)
    negative_histogram: npt.NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        self.positive_histogram = np.zeros(self.bins, dtype=np.int64)
        self.negative_histogram = np.zeros(self.bins, dtype=np.int64)


class LiveExperiment:
    """The always-valid statistics of an experiment's variants, updated label by label.

    Args:
        variants: the variants, in report order (the first is "a" of each pair it is in).
        alpha: the experiment's error level (see `SequentialSettings.alpha`).
        threshold: a score at or above this is a positive prediction.
        metric: the metric a winner is declared on (one of METRICS).
        expected_shares: each variant's expected share of the invocations (its weight), for the
            live split check; None means equal shares.
        settings: the remaining tuning (horizon, minimum labels, clip, bins, SRM level).

    Raises:
        ValueError: fewer than two variants, a repeated variant, alpha or threshold outside
            (0, 1), an unknown metric, or expected shares that do not name exactly the variants
            with finite shares >= 0 and a positive sum.
    """

    def __init__(
        self,
        variants: Sequence[str],
        *,
        alpha: float = _DEFAULTS.alpha,
        threshold: float = _DEFAULTS.threshold,
        metric: str = _DEFAULTS.metric,
        expected_shares: Mapping[str, float] | None = None,
        settings: SequentialSettings = _DEFAULTS,
    ) -> None:
        names = [str(name) for name in variants]
        if len(names) < 2:
            raise ValueError("an experiment needs at least two variants")
        if len(set(names)) != len(names):
            raise ValueError(f"variants repeat a name: {', '.join(names)}")
        if not (isinstance(alpha, int | float) and 0 < alpha < 1):
            raise ValueError(f"alpha must be between 0 and 1, not {alpha!r}")
        if not (isinstance(threshold, int | float) and 0 < threshold < 1):
            raise ValueError(f"threshold must be between 0 and 1, not {threshold!r}")
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; the metrics: {', '.join(METRICS)}")
        self.variants = tuple(names)
        self.expected_shares = self._checked_shares(expected_shares)
        self.alpha = float(alpha)
        self.threshold = float(threshold)
        self.metric = metric
        self._settings = settings
        pairs = len(names) * (len(names) - 1) // 2
        self.pair_alpha = self.alpha / pairs
        self._tuning = mixture_tuning(self.alpha)
        self._pair_tuning = mixture_tuning(self.pair_alpha)
        self._half_tuning = mixture_tuning(self.alpha / 2)
        self._counts = {name: _VariantCounts(settings.auc_bins) for name in names}
        self._loss_bound = -math.log(settings.log_loss_clip)
        # Kept across looks: the running minimum p-value and the sticky decisions per pair.
        self._running_p: dict[tuple[str, str, str], float] = {}
        self._decided: dict[tuple[str, str, str], str] = {}
        self._srm_running_p: float | None = None

    def expect(self, expected_shares: Mapping[str, float] | None) -> None:
        """New expected shares for the live split check (the weights changed: a promotion's
        step, a bandit's update). The check starts over, since its counts must come from one
        split; the labels' statistics and the decisions already made are kept, as they do not
        depend on the weights (an always-valid test may be looked at under any allocation).

        Raises:
            ValueError: shares that do not name exactly the variants, with finite shares >= 0
                and a positive sum.
        """
        self.expected_shares = self._checked_shares(expected_shares)
        self._srm_running_p = None

    def _checked_shares(self, expected_shares: Mapping[str, float] | None) -> dict[str, float]:
        names = self.variants
        if expected_shares is None:
            return dict.fromkeys(names, 1.0)
        if set(expected_shares) != set(names):
            raise ValueError(
                "expected shares must name exactly the variants "
                f"({', '.join(names)}), not {', '.join(sorted(expected_shares)) or 'none'}"
            )
        shares = {name: float(expected_shares[name]) for name in names}
        if not all(math.isfinite(share) and share >= 0 for share in shares.values()) or (
            sum(shares.values()) <= 0
        ):
            raise ValueError("expected shares must be finite, >= 0, with a positive sum")
        return shares

    def observe(self, variant: str, score: float, label: float) -> None:
        """Count one joined label: the variant that answered, its score, and the truth (0 or 1).

        Raises:
            ValueError: an unknown variant, a score that is not a number in [0, 1], or a label
                that is not 0 or 1.
        """
        counts = self._variant(variant)
        number, positive = self._checked(score, label)
        predicted = number >= self.threshold
        counts.labels += 1
        if predicted and positive:
            counts.true_positives += 1
        elif predicted:
            counts.false_positives += 1
        elif positive:
            counts.false_negatives += 1
        else:
            counts.true_negatives += 1
        clip = self._settings.log_loss_clip
        clipped = min(max(number, clip), 1 - clip)
        loss = -math.log(clipped) if positive else -math.log1p(-clipped)
        counts.loss_sum += loss
        counts.loss_squares += loss * loss
        histogram = counts.positive_histogram if positive else counts.negative_histogram
        histogram[min(int(number * counts.bins), counts.bins - 1)] += 1

    def observe_many(self, variant: str, scores: npt.ArrayLike, labels: npt.ArrayLike) -> None:
        """Count many joined labels of one variant at once (as `observe`, all or none).

        Raises:
            ValueError: as `observe`, for any row, or scores and labels of different lengths.
        """
        counts = self._variant(variant)
        score_array = np.asarray(scores, dtype=np.float64).ravel()
        label_array = np.asarray(labels, dtype=np.float64).ravel()
        if score_array.size != label_array.size:
            raise ValueError("need one label per score")
        if not np.all((score_array >= 0) & (score_array <= 1)):  # NaN fails this too
            raise ValueError("scores must be numbers in [0, 1]")
        if not np.all((label_array == 0) | (label_array == 1)):
            raise ValueError("labels must be 0 or 1")
        self._add(counts, score_array, label_array == 1)

    def snapshot(self, assignments: Mapping[str, int] | None = None) -> ExperimentSnapshot:
        """Look at the experiment now (each call is one look of the sequential tests).

        Args:
            assignments: invocations per variant so far (the live split check); a variant left
                out counts 0. None skips the check at this look (its last result is kept).

        Raises:
            ValueError: assignments naming an unknown variant or holding a negative count.
        """
        settings = self._settings
        if assignments is not None:
            unknown = sorted(set(assignments) - set(self.variants))
            if unknown:
                raise ValueError(f"assignments name unknown variants: {', '.join(unknown)}")
            counts = [int(assignments.get(name, 0)) for name in self.variants]
            p_value = srm_p_value(
                counts,
                [self.expected_shares[name] for name in self.variants],
                settings.srm_prior_strength,
            )
            previous = self._srm_running_p
            self._srm_running_p = p_value if previous is None else min(previous, p_value)
        srm_failed = self._srm_running_p is not None and self._srm_running_p < settings.srm_alpha

        estimates = {name: self._estimates(self._counts[name]) for name in self.variants}
        metrics = {
            name: self._intervals(self._counts[name], estimates[name]) for name in self.variants
        }
        comparisons = [
            self._compare(first, second, metric, estimates, settings.min_labels)
            for first_index, first in enumerate(self.variants)
            for second in self.variants[first_index + 1 :]
            for metric in METRICS
        ]
        winner = None if srm_failed else self._winner(comparisons)
        return ExperimentSnapshot(
            metric=self.metric,
            alpha=self.alpha,
            pair_alpha=self.pair_alpha,
            labels={name: self._counts[name].labels for name in self.variants},
            metrics=metrics,
            comparisons=tuple(comparisons),
            winner=winner,
            srm_p_value=self._srm_running_p,
            srm_failed=srm_failed,
        )

    # -- counting

    def _variant(self, variant: str) -> _VariantCounts:
        counts = self._counts.get(variant)
        if counts is None:
            raise ValueError(
                f"unknown variant {variant!r}; the experiment's: {', '.join(self.variants)}"
            )
        return counts

    @staticmethod
    def _checked(score: float, label: float) -> tuple[float, bool]:
        try:
            number = float(score)
        except (TypeError, ValueError):
            raise ValueError(f"score {score!r} is not a number") from None
        if not 0 <= number <= 1:  # NaN fails this too
            raise ValueError(f"score {score!r} is not in [0, 1]")
        if label not in (0, 1):
            raise ValueError(f"label {label!r} is not 0 or 1")
        return number, label == 1

    def _add(
        self,
        counts: _VariantCounts,
        scores: npt.NDArray[np.float64],
        positive: npt.NDArray[np.bool_],
    ) -> None:
        predicted = scores >= self.threshold
        true_positives = int(np.count_nonzero(predicted & positive))
        false_positives = int(np.count_nonzero(predicted & ~positive))
        false_negatives = int(np.count_nonzero(~predicted & positive))
        counts.labels += int(scores.size)
        counts.true_positives += true_positives
        counts.false_positives += false_positives
        counts.false_negatives += false_negatives
        counts.true_negatives += (
            int(scores.size) - true_positives - false_positives - false_negatives
        )
        clip = self._settings.log_loss_clip
        clipped = np.clip(scores, clip, 1 - clip)
        losses = np.where(positive, -np.log(clipped), -np.log1p(-clipped))
        counts.loss_sum += float(losses.sum())
        counts.loss_squares += float((losses * losses).sum())
        bins = np.minimum((scores * counts.bins).astype(np.int64), counts.bins - 1)
        counts.positive_histogram += np.bincount(bins[positive], minlength=counts.bins)
        counts.negative_histogram += np.bincount(bins[~positive], minlength=counts.bins)

    # -- estimates

    def _estimates(self, counts: _VariantCounts) -> dict[str, Estimate]:
        """Each metric's estimate and the variance the differences plug in."""
        n = counts.labels
        positives = counts.true_positives + counts.false_negatives
        predicted = counts.true_positives + counts.false_positives
        bound = self._loss_bound
        loss_mean = counts.loss_sum / n if n else None
        loss_variance = None
        if n:
            spread = max(0.0, counts.loss_squares - n * (counts.loss_sum / n) ** 2)
            # One pseudo-observation of the bounded variable's largest variance keeps the
            # estimate off 0 while few labels are in (as Waudby-Smith & Ramdas 2024 do).
            loss_variance = (bound * bound / 4 + spread) / (n + 1) / n
        return {
            "accuracy": proportion_estimate(counts.true_positives + counts.true_negatives, n),
            "precision": proportion_estimate(counts.true_positives, predicted),
            "recall": proportion_estimate(counts.true_positives, positives),
            "f1": f1_estimate(
                counts.true_positives, counts.false_positives, counts.false_negatives, n
            ),
            "auc": auc_estimate(counts.positive_histogram, counts.negative_histogram),
            "log_loss": Estimate(loss_mean, loss_variance, n),
        }

    def _intervals(
        self, counts: _VariantCounts, estimates: Mapping[str, Estimate]
    ) -> dict[str, MetricInterval]:
        """Each metric's always-valid interval for one variant (module docstring)."""
        alpha, horizon = self.alpha, self._settings.horizon_labels
        intervals: dict[str, MetricInterval] = {}
        for metric, bound in (
            ("accuracy", 1.0),
            ("precision", 1.0),
            ("recall", 1.0),
            ("log_loss", self._loss_bound),
        ):
            estimate = estimates[metric]
            intervals[metric] = _bounded_interval(
                estimate.value, estimate.labels, bound, horizon, alpha, self._tuning
            )
        intervals["f1"] = self._f1_interval(counts, estimates["f1"].value)
        auc = estimates["auc"]
        if auc.value is None or auc.variance is None:
            intervals["auc"] = MetricInterval(auc.value, None, None, "asymptotic")
        else:
            half = scalar_half_width(
                auc.variance, auc.variance * auc.labels / horizon, alpha, self._tuning
            )
            intervals["auc"] = MetricInterval(
                auc.value, max(0.0, auc.value - half), min(1.0, auc.value + half), "asymptotic"
            )
        return {metric: intervals[metric] for metric in METRICS}

    def _f1_interval(self, counts: _VariantCounts, value: float | None) -> MetricInterval:
        """F1 at the ends of precision's and recall's intervals, each at alpha/2."""
        if value is None:
            return MetricInterval(None, None, None, "nonasymptotic")
        half_alpha, tuning = self.alpha / 2, self._half_tuning
        horizon = self._settings.horizon_labels
        predicted = counts.true_positives + counts.false_positives
        positives = counts.true_positives + counts.false_negatives
        precision = _bounded_interval(
            _ratio(counts.true_positives, predicted), predicted, 1.0, horizon, half_alpha, tuning
        )
        recall = _bounded_interval(
            _ratio(counts.true_positives, positives), positives, 1.0, horizon, half_alpha, tuning
        )
        low = harmonic_mean(precision.low or 0.0, recall.low or 0.0)
        high = harmonic_mean(
            1.0 if precision.high is None else precision.high,
            1.0 if recall.high is None else recall.high,
        )
        return MetricInterval(value, low, high, "nonasymptotic")

    def _compare(
        self,
        first: str,
        second: str,
        metric: str,
        estimates: Mapping[str, Mapping[str, Estimate]],
        min_labels: int,
    ) -> PairComparison:
        """b minus a on one metric, with the asymptotic mixture interval and p-value."""
        key = (first, second, metric)
        a, b = estimates[first][metric], estimates[second][metric]
        decided_better = self._decided.get(key)
        if a.value is None or b.value is None or a.variance is None or b.variance is None:
            return PairComparison(
                first, second, metric, None, None, None, None, key in self._decided,
                decided_better,
            )  # fmt: skip
        difference = b.value - a.value
        variance = a.variance + b.variance
        horizon = self._settings.horizon_labels
        # The variance each estimate would have at the horizon, by its variance per label.
        horizon_variance = (a.variance * max(a.labels, 1) + b.variance * max(b.labels, 1)) / horizon
        half = scalar_half_width(variance, horizon_variance, self.pair_alpha, self._pair_tuning)
        p_value = scalar_p_value(difference, variance, horizon_variance, self._pair_tuning)
        enough = (
            self._counts[first].labels >= min_labels and self._counts[second].labels >= min_labels
        )
        if enough:
            p_value = min(p_value, self._running_p.get(key, 1.0))
            self._running_p[key] = p_value
            if key not in self._decided and p_value <= self.pair_alpha:
                higher = second if difference > 0 else first
                lower = first if higher == second else second
                self._decided[key] = lower if metric in _LOWER_IS_BETTER else higher
        low = difference - half if math.isfinite(half) else None
        high = difference + half if math.isfinite(half) else None
        return PairComparison(
            first, second, metric, difference, low, high, p_value, key in self._decided,
            self._decided.get(key),
        )  # fmt: skip

    def _winner(self, comparisons: Sequence[PairComparison]) -> str | None:
        """The variant decided better than every other on the chosen metric, if any."""
        on_metric = [c for c in comparisons if c.metric == self.metric]
        for candidate in self.variants:
            own = [c for c in on_metric if candidate in (c.a, c.b)]
            if own and all(c.decided and c.better == candidate for c in own):
                return candidate
        return None


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _bounded_interval(
    value: float | None, count: int, bound: float, horizon: int, alpha: float, tuning: float
) -> MetricInterval:
    """The nonasymptotic normal-mixture interval of a mean of `count` values in [0, bound]."""
    if value is None or count == 0:
        return MetricInterval(value, None, None, "nonasymptotic")
    proxy = bound * bound / 4  # Hoeffding's lemma: sub-Gaussian with variance (b - a)^2 / 4
    half = scalar_half_width(proxy / count, proxy / horizon, alpha, tuning)
    return MetricInterval(value, max(0.0, value - half), min(bound, value + half), "nonasymptotic")
