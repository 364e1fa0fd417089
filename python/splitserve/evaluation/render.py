"""An `EvaluationReport` as text for people, or as a JSON document for programs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from splitserve.evaluation.join import JoinAccounting
from splitserve.evaluation.report import (
    METRICS,
    EvaluationReport,
    SampleRatio,
    format_p,
    metric_name,
    p_phrase,
)
from splitserve.evaluation.stats import Difference, Estimate

_METRIC_WIDTH = 11
_COLUMN_WIDTH = 26
#: Problem examples the text report shows (the JSON has all that were kept).
_TEXT_EXAMPLES = 5


def report_text(report: EvaluationReport) -> str:
    """The report as text: metrics table, comparisons and verdicts, split check, accounting."""
    accounting = report.accounting
    level = f"{report.confidence:.0%}"
    lines = [
        f"Endpoint {report.endpoint}: {accounting.labelled_requests} labelled requests "
        f"({accounting.labelled_rows} rows) of {accounting.captured_requests} captured; "
        f"threshold {report.threshold:g}; {level} confidence intervals",
        "",
    ]
    if report.variants:
        header = "metric".ljust(_METRIC_WIDTH) + "".join(
            f"{variant.variant} (n={variant.rows}, {variant.positives} pos)".ljust(_COLUMN_WIDTH)
            for variant in report.variants
        )
        lines.append(header.rstrip())
        for metric in METRICS:
            row = metric_name(metric).ljust(_METRIC_WIDTH) + "".join(
                _estimate(variant.metrics[metric]).ljust(_COLUMN_WIDTH)
                for variant in report.variants
            )
            lines.append(row.rstrip())
        lines.append("")
    for comparison in report.comparisons:
        lines.append(f"{comparison.challenger} - {comparison.baseline}")
        lines.append(
            "metric".ljust(_METRIC_WIDTH)
            + "difference".ljust(12)
            + f"{level} interval".ljust(22)
            + "p-value".ljust(9)
            + "test"
        )
        lines.extend(_difference_row(metric, comparison.differences[metric]) for metric in METRICS)
        lines.append(f"Verdict: {comparison.verdict}")
        lines.append("")
    lines.append("Traffic split: " + _split_text(report.sample_ratio, report.sample_ratio_note))
    lines.append("")
    lines.extend(_accounting_text(accounting))
    return "\n".join(lines) + "\n"


def report_json(report: EvaluationReport) -> dict[str, Any]:
    """The report as a JSON-ready document (non-finite numbers become null)."""
    document: dict[str, Any] = _clean(dataclasses.asdict(report))
    return document


def _estimate(estimate: Estimate) -> str:
    if estimate.value is None:
        return f"n/a ({estimate.undefined})"
    if estimate.low is None or estimate.high is None:
        return f"{estimate.value:.3f}"
    return f"{estimate.value:.3f} [{estimate.low:.3f}, {estimate.high:.3f}]"


def _difference_row(metric: str, difference: Difference) -> str:
    name = metric_name(metric).ljust(_METRIC_WIDTH)
    if difference.value is None:
        return f"{name}n/a ({difference.undefined})"
    interval = (
        f"[{difference.low:+.3f}, {difference.high:+.3f}]"
        if difference.low is not None and difference.high is not None
        else "n/a"
    )
    p_value = "n/a" if difference.p_value is None else format_p(difference.p_value)
    return (
        name
        + f"{difference.value:+.3f}".ljust(12)
        + interval.ljust(22)
        + p_value.ljust(9)
        + difference.method
    ).rstrip()


def _split_text(sample_ratio: SampleRatio | None, note: str) -> str:
    if sample_ratio is None:
        return note
    total = sum(sample_ratio.observed.values())
    shares = ", ".join(
        f"{name} {count} ({count / total:.1%}, expected {sample_ratio.expected_share[name]:.1%})"
        for name, count in sample_ratio.observed.items()
    )
    statistic = "inf" if math.isinf(sample_ratio.statistic) else f"{sample_ratio.statistic:.2f}"
    conclusion = (
        f"SAMPLE-RATIO MISMATCH (p < {sample_ratio.alpha:g}): the split does not follow the "
        "weights; look for lost labels, capture sampling or routing before trusting the "
        "comparison."
        if sample_ratio.mismatch
        else "consistent with the weights."
    )
    source = sample_ratio.source
    if sample_ratio.weight_changes:
        changes = _count(sample_ratio.weight_changes, "weight change")
        source += f", the weights in force when each request was served ({changes} meanwhile)"
    excluded = ""
    if sample_ratio.excluded_targeted:
        excluded = f"; {sample_ratio.excluded_targeted} targeted requests (TargetVariant) left out"
    return (
        f"labelled requests {shares}{excluded}; weights from {source}; "
        f"chi-square {statistic} (df {sample_ratio.degrees_of_freedom}), "
        f"{p_phrase('p', sample_ratio.p_value)}: {conclusion}"
    )


def _accounting_text(accounting: JoinAccounting) -> list[str]:
    captured = ", ".join(
        f"{name} {count}" for name, count in accounting.captured_by_variant.items()
    )
    lines = [
        f"Capture: {accounting.captured_requests} records in "
        f"{_count(accounting.capture_files, 'file')} "
        f"({captured}); {accounting.labelled_requests} joined; "
        f"{accounting.unlabelled} without ground truth; "
        f"{accounting.without_inference_id} without an inference id (nothing to join them "
        "on); "
        f"{accounting.targeted} targeted (TargetVariant, left out of the traffic split); "
        f"{accounting.label_count_mismatch} with a label count other than their row count; "
        f"{accounting.duplicates} duplicate ids; {accounting.without_output} without output; "
        f"{accounting.unparseable_output} with unparseable output; "
        f"{accounting.unreadable_lines} unreadable lines.",
        f"Ground truth: {accounting.ground_truth_records} records in "
        f"{_count(accounting.ground_truth_files, 'file')}; {accounting.ground_truth_invalid} "
        "invalid; "
        f"{accounting.ground_truth_conflicts} conflicting; "
        f"{accounting.unmatched_ground_truth} ids match no captured request.",
    ]
    if accounting.examples:
        lines.append("Examples:")
        lines.extend(f"  {message}" for message in accounting.examples[:_TEXT_EXAMPLES])
        if len(accounting.examples) > _TEXT_EXAMPLES:
            lines.append(f"  ... ({len(accounting.examples) - _TEXT_EXAMPLES} more with --json)")
    return lines


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value
