"""`splitserve evaluate --shadow`: each shadow variant against the production variant it copied.

The gateway captures a shadow's answer to a copied request under the shadow's variant with the
production record's eventId and InferenceId, and marks it `eventMetadata.splitserve.shadowOf`
(docs/sagemaker-api.md, "Shadow variants"). Pairs are joined on the eventId, which the two
records always share (the InferenceId too, when the caller sent one; it may repeat across
requests, the eventId never does), and compared row by row (a request of k rows has k scores in
each answer):

- agreement of the predicted class (score >= threshold in both, or below in both): the share of
  rows, with its Wilson interval;
- the score difference, shadow minus production, per row: its mean with a seeded percentile
  bootstrap interval, and its 5th, 50th and 95th percentiles and the mean absolute difference;
- the model latency difference, shadow minus production, per request (both records carry
  `modelLatencyMicros`): its mean with a bootstrap interval, and the median.

A pair whose answers have different row counts, or a shadow record without a production partner
(its record was lost, or written by another tool), is counted, not compared.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitserve.config import EvaluationSettings
from splitserve.evaluation.capture_reader import CapturedRequest, CaptureRead
from splitserve.evaluation.stats import (
    Estimate,
    FloatArray,
    bootstrap_mean,
    percentile_interval,
    wilson_interval,
)

__all__ = ["ShadowComparison", "ShadowReport", "compare_shadows", "shadow_json", "shadow_text"]


@dataclass(frozen=True)
class ShadowComparison:
    """One shadow variant against the production variant whose requests it got copies of.

    Attributes:
        shadow, production: the two variants.
        pairs: requests with both answers compared.
        rows: rows compared (a request of k rows counts k).
        unpaired: shadow records with no production record of the same eventId.
        row_mismatch: pairs whose answers hold different numbers of rows (not compared).
        agreement: share of rows whose predicted class is the same.
        score_difference: mean of (shadow - production) score per row.
        score_difference_quantiles: its 5th, 50th and 95th percentiles.
        mean_absolute_difference: mean of |shadow - production|.
        latency_difference_ms: mean of (shadow - production) model latency per request, in ms.
        latency_difference_median_ms: its median.
        latency_pairs: pairs with both latencies recorded.
    """

    shadow: str
    production: str
    pairs: int
    rows: int
    unpaired: int
    row_mismatch: int
    agreement: Estimate
    score_difference: Estimate
    score_difference_quantiles: tuple[float, float, float] | None
    mean_absolute_difference: float | None
    latency_difference_ms: Estimate
    latency_difference_median_ms: float | None
    latency_pairs: int


@dataclass(frozen=True)
class ShadowReport:
    """Every shadow comparison of one endpoint's capture."""

    endpoint: str
    threshold: float
    confidence: float
    comparisons: tuple[ShadowComparison, ...]


def compare_shadows(capture: CaptureRead, settings: EvaluationSettings) -> ShadowReport:
    """Compare each shadow variant of `capture` with its production variant (module docstring)."""
    production: dict[str, CapturedRequest] = {}
    shadows: dict[tuple[str, str], list[CapturedRequest]] = defaultdict(list)
    for request in capture.requests:
        if request.shadow_of is None:
            if request.event_id is not None:
                production.setdefault(request.event_id, request)
        else:
            shadows[request.variant, request.shadow_of].append(request)
    rng = np.random.default_rng(settings.seed)
    comparisons = []
    for (shadow, source), records in sorted(shadows.items()):
        comparisons.append(_compare(shadow, source, records, production, settings, rng))
    return ShadowReport(
        capture.endpoint, settings.threshold, settings.confidence, tuple(comparisons)
    )


def _compare(
    shadow: str,
    source: str,
    records: list[CapturedRequest],
    production: dict[str, CapturedRequest],
    settings: EvaluationSettings,
    rng: np.random.Generator,
) -> ShadowComparison:
    counts: Counter[str] = Counter()
    shadow_scores: list[float] = []
    production_scores: list[float] = []
    latency: list[float] = []
    seen: set[str] = set()
    for record in records:
        partner = None if record.event_id is None else production.get(record.event_id)
        if partner is None or partner.variant != source or record.event_id in seen:
            counts["unpaired"] += 1
            continue
        seen.add(str(record.event_id))
        if record.scores is None or partner.scores is None:
            counts["unscored"] += 1
            continue
        if len(record.scores) != len(partner.scores):
            counts["mismatch"] += 1
            continue
        counts["pairs"] += 1
        shadow_scores.extend(record.scores)
        production_scores.extend(partner.scores)
        if record.model_latency_micros is not None and partner.model_latency_micros is not None:
            latency.append((record.model_latency_micros - partner.model_latency_micros) / 1000)
    ours = np.asarray(shadow_scores, dtype=np.float64)
    theirs = np.asarray(production_scores, dtype=np.float64)
    agree = int(np.sum((ours >= settings.threshold) == (theirs >= settings.threshold)))
    differences = ours - theirs
    latencies = np.asarray(latency, dtype=np.float64)
    return ShadowComparison(
        shadow=shadow,
        production=source,
        pairs=counts["pairs"],
        rows=int(ours.size),
        unpaired=counts["unpaired"] + counts["unscored"],
        row_mismatch=counts["mismatch"],
        agreement=wilson_interval(agree, int(ours.size), settings.confidence),
        score_difference=_mean_interval(differences, settings, rng),
        score_difference_quantiles=(
            None
            if differences.size == 0
            else tuple(float(q) for q in np.percentile(differences, [5, 50, 95]))  # type: ignore[arg-type]
        ),
        mean_absolute_difference=(
            None if differences.size == 0 else float(np.mean(np.abs(differences)))
        ),
        latency_difference_ms=_mean_interval(latencies, settings, rng),
        latency_difference_median_ms=None if latencies.size == 0 else float(np.median(latencies)),
        latency_pairs=int(latencies.size),
    )


def _mean_interval(
    values: FloatArray, settings: EvaluationSettings, rng: np.random.Generator
) -> Estimate:
    """The mean of `values` with its percentile bootstrap interval."""
    if values.size == 0:
        return Estimate.missing("no pairs")
    distribution = bootstrap_mean(values, settings.bootstrap_resamples, rng)
    return percentile_interval(float(values.mean()), distribution, settings.confidence)


def shadow_text(report: ShadowReport) -> str:
    """The report as text."""
    level = f"{report.confidence:.0%}"
    lines = [f"Shadow variants of endpoint {report.endpoint} (intervals at {level})", ""]
    if not report.comparisons:
        lines.append("No shadow records in the capture (eventMetadata.splitserve.shadowOf).")
    for item in report.comparisons:
        lines.append(f"{item.shadow} (shadow of {item.production}):")
        lines.append(
            f"  {item.pairs} requests paired ({item.rows} rows); {item.unpaired} unpaired, "
            f"{item.row_mismatch} with different row counts"
        )
        lines.append(
            f"  predicted class agrees (threshold {report.threshold:g}): "
            f"{_estimate(item.agreement, percent=True)}"
        )
        lines.append(
            f"  score difference (shadow - production): mean {_estimate(item.score_difference)}"
        )
        if item.score_difference_quantiles is not None:
            low, middle, high = item.score_difference_quantiles
            lines.append(
                f"    percentiles 5/50/95: {low:+.4f} / {middle:+.4f} / {high:+.4f}; "
                f"mean |difference| {item.mean_absolute_difference:.4f}"
            )
        lines.append(
            f"  model latency difference (ms, over {item.latency_pairs} requests): "
            f"mean {_estimate(item.latency_difference_ms)}"
            + (
                ""
                if item.latency_difference_median_ms is None
                else f", median {item.latency_difference_median_ms:+.3f}"
            )
        )
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def shadow_json(report: ShadowReport) -> dict[str, Any]:
    """The report as JSON values."""

    def estimate(value: Estimate) -> dict[str, Any]:
        return {
            "value": value.value,
            "low": value.low,
            "high": value.high,
            "undefined": value.undefined,
        }

    return {
        "endpoint": report.endpoint,
        "threshold": report.threshold,
        "confidence": report.confidence,
        "shadows": [
            {
                "shadow": item.shadow,
                "production": item.production,
                "pairs": item.pairs,
                "rows": item.rows,
                "unpaired": item.unpaired,
                "row_mismatch": item.row_mismatch,
                "agreement": estimate(item.agreement),
                "score_difference": estimate(item.score_difference),
                "score_difference_percentiles": (
                    None
                    if item.score_difference_quantiles is None
                    else dict(
                        zip(("p5", "p50", "p95"), item.score_difference_quantiles, strict=True)
                    )
                ),
                "mean_absolute_difference": item.mean_absolute_difference,
                "latency_difference_ms": estimate(item.latency_difference_ms),
                "latency_difference_median_ms": item.latency_difference_median_ms,
                "latency_pairs": item.latency_pairs,
            }
            for item in report.comparisons
        ],
    }


def _estimate(estimate: Estimate, *, percent: bool = False) -> str:
    if estimate.value is None:
        return f"n/a ({estimate.undefined})"
    if percent:
        text = f"{estimate.value:.1%}"
        if estimate.low is not None and estimate.high is not None:
            text += f" [{estimate.low:.1%}, {estimate.high:.1%}]"
        return text
    text = f"{estimate.value:+.4f}"
    if estimate.low is not None and estimate.high is not None:
        text += f" [{estimate.low:+.4f}, {estimate.high:+.4f}]"
    return text
