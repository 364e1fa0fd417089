"""Per-variant metrics, pairwise comparisons, a verdict in words, and the sample-ratio check.

`evaluate` turns joined samples into an `EvaluationReport`; `splitserve.evaluation.render` prints
it. The methods are described in `splitserve.evaluation.stats`.

Choices:
- The verdict of a comparison rests on one metric, AUC (it needs no threshold, and DeLong's test
  is exact enough at these sizes); accuracy decides only when AUC is undefined (a variant saw one
  class). Each other metric still has its difference, interval and p-value in the report, but
  calling a difference real whenever any of six metrics reaches p < 0.05 would raise the false
  alarm rate well above 5% (the A/A simulation in tests/evaluation checks the verdict's rate).
- With more than two variants, the verdict's p-values are Holm-adjusted across the pairs.
- The differences are challenger minus baseline, the baseline being the first variant by name.
- Traffic still needed is per variant, for the AUC and the accuracy differences configured in
  `EvaluationSettings`, each at the configured power and significance level.
- The sample-ratio check counts labelled requests: traffic pinned with TargetVariant, or never
  labelled, is not part of the split being compared; labels going missing more often on one
  variant is itself a mismatch worth an alarm. Targeted requests are told apart by the gateway's
  mark in their capture records and are left out; the report says how many.
- With a weight history (`evaluate --url`), each request is expected to follow the weights in
  force when it was served: a variant's expected count is the sum, over the counted requests, of
  its weight share at each one's inferenceTime. A request served before the first recorded change
  (a state file from before splitserve kept the history) or without a time is given the first
  recorded weights. With constant weights (`--weights`) this is the same as count x share.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import combinations, pairwise

import numpy as np

from splitserve.config import EvaluationSettings
from splitserve.evaluation import stats  # the module itself: the package's __init__ is lazy
from splitserve.evaluation.join import JoinAccounting, JoinedData, VariantSample
from splitserve.evaluation.stats import Difference, Estimate

#: The metrics of each variant, in report order.
METRICS = ("accuracy", "precision", "recall", "f1", "auc", "log_loss")


@dataclass(frozen=True)
class TrafficWeights:
    """The weights the split is checked against, and where they came from.

    Attributes:
        weights: constant weights (`--weights`), or the latest of `history`.
        source: where they came from, for the report.
        history: the weight changes in time order, each (when it took effect, weights), each
            holding until the next; empty for constant weights.
    """

    weights: Mapping[str, float]
    source: str
    history: tuple[tuple[datetime, Mapping[str, float]], ...] = ()

    def at(self, moment: datetime | None) -> Mapping[str, float]:
        """The weights in force at `moment`: the last change at or before it; the first change
        for a moment before it or None; the constant weights when there is no history."""
        if not self.history:
            return self.weights
        if moment is None:
            return self.history[0][1]
        index = bisect.bisect_right([when for when, _ in self.history], moment)
        return self.history[max(index - 1, 0)][1]

    def segments(
        self, start: datetime, end: datetime
    ) -> list[tuple[datetime, datetime, dict[str, float]]]:
        """The weight shares in force from `start` to `end`, as (from, to, share by variant)
        pieces in time order: one piece for constant weights, one per change otherwise. A share
        is the variant's weight over the sum (0 when every weight is 0)."""
        cuts = [when for when, _ in self.history if start < when < end]
        bounds = [start, *cuts, end]
        pieces = []
        for low, high in pairwise(bounds):
            weights = self.at(low)
            total = sum(weights.values())
            shares = {name: (w / total if total > 0 else 0.0) for name, w in weights.items()}
            pieces.append((low, high, shares))
        return pieces

    def variants(self) -> set[str]:
        """Every variant that any of the weights names."""
        names = set(self.weights)
        for _, weights in self.history:
            names.update(weights)
        return names


@dataclass(frozen=True)
class VariantMetrics:
    """One variant's metrics.

    Attributes:
        variant: its name.
        requests: labelled requests.
        rows: labelled rows.
        positives: rows labelled 1.
        metrics: an `Estimate` for each name in METRICS.
    """

    variant: str
    requests: int
    rows: int
    positives: int
    metrics: Mapping[str, Estimate]


@dataclass(frozen=True)
class TrafficNeeded:
    """How many more labelled rows per variant would detect a difference of a given size.

    Attributes:
        metric: "auc" or "accuracy".
        detectable_difference: the difference sized for.
        power: the probability of detecting it.
        additional_per_variant: rows to add to each variant (0: already enough); None when the
            observed variance gives nothing to size by.
    """

    metric: str
    detectable_difference: float
    power: float
    additional_per_variant: int | None


@dataclass(frozen=True)
class Comparison:
    """Challenger against baseline.

    Attributes:
        baseline, challenger: variant names; differences are challenger minus baseline.
        baseline_rows, challenger_rows: labelled rows of each.
        differences: a `Difference` for each name in METRICS.
        decided_by: the metric the verdict rests on ("auc", "accuracy"), None when neither is
            defined.
        adjusted_p_value: that metric's p-value, Holm-adjusted across pairs.
        detected: whether the difference is significant at 1 - confidence.
        traffic_needed: for AUC and accuracy.
        verdict: the conclusion in words.
    """

    baseline: str
    challenger: str
    baseline_rows: int
    challenger_rows: int
    differences: Mapping[str, Difference]
    decided_by: str | None
    adjusted_p_value: float | None
    detected: bool
    traffic_needed: tuple[TrafficNeeded, ...]
    verdict: str


@dataclass(frozen=True)
class SampleRatio:
    """The observed split of labelled requests against the weights.

    Attributes:
        source: where the weights came from.
        weights: by variant (the latest, with a weight history).
        observed: labelled untargeted requests by variant.
        expected_share: each variant's share under the weights in force when each request was
            served (with constant weights, its weight over their sum).
        excluded_targeted: labelled requests left out because they named their variant.
        weight_changes: how many weight changes took effect while the counted requests were
            served (0 for constant weights).
        statistic, degrees_of_freedom, p_value: Pearson's chi-square goodness of fit.
        alpha: the p-value below which the split is a mismatch.
        mismatch: whether it is.
    """

    source: str
    weights: Mapping[str, float]
    observed: Mapping[str, int]
    expected_share: Mapping[str, float]
    statistic: float
    degrees_of_freedom: int
    p_value: float
    alpha: float
    mismatch: bool
    excluded_targeted: int = 0
    weight_changes: int = 0


@dataclass(frozen=True)
class EvaluationReport:
    """Everything `splitserve evaluate` reports.

    Attributes:
        endpoint: the endpoint evaluated.
        threshold: the score at or above which a prediction is positive.
        confidence: the intervals' level.
        bootstrap_resamples, seed: how the bootstrap intervals were drawn.
        variants: per-variant metrics, by variant name.
        comparisons: one per pair of variants.
        sample_ratio: the split check; None when it was skipped.
        sample_ratio_note: why it was skipped (empty when it ran).
        accounting: where every record and label went.
    """

    endpoint: str
    threshold: float
    confidence: float
    bootstrap_resamples: int
    seed: int
    variants: tuple[VariantMetrics, ...]
    comparisons: tuple[Comparison, ...]
    sample_ratio: SampleRatio | None
    sample_ratio_note: str
    accounting: JoinAccounting


@dataclass(frozen=True)
class _Computed:
    """One variant's metrics plus what comparisons and power analysis reuse."""

    metrics: VariantMetrics
    counts: stats.ConfusionCounts
    auc: stats.AucEstimate | None
    f1_distribution: stats.FloatArray
    log_loss_distribution: stats.FloatArray


def evaluate(
    joined: JoinedData, settings: EvaluationSettings, weights: TrafficWeights | None
) -> EvaluationReport:
    """Compute the report for `joined`.

    Args:
        joined: the labelled samples of one endpoint.
        settings: threshold, confidence, bootstrap, power-analysis and split-check settings.
        weights: the variant weights in force, for the sample-ratio check; None skips it.
    """
    computed = {sample.variant: _compute(sample, settings) for sample in joined.samples}
    pairs = list(combinations(sorted(computed), 2))
    differences = {
        pair: _differences(computed[pair[0]], computed[pair[1]], settings.confidence)
        for pair in pairs
    }
    deciding = {pair: _deciding_metric(differences[pair]) for pair in pairs}
    adjusted = stats.holm_adjust(
        {
            pair: p_value
            for pair in pairs
            if (metric := deciding[pair]) is not None
            and (p_value := differences[pair][metric].p_value) is not None
        }
    )
    comparisons = tuple(
        _comparison(
            computed[baseline],
            computed[challenger],
            differences[baseline, challenger],
            deciding[baseline, challenger],
            adjusted.get((baseline, challenger)),
            multiple_pairs=len(pairs) > 1,
            settings=settings,
        )
        for baseline, challenger in pairs
    )
    sample_ratio, note = _sample_ratio(joined, weights, settings.sample_ratio_alpha)
    return EvaluationReport(
        endpoint=joined.endpoint,
        threshold=settings.threshold,
        confidence=settings.confidence,
        bootstrap_resamples=settings.bootstrap_resamples,
        seed=settings.seed,
        variants=tuple(computed[name].metrics for name in sorted(computed)),
        comparisons=comparisons,
        sample_ratio=sample_ratio,
        sample_ratio_note=note,
        accounting=joined.accounting,
    )


def _compute(sample: VariantSample, settings: EvaluationSettings) -> _Computed:
    # Each variant draws from its own stream (seeded by the seed and its name), so its intervals
    # do not change when another variant is added or removed.
    rng = np.random.default_rng([settings.seed, zlib.crc32(sample.variant.encode())])
    confidence = settings.confidence
    counts = stats.confusion_counts(sample.labels, sample.scores, settings.threshold)
    auc = stats.delong_auc(sample.labels, sample.scores)
    empty = np.empty(0, dtype=np.float64)
    metrics: dict[str, Estimate]
    if sample.rows == 0:
        metrics = {name: Estimate.missing("no labelled rows") for name in METRICS}
        return _Computed(
            VariantMetrics(sample.variant, sample.requests, 0, 0, metrics), counts, None, empty,
            empty,
        )  # fmt: skip
    predicted_positive = counts.true_positives + counts.false_positives
    actual_positive = counts.true_positives + counts.false_negatives
    f1 = stats.f1_score(counts.true_positives, counts.false_positives, counts.false_negatives)
    f1_distribution = stats.bootstrap_f1(counts, settings.bootstrap_resamples, rng)
    probabilities = bool(((sample.scores >= 0) & (sample.scores <= 1)).all())
    log_loss_distribution = empty
    if probabilities:
        losses = stats.log_losses(sample.labels, sample.scores)
        log_loss_distribution = stats.bootstrap_mean(losses, settings.bootstrap_resamples, rng)
        log_loss = stats.percentile_interval(
            float(losses.mean()), log_loss_distribution, confidence
        )
    else:
        log_loss = Estimate.missing("scores are not probabilities in [0, 1]")
    metrics = {
        "accuracy": stats.wilson_interval(counts.correct, counts.total, confidence),
        "precision": (
            stats.wilson_interval(counts.true_positives, predicted_positive, confidence)
            if predicted_positive
            else Estimate.missing("no positive predictions")
        ),
        "recall": (
            stats.wilson_interval(counts.true_positives, actual_positive, confidence)
            if actual_positive
            else Estimate.missing("no positive labels")
        ),
        "f1": (
            stats.percentile_interval(f1, f1_distribution, confidence)
            if f1 is not None
            else Estimate.missing("no positive labels or predictions")
        ),
        "auc": stats.auc_interval(auc, confidence),
        "log_loss": log_loss,
    }
    return _Computed(
        VariantMetrics(sample.variant, sample.requests, sample.rows, actual_positive, metrics),
        counts,
        auc,
        f1_distribution,
        log_loss_distribution,
    )


def _differences(
    baseline: _Computed, challenger: _Computed, confidence: float
) -> dict[str, Difference]:
    first, second = baseline.counts, challenger.counts
    return {
        "accuracy": stats.two_proportion_difference(
            (first.correct, first.total), (second.correct, second.total), confidence
        ),
        "precision": stats.two_proportion_difference(
            (first.true_positives, first.true_positives + first.false_positives),
            (second.true_positives, second.true_positives + second.false_positives),
            confidence,
        ),
        "recall": stats.two_proportion_difference(
            (first.true_positives, first.true_positives + first.false_negatives),
            (second.true_positives, second.true_positives + second.false_negatives),
            confidence,
        ),
        "f1": stats.bootstrap_difference(
            (baseline.metrics.metrics["f1"].value, baseline.f1_distribution),
            (challenger.metrics.metrics["f1"].value, challenger.f1_distribution),
            confidence,
        ),
        "auc": stats.delong_difference(baseline.auc, challenger.auc, confidence),
        "log_loss": stats.bootstrap_difference(
            (baseline.metrics.metrics["log_loss"].value, baseline.log_loss_distribution),
            (challenger.metrics.metrics["log_loss"].value, challenger.log_loss_distribution),
            confidence,
        ),
    }


def _deciding_metric(differences: Mapping[str, Difference]) -> str | None:
    for metric in ("auc", "accuracy"):
        if differences[metric].p_value is not None:
            return metric
    return None


def _traffic_needed(
    baseline: _Computed, challenger: _Computed, settings: EvaluationSettings
) -> tuple[TrafficNeeded, ...]:
    alpha = 1 - settings.confidence
    rows = (baseline.metrics.rows, challenger.metrics.rows)
    needed = []
    # AUC: DeLong's variance scaled back to one observation (times n).
    if (
        baseline.auc is not None
        and challenger.auc is not None
        and baseline.auc.variance is not None
        and challenger.auc.variance is not None
    ):
        per_observation = (baseline.auc.variance * rows[0], challenger.auc.variance * rows[1])
        additional = stats.additional_per_variant(
            per_observation, rows, settings.detectable_auc_difference, alpha, settings.power
        )
        needed.append(
            TrafficNeeded("auc", settings.detectable_auc_difference, settings.power, additional)
        )
    # Accuracy: the two-proportion formula with each variant's observed accuracy.
    if rows[0] and rows[1]:
        first = baseline.counts.correct / rows[0]
        second = challenger.counts.correct / rows[1]
        additional = stats.additional_per_variant(
            (first * (1 - first), second * (1 - second)),
            rows,
            settings.detectable_accuracy_difference,
            alpha,
            settings.power,
        )
        needed.append(
            TrafficNeeded(
                "accuracy", settings.detectable_accuracy_difference, settings.power, additional
            )
        )
    return tuple(needed)


def _comparison(
    baseline: _Computed,
    challenger: _Computed,
    differences: dict[str, Difference],
    decided_by: str | None,
    adjusted_p_value: float | None,
    *,
    multiple_pairs: bool,
    settings: EvaluationSettings,
) -> Comparison:
    alpha = 1 - settings.confidence
    detected = adjusted_p_value is not None and adjusted_p_value < alpha
    needed = _traffic_needed(baseline, challenger, settings)
    comparison = Comparison(
        baseline=baseline.metrics.variant,
        challenger=challenger.metrics.variant,
        baseline_rows=baseline.metrics.rows,
        challenger_rows=challenger.metrics.rows,
        differences=differences,
        decided_by=decided_by,
        adjusted_p_value=adjusted_p_value,
        detected=detected,
        traffic_needed=needed,
        verdict="",
    )
    unit = (
        "requests"
        if baseline.metrics.rows == baseline.metrics.requests
        and challenger.metrics.rows == challenger.metrics.requests
        else "rows"
    )
    return replace(
        comparison, verdict=_verdict(comparison, unit, multiple_pairs, settings.confidence)
    )


def _verdict(comparison: Comparison, unit: str, multiple_pairs: bool, confidence: float) -> str:
    sizes = f"n={comparison.baseline_rows} and {comparison.challenger_rows} labelled {unit}"
    metric = comparison.decided_by
    if metric is None:
        return f"no comparison possible at {sizes}: AUC and accuracy are undefined."
    name = _METRIC_NAMES[metric]
    difference = comparison.differences[metric]
    assert difference.value is not None, "the deciding metric has a p-value, hence a value"
    assert comparison.adjusted_p_value is not None
    p_text = p_phrase("Holm-adjusted p" if multiple_pairs else "p", comparison.adjusted_p_value)
    if comparison.detected:
        better = comparison.challenger if difference.value > 0 else comparison.baseline
        return (
            f"{better} has the higher {name}: the difference is {difference.value:+.3f} "
            f"({confidence:.0%} CI {_signed(difference.low)} to {_signed(difference.high)}, "
            f"{p_text}, {sizes}), unlikely to be noise at the {1 - confidence:.0%} level."
        )
    parts = [f"no detectable difference in {name} at {sizes} ({p_text})"]
    for index, needed in enumerate(comparison.traffic_needed):
        target = f"a {needed.detectable_difference:g} {_METRIC_NAMES[needed.metric]} difference"
        if needed.additional_per_variant is None:
            parts.append(f"no traffic estimate for {target} (the observed variance is zero)")
        elif needed.additional_per_variant == 0:
            parts.append(
                f"these samples already have {needed.power:.0%} power for {target}, so a real "
                "difference is probably smaller than that"
            )
        elif index == 0:
            parts.append(
                f"about {_about(needed.additional_per_variant)} more labelled {unit} per "
                f"variant would detect {target} with {needed.power:.0%} power"
            )
        else:
            parts.append(f"about {_about(needed.additional_per_variant)} more for {target}")
    return "; ".join(parts) + "."


def _about(count: int) -> str:
    """`count` to two significant digits, for "about N more" (the estimate is no finer)."""
    if count < 100:
        return f"{count:,}"
    digits = len(str(count)) - 2
    return f"{round(count, -digits):,}"


_METRIC_NAMES = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "auc": "AUC",
    "log_loss": "log loss",
}


def metric_name(metric: str) -> str:
    """How a metric is named in text."""
    return _METRIC_NAMES[metric]


def format_p(p_value: float) -> str:
    """A p-value for people: two decimals, three below 0.01, and "<0.001" below that."""
    if p_value < 0.001:
        return "<0.001"
    return f"{p_value:.3f}" if p_value < 0.01 else f"{p_value:.2f}"


def p_phrase(name: str, p_value: float) -> str:
    """`p=0.41`, or `p<0.001` for a very small one."""
    text = format_p(p_value)
    return f"{name}{text}" if text.startswith("<") else f"{name}={text}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _sample_ratio(
    joined: JoinedData, weights: TrafficWeights | None, alpha: float
) -> tuple[SampleRatio | None, str]:
    accounting = joined.accounting
    if weights is None:
        return None, (
            "skipped: no weights given (--weights Variant1=1,Variant2=1, or --url to read the "
            "endpoint's weight history from the gateway)"
        )
    split = joined.split
    excluded = accounting.labelled_requests - len(split)
    variants = sorted(weights.variants() | set(accounting.labelled_by_variant))
    if len(variants) < 2:
        return None, "skipped: fewer than two variants"
    observed = dict.fromkeys(variants, 0)
    for _, variant in split:
        observed[variant] += 1
    if not split:
        reason = "no labelled requests"
        if excluded:
            reason = f"no labelled requests that followed the weights ({excluded} targeted)"
        return None, f"skipped: {reason}"
    expected = dict.fromkeys(variants, 0.0)
    for moment, _ in split:
        in_force = weights.at(moment)
        total = sum(in_force.values())
        if total <= 0:
            # Every weight 0: the gateway refused untargeted requests then, so none is expected;
            # one that was served anyway still counts as observed, towards a mismatch.
            continue
        for name, weight in in_force.items():
            expected[name] += weight / total
    if sum(expected.values()) <= 0:
        return None, "skipped: every weight is zero"
    expected_total = sum(expected.values())
    result = stats.sample_ratio_test(
        [observed[name] for name in variants], [expected[name] for name in variants]
    )
    changes = _changes_during(weights, [moment for moment, _ in split])
    return (
        SampleRatio(
            source=weights.source,
            weights={name: float(weights.weights.get(name, 0.0)) for name in variants},
            observed=observed,
            expected_share={name: expected[name] / expected_total for name in variants},
            statistic=result.statistic,
            degrees_of_freedom=result.degrees_of_freedom,
            p_value=result.p_value,
            alpha=alpha,
            mismatch=result.p_value < alpha,
            excluded_targeted=excluded,
            weight_changes=changes,
        ),
        "",
    )


def _changes_during(weights: TrafficWeights, moments: list[datetime | None]) -> int:
    """How many recorded weight changes took effect between the first and last of `moments`."""
    known = [moment for moment in moments if moment is not None]
    if not weights.history or not known:
        return 0
    first, last = min(known), max(known)
    return sum(1 for when, _ in weights.history if first < when <= last)
