"""`splitserve evaluate --plot FILE.png`: ROC curves per variant, and traffic share over time.

matplotlib is an optional extra (`pip install splitserve[plot]`); it is imported only when a plot
is asked for, and drawn through the Agg canvas directly (no pyplot, no global backend state, no
display needed).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from splitserve.evaluation.errors import EvaluationInputError
from splitserve.evaluation.join import JoinedData
from splitserve.evaluation.report import EvaluationReport, TrafficWeights
from splitserve.evaluation.stats import roc_curve

#: Bin widths the traffic panel chooses from: the narrowest that gives at most _MAX_BINS bins
#: and, on average, at least _MIN_REQUESTS_PER_BIN requests in each (a share of 3 is noise).
_BIN_SECONDS = (1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400)
_MAX_BINS = 60
_MIN_REQUESTS_PER_BIN = 20


def write_plot(
    path: Path, report: EvaluationReport, joined: JoinedData, weights: TrafficWeights | None
) -> None:
    """Draw the ROC curves and the traffic share over time into the PNG file `path`.

    Raises:
        EvaluationInputError: matplotlib is not installed, or the file cannot be written.
    """
    try:
        # Imported here, not at the top: matplotlib is optional and slow to import.
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError:
        raise EvaluationInputError(
            "--plot needs matplotlib: pip install splitserve[plot]"
        ) from None
    figure = Figure(figsize=(12, 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    roc_axes, traffic_axes = figure.subplots(1, 2)
    _draw_roc(roc_axes, report, joined)
    _draw_traffic(traffic_axes, joined, weights)
    figure.suptitle(f"splitserve evaluate: endpoint {report.endpoint}")
    try:
        figure.savefig(path, format="png")
    except OSError as error:
        raise EvaluationInputError(f"cannot write the plot to {path}: {error}") from None


def _draw_roc(axes: Any, report: EvaluationReport, joined: JoinedData) -> None:
    metrics = {variant.variant: variant for variant in report.variants}
    for sample in joined.samples:
        curve = roc_curve(sample.labels, sample.scores)
        if curve is None:
            continue
        auc = metrics[sample.variant].metrics["auc"]
        label = f"{sample.variant} (n={sample.rows})"
        if auc.value is not None:
            label += f": AUC {auc.value:.3f}"
            if auc.low is not None and auc.high is not None:
                label += f" [{auc.low:.3f}, {auc.high:.3f}]"
        axes.plot(curve[0], curve[1], linewidth=1.8, label=label)
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="chance")
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"ROC per variant (AUC with {report.confidence:.0%} DeLong interval)",
        aspect="equal",
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")


def _draw_traffic(axes: Any, joined: JoinedData, weights: TrafficWeights | None) -> None:
    axes.set(ylabel="share of captured requests", ylim=(0, 1), title="Traffic share over time")
    axes.grid(alpha=0.3)
    if not joined.traffic:
        axes.text(
            0.5, 0.5, "no inferenceTime in the capture", ha="center", transform=axes.transAxes
        )
        return
    start = joined.traffic[0][0]
    span = (joined.traffic[-1][0] - start).total_seconds()
    most_bins = max(1.0, min(_MAX_BINS, len(joined.traffic) / _MIN_REQUESTS_PER_BIN))
    width = next((w for w in _BIN_SECONDS if span / w < most_bins), _BIN_SECONDS[-1])
    totals: Counter[int] = Counter()
    by_variant: dict[str, Counter[int]] = {}
    for moment, variant in joined.traffic:
        index = int((moment - start).total_seconds() // width)
        totals[index] += 1
        by_variant.setdefault(variant, Counter())[index] += 1
    bins = sorted(totals)
    centres = [start + timedelta(seconds=(index + 0.5) * width) for index in bins]
    lines = {}
    for variant in sorted(by_variant):
        shares = [by_variant[variant][index] / totals[index] for index in bins]
        (lines[variant],) = axes.plot(
            centres, shares, marker="o", markersize=3, linewidth=1.5, label=variant
        )
    if weights is not None:
        # The weights in force at each moment (a step at each recorded change), not today's
        # weights across the whole axis.
        pieces = weights.segments(start, joined.traffic[-1][0])
        for variant in sorted(weights.variants()):
            line = lines.get(variant)
            times = [moment for low, high, _ in pieces for moment in (low, high)]
            shares = [p.get(variant, 0.0) for _, _, p in pieces for _ in range(2)]
            axes.plot(
                times,
                shares,
                linestyle="--",
                linewidth=1,
                color=line.get_color() if line is not None else "grey",
                label=f"{variant} weight share ({weights.source})",
            )
    axes.set_xlabel(f"inferenceTime (UTC), {_width_text(width)} bins")
    axes.legend(loc="best", fontsize="small")
    _format_time_axis(axes, start)


def _format_time_axis(axes: Any, start: datetime) -> None:
    """Readable time ticks at any span, from seconds to days (matplotlib's concise dates)."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter  # noqa: PLC0415

    # matplotlib's stubs leave these constructors unannotated.
    locator = AutoDateLocator(tz=start.tzinfo)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    formatter = ConciseDateFormatter(locator, tz=start.tzinfo)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_formatter(formatter)


def _width_text(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"
