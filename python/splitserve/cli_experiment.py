"""The client side of `splitserve experiment`: fetch an endpoint's live experiment from a gateway
(GET /splitserve/experiments/<endpoint>) and print it as a table a person reads, once or every
so many seconds (`run_experiment`: what `cli` dispatches to).

Part of the face, beside `cli_stats`: the view is the gateway's
(`online.service.FeedbackService.look`, `evaluation.sequential.ExperimentSnapshot.to_dict`), the
call goes through the command line's one gateway client, and this module only renders.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from typing import Any

from splitserve.cli_stats import StatsUnavailable
from splitserve.config import Settings
from splitserve.gateway_client import GatewayClient, GatewayRequestError

__all__ = ["fetch_experiment", "render_experiment", "run_experiment"]

_DEFAULTS = Settings()

# The metrics in the order the table shows them (the view's own names).
_METRIC_ORDER = ("accuracy", "precision", "recall", "f1", "auc", "log_loss")


def fetch_experiment(gateway_url: str, endpoint_name: str, timeout: float) -> dict[str, Any]:
    """GET the endpoint's live experiment from the gateway at `gateway_url` (blocking).

    Raises:
        StatsUnavailable: no answer, an error answer (its Message), or not an experiment view.
    """
    path = f"/splitserve/experiments/{urllib.parse.quote(endpoint_name, safe='')}"
    try:
        document = GatewayClient(gateway_url, timeout).get_json(path)
    except GatewayRequestError as error:
        raise StatsUnavailable(error.message) from error
    if not isinstance(document, dict) or not isinstance(document.get("variants"), dict):
        raise StatsUnavailable(f"{gateway_url} did not answer with an experiment view")
    return document


def render_experiment(view: dict[str, Any]) -> str:
    """The live experiment as text: labels, each variant's metrics with their always-valid
    intervals (a column per variant), the comparisons on the experiment's metric, the winner and
    the split check.

    Raises:
        StatsUnavailable: the view does not have the layout of GET /splitserve/experiments/...
    """
    try:
        return _render(view)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise StatsUnavailable("the gateway's experiment view could not be read") from error


def _render(view: dict[str, Any]) -> str:
    name = view.get("EndpointName", "?")
    labels = view["labels"]
    refused = {str(k): int(v) for k, v in labels["refused"].items()}
    refused_text = (
        f", {sum(refused.values())} refused ("
        + ", ".join(f"{outcome} {count}" for outcome, count in sorted(refused.items()))
        + ")"
        if refused
        else ", none refused"
    )
    metric = str(view["metric"])
    lines = [
        f"Endpoint {name}: {int(labels['joined'])} labels joined{refused_text}; "
        f"winner on {metric} at alpha {float(view['alpha']):g} (always-valid)"
    ]
    variants: dict[str, Any] = view["variants"]
    names = list(variants)
    if view.get("message"):
        lines.append(str(view["message"]))
        lines.append(
            "  ".join(f"{variant}: {int(variants[variant]['n'])} labels" for variant in names)
        )
        return "\n".join(lines) + "\n"
    table = [["", *names], ["labels", *(str(int(variants[v]["n"])) for v in names)]]
    for metric_name in _METRIC_ORDER:
        cells = []
        for variant in names:
            interval = variants[variant]["metrics"].get(metric_name)
            cells.append(_interval(interval))
        table.append([metric_name + (" *" if metric_name == metric else ""), *cells])
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
    lines.extend(
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in table
    )
    compared = [c for c in view["comparisons"] if c["metric"] == metric]
    if compared:
        lines.append(f"{metric}, b - a:")
        for comparison in compared:
            verdict = (
                f"decided: {comparison['better']} better"
                if comparison["decided"]
                else "not decided"
            )
            p_value = comparison["p_value"]
            lines.append(
                f"  {comparison['b']} - {comparison['a']}: "
                f"{_number(comparison['difference'])} "
                f"[{_number(comparison['low'])}, {_number(comparison['high'])}]  "
                f"p {_number(p_value)}  {verdict}"
            )
    srm = view.get("srm") or {}
    if srm.get("failed"):
        srm_text = f"FAILED (p {_number(srm.get('p_value'))}): the split is not the weights'"
    elif srm.get("p_value") is None:
        srm_text = "not checked (no routed invocations to count, or the variants changed)"
    else:
        srm_text = f"ok (p {_number(srm.get('p_value'))})"
    winner = view.get("winner")
    lines.append(f"winner: {winner if winner else 'none yet'}")
    lines.append(f"split check: {srm_text}")
    action = view.get("action")
    if isinstance(action, dict):
        lines.append(f"action ({action.get('mode')}): {action.get('status')}")
    return "\n".join(lines) + "\n"


def _interval(interval: Any) -> str:
    if not interval or interval.get("value") is None:
        return "-"
    return (
        f"{_number(interval['value'])} "
        f"[{_number(interval.get('low'))}, {_number(interval.get('high'))}]"
    )


def _number(value: Any) -> str:
    if value is None:
        return "-"
    number = float(value)
    if number != 0 and abs(number) < 0.001:
        return f"{number:.1e}"
    return f"{number:.3f}"


def run_experiment(args: argparse.Namespace) -> int:
    """Print the endpoint's live experiment (or its JSON) from the gateway at `args.url`; with
    --watch, again every so many seconds until interrupted."""
    timeout = _DEFAULTS.feedback.client_timeout_seconds
    try:
        while True:
            try:
                view = fetch_experiment(args.url, args.endpoint, timeout)
                text = json.dumps(view, indent=2) + "\n" if args.json else render_experiment(view)
            except StatsUnavailable as error:
                print(f"splitserve: {error}", file=sys.stderr)
                if args.watch is None:
                    return 1
                text = ""
            if args.watch is not None and sys.stdout.isatty():
                sys.stdout.write("\x1b[H\x1b[2J")  # clear the terminal: one view at a time
            sys.stdout.write(text)
            sys.stdout.flush()
            if args.watch is None:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
