"""What `splitserve evaluate` does once `cli` has read its arguments.

Weights for the sample-ratio check come from `--weights Variant1=1,Variant2=1` (constant over the
capture) or, with `--url`, from the running gateway's weight history of the endpoint
(GET /splitserve/endpoints/<name>/weights): each request is checked against the weights in force
when it was served, so a weight shift during the capture raises no false mismatch. A gateway
without a history for the endpoint (a state file from before splitserve kept one) gives its
current weights (DescribeEndpoint's CurrentWeight), and the report says so. `--weights` wins when
both are given; naming a variant the capture does not have is an error. The calls are unsigned,
so `--url` serves gateways started without `--auth`; with auth, pass `--weights`.

`--shadow` compares each shadow variant with the production variant it copied, request by request
(`evaluation.shadow`); it needs no ground truth. With ground truth as well, the per-variant report
follows, shadow variants scored like production ones.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from splitserve.config import EvaluationSettings
from splitserve.evaluation.capture_reader import read_capture
from splitserve.evaluation.errors import EvaluationInputError
from splitserve.evaluation.ground_truth import load_ground_truth
from splitserve.evaluation.join import JoinedData, join
from splitserve.evaluation.plot import write_plot
from splitserve.evaluation.render import report_json, report_text
from splitserve.evaluation.report import EvaluationReport, TrafficWeights, evaluate
from splitserve.evaluation.shadow import compare_shadows, shadow_json, shadow_text
from splitserve.gateway_client import GatewayClient, GatewayRequestError


@dataclass(frozen=True)
class EvaluateRequest:
    """The arguments of one `splitserve evaluate`.

    Attributes:
        capture: the capture destination (or one endpoint's directory under it).
        ground_truth: a ground-truth file or directory.
        endpoint: the endpoint to evaluate; None when the capture holds one.
        weights: `--weights` as given, or None.
        url: a gateway to read the weights from, or None.
        as_json: print JSON instead of text.
        plot: a PNG file to draw into, or None.
        shadow: compare each shadow variant with its production variant (ground truth optional).
    """

    capture: Path
    ground_truth: Path | None
    endpoint: str | None = None
    weights: str | None = None
    url: str | None = None
    as_json: bool = False
    plot: Path | None = None
    shadow: bool = False


@dataclass(frozen=True)
class Evaluation:
    """A report together with the joined data it came from (the plot needs both)."""

    report: EvaluationReport
    joined: JoinedData
    weights: TrafficWeights | None


def parse_weights(text: str) -> dict[str, float]:
    """`Variant1=1,Variant2=3` as a mapping of variant name to weight.

    Raises:
        EvaluationInputError: a malformed entry, a repeated name, a negative or non-finite
            weight, or no positive weight.
    """
    weights: dict[str, float] = {}
    for entry in text.split(","):
        name, separator, value = entry.partition("=")
        name = name.strip()
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not separator or not name or not math.isfinite(weight) or weight < 0:
            raise EvaluationInputError(
                f"--weights entry {entry.strip()!r} is not NAME=WEIGHT with a weight >= 0"
            )
        if name in weights:
            raise EvaluationInputError(f"--weights names {name} twice")
        weights[name] = weight
    if not any(weight > 0 for weight in weights.values()):
        raise EvaluationInputError("--weights needs at least one positive weight")
    return weights


def gateway_weights(url: str, endpoint: str, timeout: float) -> TrafficWeights:
    """The endpoint's weight history from the gateway at `url` (see the module docstring).

    Raises:
        EvaluationInputError: the gateway cannot be reached, answers with an error (its message
            is passed on), or its answer cannot be read.
    """
    try:
        document = GatewayClient(url, timeout).weight_history(endpoint)
    except GatewayRequestError as error:
        if error.status is None:
            raise EvaluationInputError(error.message) from None
        raise EvaluationInputError(
            f"the weight history of {endpoint} at {url} could not be read: {error.message}"
        ) from None
    history = parse_weight_history(document, url)
    if not history:
        return TrafficWeights(
            describe_weights(url, endpoint, timeout),
            f"DescribeEndpoint at {url} (current weights: the gateway has no weight history "
            "for this endpoint)",
        )
    return TrafficWeights(history[-1][1], f"the weight history at {url}", tuple(history))


def parse_weight_history(document: object, url: str) -> list[tuple[datetime, dict[str, float]]]:
    """GET /splitserve/endpoints/<name>/weights's answer as (time, weights) changes, in time order.

    Raises:
        EvaluationInputError: the answer is not a weight history, or holds a weight that is not a
            finite number >= 0.
    """
    unreadable = EvaluationInputError(f"{url} answered with no readable weight history")
    changes = document.get("WeightChanges") if isinstance(document, dict) else None
    if not isinstance(changes, list):
        raise unreadable
    history = []
    try:
        for change in changes:
            weights = {
                str(entry["VariantName"]): float(entry["Weight"]) for entry in change["Weights"]
            }
            history.append((datetime.fromtimestamp(float(change["Time"]), UTC), weights))
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        raise unreadable from None
    for _, weights in history:
        if not all(math.isfinite(weight) and weight >= 0 for weight in weights.values()):
            raise EvaluationInputError(f"{url} answered with a weight that is not a number >= 0")
    return sorted(history, key=lambda change: change[0])


def describe_weights(url: str, endpoint: str, timeout: float) -> dict[str, float]:
    """Each production variant's CurrentWeight, from DescribeEndpoint on the gateway at `url`.

    Raises:
        EvaluationInputError: the gateway cannot be reached, answers with an error (its message
            is passed on), or its answer has no weights.
    """
    try:
        document = GatewayClient(url, timeout).sagemaker(
            "DescribeEndpoint", {"EndpointName": endpoint}
        )
    except GatewayRequestError as error:
        if error.status is None:
            raise EvaluationInputError(error.message) from None
        raise EvaluationInputError(f"DescribeEndpoint at {url} failed: {error.message}") from None
    try:
        return {
            str(variant["VariantName"]): float(variant["CurrentWeight"])
            for variant in document["ProductionVariants"]
        }
    except (KeyError, TypeError, ValueError):
        raise EvaluationInputError(
            f"DescribeEndpoint at {url} gave no ProductionVariants with weights"
        ) from None


def run_evaluation(request: EvaluateRequest, settings: EvaluationSettings) -> Evaluation:
    """Read, join and evaluate (no printing).

    Raises:
        EvaluationInputError: the inputs cannot be used (the message says why).
    """
    if request.ground_truth is None:
        raise EvaluationInputError("--ground-truth is needed (only --shadow does without it)")
    capture = read_capture(request.capture, request.endpoint)
    truth = load_ground_truth(request.ground_truth)
    joined = join(capture, truth)
    weights = None
    if request.weights is not None:
        given = parse_weights(request.weights)
        known = set(joined.accounting.captured_by_variant)
        unknown = sorted(set(given) - known)
        if unknown:
            raise EvaluationInputError(
                f"--weights names {', '.join(unknown)}, which the capture of "
                f"{capture.endpoint} does not have; its variants: "
                f"{', '.join(sorted(known)) or 'none'}"
            )
        weights = TrafficWeights(given, "--weights")
    elif request.url is not None:
        weights = gateway_weights(request.url, capture.endpoint, settings.describe_timeout_seconds)
    return Evaluation(evaluate(joined, settings, weights), joined, weights)


def evaluate_command(
    request: EvaluateRequest, settings: EvaluationSettings, out: TextIO | None = None
) -> int:
    """Run `splitserve evaluate`: print the report (and draw the plot); return the exit code.

    Exit codes: 0 when the report was printed, 2 when the inputs cannot be used (the reason goes to
    stderr). A sample-ratio mismatch or an undetected difference is a result, not a failure.

    Args:
        request: the command's arguments.
        settings: the evaluation's settings.
        out: where the report goes (default: sys.stdout at the time of the call).
    """
    out = sys.stdout if out is None else out
    if request.shadow:
        return _shadow_command(request, settings, out)
    try:
        evaluation = run_evaluation(request, settings)
        if request.plot is not None:
            write_plot(request.plot, evaluation.report, evaluation.joined, evaluation.weights)
    except EvaluationInputError as error:
        print(f"splitserve evaluate: {error.message}", file=sys.stderr)
        return 2
    if request.as_json:
        json.dump(report_json(evaluation.report), out, indent=2)
        out.write("\n")
    else:
        out.write(report_text(evaluation.report))
        if request.plot is not None:
            out.write(f"Plot: {request.plot}\n")
    return 0


def _shadow_command(request: EvaluateRequest, settings: EvaluationSettings, out: TextIO) -> int:
    """`evaluate --shadow`: the shadow comparisons, then (with ground truth) the report."""
    try:
        shadows = compare_shadows(read_capture(request.capture, request.endpoint), settings)
        evaluation = None
        if request.ground_truth is not None:
            evaluation = run_evaluation(request, settings)
            if request.plot is not None:
                write_plot(request.plot, evaluation.report, evaluation.joined, evaluation.weights)
    except EvaluationInputError as error:
        print(f"splitserve evaluate: {error.message}", file=sys.stderr)
        return 2
    if request.as_json:
        document: dict[str, object] = {"shadow": shadow_json(shadows)}
        if evaluation is not None:
            document["evaluation"] = report_json(evaluation.report)
        json.dump(document, out, indent=2)
        out.write("\n")
        return 0
    out.write(shadow_text(shadows))
    if evaluation is not None:
        out.write("\n")
        out.write(report_text(evaluation.report))
        if request.plot is not None:
            out.write(f"Plot: {request.plot}\n")
    return 0
